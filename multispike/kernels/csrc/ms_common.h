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
// The family code handed to the shared skeletons (state_forward, state_backward) is a set of lambdas; each must be
// inlined into the block loop: an out-of-line copy of a SIMD loop that GCC 12 declines to inline (measured: the
// larger LIF adjoint steps) is not vectorised at all.
#define MS_INLINE __attribute__((always_inline))

extern "C" {

// The tensors of one call. Element (t, i) of a sequence is at base[t * stride_t + i] (i in memory order of one
// step); a null pointer is an absent optional tensor. dtype: 0 = float32, 1 = float64.
// MS_IO_TENSORS lists the tensor pointers once, in ABI order, as X(constness, name): MsIO declares them untyped
// (the ABI), ms::Seq typed (the kernels' view); the list keeps the two in step.
#define MS_IO_TENSORS(X)                                                                                      \
  X(const, x) X(, y) X(const, v0) X(const, lr0) X(, vT) X(, lrT) X(const, gy) X(const, gvT) X(const, glrT)   \
  X(, gx) X(, gv0) X(, glr0)
#define MS_IO_UNTYPED(C, name) C void* name;
struct MsIO {
  MS_IO_TENSORS(MS_IO_UNTYPED)
  double* pgrad;  // backward: the parameter gradients (per family: LIF 3, M-LIF 2, LM-HT T or T + T*T)
  int64_t T, N, xst, yst, gyst, gxst;
  int32_t dtype, nthreads;
};
#undef MS_IO_UNTYPED

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

// Typed view of MsIO: the same tensor pointers (MS_IO_TENSORS) cast to the element type S.
#define MS_SEQ_TYPED(C, name) C S* name;
#define MS_SEQ_CAST(C, name) name((C S*)io.name),
template <typename S>
struct Seq {
  MS_IO_TENSORS(MS_SEQ_TYPED)
  double* pgrad;
  int64_t T, N, xst, yst, gyst, gxst;
  int nthreads;
  explicit Seq(const MsIO& io)
      : MS_IO_TENSORS(MS_SEQ_CAST) pgrad(io.pgrad), T(io.T), N(io.N), xst(io.xst), yst(io.yst), gyst(io.gyst),
        gxst(io.gxst), nthreads(io.nthreads) {}
};
#undef MS_SEQ_TYPED
#undef MS_SEQ_CAST

// ---------------------------------------------------------------------------------------------- exp
// Branch-free exp with only + - * and integer bit operations so that loops using it vectorise. Cody-Waite
// reduction x = n ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 13 (rel. error ~1e-16), 2^n assembled in the
// exponent bits. Used only by the double backward (float: sigmoid_deriv).
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
// Sigmoid derivative alpha * sg * (1 - sg), sg = sig(alpha x): the reference's expression on the reference's rounded
// alpha x. It is the backward's most expensive expression (each SIMD op costs about as much as copying the
// element), so the float form is ms_exp's reduction with fewer ops: the same Cody-Waite split of -z = n ln2 + r,
// but carried out on r' = -r = z + n ln2 (the negation of z saved), and e^r = P(-r') by a degree-6 near-minimax
// polynomial (rel. error 1.7e-8 with float coefficients; ms_exp: degree-7 Taylor, 5e-9) whose odd coefficients
// carry the sign. Against the correctly rounded sigmoid in the reference's formula it matches as often as ms_exp's
// form (max. abs. difference 2.4e-7 for both, alpha 4); reducing via 2^y, y = -z log2(e), would save 3 more ops
// but doubled that difference (the rounding of y).
static inline float sigmoid_deriv(float x, float alpha) {
  float z = alpha * x;
  z = z > 87.0f ? 87.0f : z;  // e^-z within float's normal range
  z = z < -88.0f ? -88.0f : z;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits
  const float t = z * -1.44269504088896341f + magic;
  const float fn = t - magic;
  float r = z + fn * 0.693359375f;  // -r of ms_exp: the same roundings, exactly negated
  r = r + fn * -2.12194440e-4f;
  float p = 1.38436537e-3f;
  p = p * r + -8.37415550e-3f;
  p = p * r + 4.16680016e-2f;
  p = p * r + -1.66664317e-1f;
  p = p * r + 4.99999940e-1f;
  p = p * r + -1.0f;
  p = p * r + 1.0f;
  int32_t tb, mb;
  std::memcpy(&tb, &t, 4);
  std::memcpy(&mb, &magic, 4);
  const int32_t bits = (tb - mb + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  const float e = p * scale;
  const float sg = 1.0f / (1.0f + e);
  return alpha * sg * (1.0f - sg);
}

static inline double sigmoid_deriv(double x, double alpha) {
  const double e = ms_exp(-(alpha * x));
  const double sg = 1.0 / (1.0 + e);
  return alpha * sg * (1.0 - sg);
}

template <typename S, int SK>
static inline S surrogate(S x, S p0, S p1) {
  if (SK == SK_SIGMOID) {
    return sigmoid_deriv(x, p0);
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

// Backward block length: the block's whole working set - the T scratch rows M plus the `rows` work rows - within
// 16 KiB, i.e. in L1 (32-48 KiB on current x86 cores) beside the streamed x/gy/gx rows; at least 256 elements (shorter
// rows starve the prefetchers), at most 4096. Measured (perf_goals shapes [T,32,128,16,16], T = 2/4/8, one thread,
// Intel Xeon with a 48 KiB L1): against the earlier L2-sized blocks (T x BS within 256 KiB: 4096 elements up to
// T = 16) forward+backward / copy+add floor fell from 2.2-2.6 to 1.7-2.2 for IF/LIF/M-HT and from 9-15 to 5.3-7 for
// M-LIF (14 work rows, each pass over them went to L2); 64-128 elements were slower again. Long sequences no longer
// fit L1 at any useful length, and there 4 KiB rows won (T = 32, ms for 256 / 1024 / 4096 elements: IF 78 / 65 / 67,
// M-HT 85 / 74 / 79, LM-HT 539 / 453 / 427, M-LIF 148 / 119 / 142; at T = 16 256-512 were still best): from T = 17
// at least 4 KiB per row.
static inline int pick_backward_block(int64_t T, int elem, int rows) {
  int64_t bs = 16384 / ((T + rows) * (int64_t)elem);
  if (T > 16 && bs < 4096 / elem) bs = 4096 / elem;
  bs = bs > 4096 ? 4096 : bs;
  bs = bs < 256 ? 256 : bs;
  return (int)(bs & ~int64_t(15));
}

// Backward: each thread owns a T x BS scratch M (the recomputed membranes of its block, no zero fill) and `rows`
// work rows of BS elements; body(i0, n, BS, M, work, part) runs one block and writes its NP parameter-gradient
// partial sums to part[0..NP). They are summed over blocks in block order into pgrad[0..NP): deterministic
// whatever the thread count.
template <typename S, class Body>
static void backward_blocks(int64_t T, int64_t N, int nthreads, int rows, int64_t NP, double* pgrad, Body body) {
  const int BS = pick_backward_block(T, (int)sizeof(S), rows);
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

// ---------------------------------------------------------------------------------------------- (v, lr) families
// The IF/LIF and one-hot M-LIF kernels share their state (membrane v and last reset lr), so they share the two
// passes below; each family supplies only its step and adjoint step. KEEP_LR: the family keeps the last reset as
// state (the paper's reset_leak=False form) - lrT is written and the gradient flows back into lr0; otherwise lr
// stays 0 and glr0 is 0.

// Forward: per block of BS elements, v (from v0, else v_init) and lr (from lr0, else 0) stay in stack arrays over
// the T steps; step(x_t, y_t, v, lr, n) runs one step of the block, reading x(t) and writing y(t).
template <typename S, int BS, bool KEEP_LR, class Step>
MS_INLINE static inline void state_forward(const Seq<S>& q, S v_init, Step step) {
  forward_blocks(q.T, q.N, BS, q.nthreads, [&](int64_t i0, int n) {
    S v[BS], lr[BS];
    load_or(q.v0, i0, v_init, v, n);
    load_or(q.lr0, i0, S(0), lr, n);
    for (int64_t t = 0; t < q.T; ++t) step(q.x + t * q.xst + i0, q.y + t * q.yst + i0, v, lr, n);
    store_if(q.vT, i0, v, n);
    if (KEEP_LR) store_if(q.lrT, i0, lr, n);
  });
}

// The work rows state_backward's block uses itself (v, lr, gv, glr, vp, lp); a family's rows follow them.
constexpr int STATE_ROWS = 6;

// Backward of one block (called from a backward_blocks body with its scratch M and work rows): recompute m(t) for
// all t into M with the forward's step, then run the adjoint from t = T-1 down to 0 with (gv, glr) starting at
// (gvT, glrT) or 0:
//   recompute(x_t, v, lr, M_t, n)            one forward step (the family's step), m(t) into M_t
//   adjoint(M_t, gy_t, gx_t, gv, glr, n)     one adjoint step: writes gx(t), updates gv and glr in place
// and, when need_prev (a parameter gradient needs the state before step t):
//   prev(M_{t-1}, vp, lp, n)                 the state (v, lr) after step t-1, rebuilt from m(t-1) (t > 0; at
//                                            t = 0 it is the initial state, loaded here)
//   accumulate(x_t, vp, lp, n)               add step t's terms to the family's parameter-gradient rows
// Finally gv0 and glr0 are stored when requested.
template <typename S, bool KEEP_LR, class Recompute, class Adjoint, class Prev, class Accumulate>
MS_INLINE static inline void state_backward(const Seq<S>& q, int64_t i0, int n, int BS, S* M, S* work, S v_init,
                                  bool need_prev, Recompute recompute, Adjoint adjoint, Prev prev,
                                  Accumulate accumulate) {
  S* MS_R v = work;
  S* MS_R lr = work + BS;
  S* MS_R gv = work + 2 * BS;
  S* MS_R glr = work + 3 * BS;
  S* MS_R vp = work + 4 * BS;
  S* MS_R lp = work + 5 * BS;
  load_or(q.v0, i0, v_init, v, n);
  load_or(q.lr0, i0, S(0), lr, n);
  for (int64_t t = 0; t < q.T; ++t) recompute(q.x + t * q.xst + i0, v, lr, M + t * BS, n);
  load_or(q.gvT, i0, S(0), gv, n);
  load_or(q.glrT, i0, S(0), glr, n);
  for (int64_t t = q.T - 1; t >= 0; --t) {
    adjoint(M + t * BS, q.gy + t * q.gyst + i0, q.gx + t * q.gxst + i0, gv, glr, n);
    if (!need_prev) continue;
    if (t > 0) {
      prev(M + (t - 1) * BS, vp, lp, n);
    } else {
      load_or(q.v0, i0, v_init, vp, n);
      load_or(q.lr0, i0, S(0), lp, n);
    }
    accumulate(q.x + t * q.xst + i0, vp, lp, n);
  }
  store_if(q.gv0, i0, gv, n);
  if (q.glr0) {
    if (!KEEP_LR) std::fill(glr, glr + n, S(0));
    store_if(q.glr0, i0, glr, n);
  }
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
