// Shared part of the fused CPU neuron kernels: the call ABI, numerics and the forward/backward scaffolding.
//
// The kernels are plain C++17 with OpenMP and no PyTorch or Python headers; multispike.kernels._build compiles
// every .cpp of this folder into one shared library loaded with ctypes. Exactness rules (the forward must be
// bit-identical to the reference functions in multispike/neurons):
//   * every forward expression performs the reference's IEEE operations in the same order;
//   * the build uses -ffp-contract=off and never -ffast-math (no fused multiply-add, no reassociation);
//   * the backward recomputes the membrane with the forward's code, so the spikes it sees are exact.
//
// Call ABI: each family has one argument record (LifArgs, MlifArgs, LmhtArgs below) passed by pointer. Its first
// member is the tensor block MsIO, the rest mirrors the family's parameter record. The Python mirrors are the
// ctypes Structures of multispike/kernels/_abi.py; ms_args_size() lets the loader check that both agree.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#define MS_ABI_VERSION 2
#define MS_R __restrict__
// Every per-element loop is an OpenMP SIMD loop: the block buffers never alias and the runtime flags are loop
// invariant, so the loops must vectorise whatever the compiler's cost model or alias analysis would decide
// (without it, measured 10-30x slower). SIMD loops keep IEEE semantics: no reassociation, no contraction.
#define MS_SIMD _Pragma("omp simd")

extern "C" {

// The tensors of one call. Element (t, i) of a sequence is at base[t * stride_t + i] (i in memory order of one
// step); a null pointer is an absent optional tensor. dtype: 0 = float32, 1 = float64.
struct MsIO {
  const void* x;
  void* y;
  const void* v0;
  const void* lr0;
  void* vT;
  void* lrT;
  const void* gy;
  const void* gvT;
  const void* glrT;
  void* gx;
  void* gv0;
  void* glr0;
  double* pgrad;  // backward: the parameter gradients (per family: LIF 3, M-LIF 2, LM-HT T or T + T*T)
  int64_t T, N, xst, yst, gyst, gxst;
  int32_t dtype, nthreads;
};

// IF/LIF (multispike.neurons.params.LIFParameters). Doubles are cast to the element type as PyTorch casts
// scalar operands.
struct LifArgs {
  MsIO io;
  double theta, leak, tau, v_reset, v_init, sp0, sp1;
  int32_t leak_mode, soft, fire_ge, normalized, payload_theta, detach_reset, surr_kind;
  int32_t need_theta, need_leak, need_tau;
};

// One-hot M-LIF (MLIFParameters). theta_e: the lowest lane edge; oml: 1 - leak computed in the leak's dtype.
struct MlifArgs {
  MsIO io;
  double theta, theta_e, leak, v_init, unit, sp0, sp1, oml;
  int32_t charge, lanes, floor_bounds, fire_ge, soft, detach_reset, sign, unscaled, surr_kind;
  int32_t need_theta, need_leak;
};

// LM-HT / M-HT (LMHTParameters); lam: the leak of every step ([T] doubles). omega: the T-GIM, row-major [T*T]
// doubles holding values already rounded to the element type (null: M-HT, no mixing). Backward: pgrad[0..T) are
// d/d lam_t, pgrad[T + t*T + j] d/d omega_tj when need_omega.
struct LmhtArgs {
  MsIO io;
  const double* lam;
  const double* omega;
  double theta, in_scale, v_init, lo, hi;
  int32_t levels, scale_input, detach_temporal, detach_reset, need_leak, need_omega;
};

// One call of a quantizer kernel. dtype: 0 float32, 1 bfloat16 (not MsIO's codes: these kernels serve
// autocast training). p: QCFS (threshold, levels, shift), QAC (alpha, T, unused).
struct QuantArgs {
  const void* x;
  const void* g;    // backward: upstream gradient (same dtype as x)
  void* out;        // forward: quantized value; backward: input gradient
  double* sums;     // backward: the two parameter-gradient sums
  int64_t n;
  double p[3];
  int32_t dtype, nthreads;
};

}  // extern "C"

