// Same-process A/B of the IF/LIF CPU kernel: the base revision's lif.cpp (namespace ms_base::lif_base, compiled
// against the base's ms_common.h helpers as namespace ms_base; lif_base_core.h) against the working tree's
// (namespace ms::lif, lif_new_core.h), next to copy and copy+add loops over the same bytes. Built and run by
// benchmarks/lif_ab.py, which extracts both cores; not part of the library.
// Usage: lif_ab T N reps soft   (one thread; prints one line of ns per element-step and whether y/vT are equal)
// bwd_*: no parameter gradient; bwd_th_*: with the threshold's gradient (need_theta).
#include "ms_common.h"
#include "lif_base_core.h"
#include "lif_new_core.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
using namespace ms;
int main(int argc, char** argv) {
  if (argc < 5) { std::fprintf(stderr, "usage: lif_ab T N reps soft\n"); return 2; }
  const int64_t T = std::atoll(argv[1]), N = std::atoll(argv[2]);
  const int reps = std::atoi(argv[3]), soft = std::atoi(argv[4]);
  std::vector<float> x(T * N), y(T * N), y2(T * N), vT(N), vT2(N), gy(T * N), gx(T * N), dst(T * N), gsum(T * N);
  for (int64_t i = 0; i < T * N; ++i) {  // deterministic pseudo-random inputs around the threshold
    x[i] = (float)((i * 2654435761u % 1000) / 500.0 - 0.7);
    gy[i] = (float)((i * 40503u % 1000) / 1000.0 - 0.5);
  }
  // IFNeuron's defaults: theta 1, soft (or hard to 0) reset, fire on >=, spike payload, sigmoid(4) surrogate
  LifArgs a{};
  a.io.x = x.data(); a.io.T = T; a.io.N = N; a.io.xst = N; a.io.yst = N; a.io.gyst = N; a.io.gxst = N;
  a.io.dtype = 0; a.io.nthreads = 1;
  a.theta = 1; a.leak = 1; a.tau = 1; a.v_reset = 0; a.v_init = 0; a.sp0 = 4; a.sp1 = 0;
  a.leak_mode = 0; a.soft = soft; a.fire_ge = 1;
  LifArgs a2 = a, b = a, bt;
  a.io.y = y.data(); a.io.vT = vT.data();
  a2.io.y = y2.data(); a2.io.vT = vT2.data();
  double pg[3];
  b.io.gy = gy.data(); b.io.gx = gx.data(); b.io.pgrad = pg;
  // the same backward with a learnable threshold (need_theta): the path that also sums parameter gradients
  bt = b;
  bt.need_theta = 1;
  const ms_base::Seq<float> qa(a.io), qb0(b.io), qbt0(bt.io);
  const Seq<float> qa2(a2.io), qb(b.io), qbt(bt.io);
  auto now = [] { return std::chrono::steady_clock::now(); };
  const int K = 8;
  const char* names[K] = {"fwd_base", "fwd_new", "bwd_base", "bwd_new", "copy", "copy_add", "bwd_th_base",
                          "bwd_th_new"};
  double best[K];
  for (double& v : best) v = 1e30;
  for (int r = 0; r < reps; ++r) {
    for (int k = 0; k < K; ++k) {  // interleaved: slow drifts of the background load hit every variant
      const auto t0 = now();
      if (k == 0) ms_base::lif_base::lif_fwd<float, 0, 0>(qa, a);
      if (k == 1) lif::lif_fwd<float, 0, 0>(qa2, a2);
      if (k == 2) ms_base::lif_base::lif_bwd<float, 0, 0, 0>(qb0, b);
      if (k == 3) lif::lif_bwd<float, 0, 0, 0>(qb, b);
      if (k == 6) ms_base::lif_base::lif_bwd<float, 0, 0, 0>(qbt0, bt);
      if (k == 7) lif::lif_bwd<float, 0, 0, 0>(qbt, bt);
      if (k == 4 || k == 5) {
        float* MS_R d = dst.data();
        const float* MS_R s = x.data();
        MS_SIMD
        for (int64_t i = 0; i < T * N; ++i) d[i] = s[i];
      }
      if (k == 5) {
        float* MS_R g = gsum.data();
        const float* MS_R s = x.data();
        const float* MS_R u = gy.data();
        MS_SIMD
        for (int64_t i = 0; i < T * N; ++i) g[i] = s[i] + u[i];
      }
      best[k] = std::min(best[k], std::chrono::duration<double>(now() - t0).count());
    }
  }
  const bool same = !std::memcmp(y.data(), y2.data(), 4 * T * N) && !std::memcmp(vT.data(), vT2.data(), 4 * N);
  std::printf("T=%ld N=%ld soft=%d forward_identical=%d", (long)T, (long)N, soft, (int)same);
  for (int k = 0; k < K; ++k) std::printf(" %s=%.4f", names[k], best[k] / (double)(T * N) * 1e9);
  std::printf("\n");
  return same ? 0 : 1;
}
