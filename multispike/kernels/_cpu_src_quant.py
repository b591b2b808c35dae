"""C++ source of the fused clip-floor quantizers used in quantization-aware ANN training (QCFS and QAC).

Appended to the kernel library (:mod:`multispike.kernels._build`). One pass per element in each direction: the
forward reads ``z`` and writes the quantized value; the backward recomputes the level from ``z`` (nothing else is
saved), writes ``∂L/∂z`` and returns the two sums from which every learnable clip/step gradient follows. Storage
is float32 or bfloat16 (bits in a uint16, rounded to nearest-even like PyTorch); arithmetic is float32 and, for
float32 storage, replays the reference expression's IEEE operations one by one (``-ffp-contract=off``).
"""

SOURCE = r"""
#include <cstring>
namespace msq {

static inline float bf2f(uint16_t b) { return __builtin_bit_cast(float, (uint32_t)b << 16); }
static inline uint16_t f2bf(float f) {
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;     // round to nearest even
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
struct F32 { typedef float T; static inline float ld(const T* p, int64_t i) { return p[i]; }
             static inline void st(T* p, int64_t i, float v) { p[i] = v; } };
struct BF16 { typedef uint16_t T; static inline float ld(const T* p, int64_t i) { return bf2f(p[i]); }
              static inline void st(T* p, int64_t i, float v) { p[i] = f2bf(v); } };

// Exact floor for every float (NaN and +-inf pass through), written so GCC vectorises it without
// -fno-trapping-math (std::floor and float->int conversions are not if-converted under the library's flags):
// adding and removing 2^23 rounds |u| < 2^23 to an integer; one step down where that rounded up.
static inline float floor_exact(float u) {
  const float big = std::copysign(8388608.0f, u);
  const float r = (u + big) - big;
  const float f = r > u ? r - 1.0f : r;
  return std::fabs(u) < 8388608.0f ? f : u;
}
static inline float clamp01(float q) { return q < 0.0f ? 0.0f : (q > 1.0f ? 1.0f : q); }

// Threads take blocks; each block is one vectorised loop (float partial sums per block, double across blocks).
static const int64_t QBLOCK = 4096;

// QCFS: out = clamp(floor(z / th * L + phi) / L, 0, 1) * th   (algorithms.md 3.1, in the reference's op order)
template <typename IO>
static void qcfs_fwd(const typename IO::T* MS_R z, typename IO::T* MS_R out, int64_t n, float th, float L, float phi,
                     int threads) {
  const int64_t nb = (n + QBLOCK - 1) / QBLOCK;
  #pragma omp parallel for num_threads(threads) schedule(static) if (nb > 8)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * QBLOCK, e = s + QBLOCK < n ? s + QBLOCK : n;
    const float th_ = th, L_ = L, phi_ = phi;   // locals: the outlined OpenMP body would reload captured ones
    const typename IO::T* MS_R zb = z + s;
    typename IO::T* MS_R ob = out + s;
    const int m = (int)(e - s);
    #pragma omp simd
    for (int i = 0; i < m; ++i) {
      float u = IO::ld(zb, i) / th_;
      u = u * L_;
      u = u + phi_;
      const float q = clamp01(floor_exact(u) / L_);
      IO::st(ob, i, q * th_);
    }
  }
}

// dz = g where 0 <= q_u <= 1 (clamp passes both bounds), else 0;  sums[0] = sum g*clamp(q_u),
// sums[1] = sum_{inside} g*z/th, so dL/dth = sums[0] - sums[1].
template <typename IO>
static void qcfs_bwd(const typename IO::T* MS_R z, const typename IO::T* MS_R g, typename IO::T* MS_R gz, int64_t n,
                     float th, float L, float phi, double* sums, int threads) {
  const int64_t nb = (n + QBLOCK - 1) / QBLOCK;
  double a = 0.0, b = 0.0;
  #pragma omp parallel for num_threads(threads) schedule(static) reduction(+:a,b) if (nb > 8)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * QBLOCK, e = s + QBLOCK < n ? s + QBLOCK : n;
    float fa = 0.0f, fb = 0.0f;
    #pragma omp simd reduction(+:fa,fb)
    for (int64_t i = s; i < e; ++i) {
      const float zi = IO::ld(z, i), gi = IO::ld(g, i);
      const float u = zi / th;
      const float q = floor_exact(u * L + phi) / L;
      const bool inside = q >= 0.0f && q <= 1.0f;
      const float gin = inside ? gi : 0.0f;
      IO::st(gz, i, gin);
      fa += gi * clamp01(q);
      fb += gin * u;
    }
    a += fa; b += fb;
  }
  sums[0] = a; sums[1] = b;
}

// QAC: out = clamp(floor(x * T / a + 0.5), 0, T) * a / T   (algorithms.md 3.2, qac_quantize's op order)
template <typename IO>
static void qac_fwd(const typename IO::T* MS_R x, typename IO::T* MS_R out, int64_t n, float a, float T, int threads) {
  const int64_t nb = (n + QBLOCK - 1) / QBLOCK;
  #pragma omp parallel for num_threads(threads) schedule(static) if (nb > 8)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * QBLOCK, e = s + QBLOCK < n ? s + QBLOCK : n;
    const float a_ = a, T_ = T;   // locals: the outlined OpenMP body would reload captured ones
    const typename IO::T* MS_R xb = x + s;
    typename IO::T* MS_R ob = out + s;
    const int m = (int)(e - s);
    #pragma omp simd
    for (int i = 0; i < m; ++i) {
      float u = IO::ld(xb, i) * T_;
      u = u / a_;
      u = u + 0.5f;
      float lv = floor_exact(u);
      lv = lv < 0.0f ? 0.0f : (lv > T_ ? T_ : lv);
      IO::st(ob, i, lv * a_ / T_);
    }
  }
}

// dx = g inside 0 <= x <= a; sums[0] = sum_{inside} g*(q - x), sums[1] = sum_{x > a} g.
template <typename IO>
static void qac_bwd(const typename IO::T* MS_R x, const typename IO::T* MS_R g, typename IO::T* MS_R gx, int64_t n,
                    float a, float T, double* sums, int threads) {
  const int64_t nb = (n + QBLOCK - 1) / QBLOCK;
  double sr = 0.0, sa = 0.0;
  #pragma omp parallel for num_threads(threads) schedule(static) reduction(+:sr,sa) if (nb > 8)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * QBLOCK, e = s + QBLOCK < n ? s + QBLOCK : n;
    float fr = 0.0f, fa = 0.0f;
    #pragma omp simd reduction(+:fr,fa)
    for (int64_t i = s; i < e; ++i) {
      const float xi = IO::ld(x, i), gi = IO::ld(g, i);
      float lv = floor_exact(xi * T / a + 0.5f);
      lv = lv < 0.0f ? 0.0f : (lv > T ? T : lv);
      const float q = lv * a / T;
      const bool inside = xi >= 0.0f && xi <= a;
      const float gin = inside ? gi : 0.0f;
      IO::st(gx, i, gin);
      fr += gin * (q - xi);
      fa += xi > a ? gi : 0.0f;
    }
    sr += fr; sa += fa;
  }
  sums[0] = sr; sums[1] = sa;
}

}  // namespace msq

extern "C" {
// dtype: 0 float32, 1 bfloat16. Return 0 on success, -1 for an unknown dtype.
int ms_qcfs_forward(int dtype, const void* z, void* out, int64_t n, double th, double L, double phi, int threads) {
  if (dtype == 0) msq::qcfs_fwd<msq::F32>((const float*)z, (float*)out, n, (float)th, (float)L, (float)phi, threads);
  else if (dtype == 1) msq::qcfs_fwd<msq::BF16>((const uint16_t*)z, (uint16_t*)out, n, (float)th, (float)L, (float)phi, threads);
  else return -1;
  return 0;
}
int ms_qcfs_backward(int dtype, const void* z, const void* g, void* gz, int64_t n, double th, double L, double phi,
                     double* sums, int threads) {
  if (dtype == 0) msq::qcfs_bwd<msq::F32>((const float*)z, (const float*)g, (float*)gz, n, (float)th, (float)L, (float)phi, sums, threads);
  else if (dtype == 1) msq::qcfs_bwd<msq::BF16>((const uint16_t*)z, (const uint16_t*)g, (uint16_t*)gz, n, (float)th, (float)L, (float)phi, sums, threads);
  else return -1;
  return 0;
}
int ms_qac_forward(int dtype, const void* x, void* out, int64_t n, double a, double T, int threads) {
  if (dtype == 0) msq::qac_fwd<msq::F32>((const float*)x, (float*)out, n, (float)a, (float)T, threads);
  else if (dtype == 1) msq::qac_fwd<msq::BF16>((const uint16_t*)x, (uint16_t*)out, n, (float)a, (float)T, threads);
  else return -1;
  return 0;
}
int ms_qac_backward(int dtype, const void* x, const void* g, void* gx, int64_t n, double a, double T, double* sums,
                    int threads) {
  if (dtype == 0) msq::qac_bwd<msq::F32>((const float*)x, (const float*)g, (float*)gx, n, (float)a, (float)T, sums, threads);
  else if (dtype == 1) msq::qac_bwd<msq::BF16>((const uint16_t*)x, (const uint16_t*)g, (uint16_t*)gx, n, (float)a, (float)T, sums, threads);
  else return -1;
  return 0;
}
}  // extern "C"
"""