namespace ms {

// Surrogate derivative kinds (multispike.kernels._abi.surrogate_code).
enum { SK_SIGMOID = 0, SK_ATAN = 1, SK_RECT = 2, SK_TRI = 3 };

// Typed view of MsIO.
template <typename S>
struct Seq {
  const S* x;
  S* y;
  const S* v0;
  const S* lr0;
  S* vT;
  S* lrT;
  const S* gy;
  const S* gvT;
  const S* glrT;
  S* gx;
  S* gv0;
  S* glr0;
  double* pgrad;
  int64_t T, N, xst, yst, gyst, gxst;
  int nthreads;
  explicit Seq(const MsIO& io)
      : x((const S*)io.x), y((S*)io.y), v0((const S*)io.v0), lr0((const S*)io.lr0), vT((S*)io.vT),
        lrT((S*)io.lrT), gy((const S*)io.gy), gvT((const S*)io.gvT), glrT((const S*)io.glrT), gx((S*)io.gx),
        gv0((S*)io.gv0), glr0((S*)io.glr0), pgrad(io.pgrad), T(io.T), N(io.N), xst(io.xst), yst(io.yst),
        gyst(io.gyst), gxst(io.gxst), nthreads(io.nthreads) {}
};

// ---------------------------------------------------------------------------------------------- exp
// Branch-free exp with only + - * and integer bit operations so that loops using it vectorise. Cody-Waite
// reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial (float: degree 7, rel. error < 1e-7; double:
// degree 13, rel. error ~1e-16), 2^n assembled in the exponent bits. Used only by the backward.
static inline float ms_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  float t = x * 1.44269504088896341f + magic;
  float fn = t - magic;
  float r = x - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9841269841e-4f;
  p = p * r + 1.3888888889e-3f;
  p = p * r + 8.3333333333e-3f;
  p = p * r + 4.1666666667e-2f;
  p = p * r + 1.6666666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t tb, mb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&mb, &magic, 4);
  int32_t bits = (tb - mb + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

static inline double ms_exp(double x) {
  x = x < -708.0 ? -708.0 : x;
  x = x > 709.0 ? 709.0 : x;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  double t = x * 1.4426950408889634074 + magic;
  double fn = t - magic;
  double r = x - fn * 0.693145751953125;
  r = r - fn * 1.42860682030941723212e-6;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int64_t tb, mb;
  std::memcpy(&tb, &t, 8);
  std::memcpy(&mb, &magic, 8);
  int64_t bits = (tb - mb + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, 8);
  return p * scale;
}

// Surrogate derivative h'(x). p0, p1 are per-kind constants prepared by the host:
//   sigmoid: p0 = alpha                      h' = alpha * sig(alpha x) * (1 - sig(alpha x))
//   atan:    p0 = alpha/2, p1 = pi/2*alpha   h' = p0 / (1 + (p1 x)^2)
//   rect:    p0 = a/2,     p1 = 1/a          h' = |x| < p0 ? p1 : 0
//   tri:     p0 = width,   p1 = scale        h' = max(0, p0 - |x|) * p1
template <typename S, int SK>
static inline S surrogate(S x, S p0, S p1) {
  if (SK == SK_SIGMOID) {
    S e = ms_exp(-(p0 * x));
    S sg = S(1) / (S(1) + e);
    return p0 * sg * (S(1) - sg);
  } else if (SK == SK_ATAN) {
    S z = p1 * x;
    return p0 / (S(1) + z * z);
  } else if (SK == SK_RECT) {
    S a = x < S(0) ? -x : x;
    return a < p0 ? p1 : S(0);
  } else {
    S a = x < S(0) ? -x : x;
    S w = p0 - a;
    w = w > S(0) ? w : S(0);
    return w * p1;
  }
}

// ---------------------------------------------------------------------------------------------- block helpers
// dst[0..n) = src ? src[i0 .. i0+n) : fill. The null test stays outside the loop: a vectorised "p ? p[i] : c"
// becomes a masked load from the null page, and masked loads that touch an unmapped page are microcode-assisted
// (measured ~30x slower than the whole kernel otherwise).
template <typename S>
static inline void load_or(const S* MS_R src, int64_t i0, S fill, S* MS_R dst, int n) {
  if (src) {
    src += i0;
    MS_SIMD
    for (int i = 0; i < n; ++i) dst[i] = src[i];
  } else {
    MS_SIMD
    for (int i = 0; i < n; ++i) dst[i] = fill;
  }
}

// dst[i0 .. i0+n) = src[0..n) when dst is given.
template <typename S>
static inline void store_if(S* MS_R dst, int64_t i0, const S* MS_R src, int n) {
  if (!dst) return;
  dst += i0;
  MS_SIMD
  for (int i = 0; i < n; ++i) dst[i] = src[i];
}

static inline int pick_block(int64_t T, int elem) {
  // Keep the recomputed membranes of one block (T x BS) within ~256 KiB (L2), and blocks long enough (up to 16 KiB
  // per step) that the hardware prefetchers, which stop at 4 KiB page boundaries, stream each row of the block.
  int64_t bs = 262144 / (T * elem);
  bs = bs > 4096 ? 4096 : bs;
  bs = bs < 64 ? 64 : bs;
  return (int)(bs & ~int64_t(15));
}

static inline int pick_threads(int64_t work, int nthreads) {
  if (nthreads < 1) nthreads = 1;
  return work < 32768 ? 1 : nthreads;
}

// ---------------------------------------------------------------------------------------------- scaffolding
// Forward: body(i0, n) for each block of BS elements of one step, blocks spread over the threads. The body keeps
// its block's state in its own stack arrays across the T steps (one pass over the sequence).
template <class Body>
static void forward_blocks(int64_t T, int64_t N, int BS, int nthreads, Body body) {
  const int64_t nblocks = (N + BS - 1) / BS;
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel for schedule(static) num_threads(nth)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t i0 = b * BS;
    body(i0, (int)std::min<int64_t>(BS, N - i0));
  }
}

// Backward: each thread owns a T x BS scratch M (the recomputed membranes of its block, no zero fill) and `rows`
// work rows of BS elements; body(i0, n, BS, M, work, part) runs one block and writes its NP parameter-gradient
// partial sums to part[0..NP). They are summed over blocks in block order into pgrad[0..NP): deterministic
// whatever the thread count.
template <typename S, class Body>
static void backward_blocks(int64_t T, int64_t N, int nthreads, int rows, int64_t NP, double* pgrad, Body body) {
  const int BS = pick_block(T, (int)sizeof(S));
  const int64_t nblocks = (N + BS - 1) / BS;
  std::vector<double> partial((size_t)(nblocks * NP), 0.0);
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel num_threads(nth)
  {
    std::unique_ptr<S[]> M(new S[(size_t)T * BS]);
    std::unique_ptr<S[]> work(new S[(size_t)rows * BS]);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * BS;
      body(i0, (int)std::min<int64_t>(BS, N - i0), BS, M.get(), work.get(), partial.data() + b * NP);
    }
  }
  if (!pgrad) return;
  for (int64_t k = 0; k < NP; ++k) {
    double acc = 0.0;
    for (int64_t b = 0; b < nblocks; ++b) acc += partial[(size_t)(b * NP + k)];
    pgrad[k] = acc;
  }
}

// Per-block sum of a row in double (the parameter gradients are tolerance-checked, so the vectorised
// reassociation of this sum is fine).
template <typename S>
static inline double row_sum(const S* MS_R a, int n) {
  double s = 0.0;
#pragma omp simd reduction(+:s)
  for (int i = 0; i < n; ++i) s += (double)a[i];
  return s;
}

// ---------------------------------------------------------------------------------------------- dispatch
// Runtime flags become template constants: f(std::integral_constant<int, V>{}) for the V of Vs equal to v.
// Returns 0, or 2 when v is not among Vs.
template <int... Vs, class F>
static int select(int v, F&& f) {
  int rc = 2;
  (void)((v == Vs ? (f(std::integral_constant<int, Vs>{}), rc = 0, true) : false) || ...);
  return rc;
}

// f(float{}) or f(double{}) for dtype 0 / 1 (f returns an int status); 1 for another dtype.
template <class F>
static int with_dtype(int dtype, F&& f) {
  if (dtype == 0) return f(float{});
  if (dtype == 1) return f(double{});
  return 1;
}

}  // namespace ms
