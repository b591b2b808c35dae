"""C++ source of the fused CPU IF/LIF kernels (compiled by :mod:`multispike.kernels._build`).

Kept as a Python string so the package needs no data-file configuration. The code is plain C++17 with
OpenMP and no PyTorch or Python headers, so it builds in seconds with the system ``g++`` and is loaded with
``ctypes``. Exactness rules (the forward must be bit-identical to :func:`multispike.neurons.lif_multistep`):

* every forward expression performs the same IEEE operations in the same order as the reference;
* the build uses ``-ffp-contract=off`` and never ``-ffast-math`` (no fused multiply-add, no reassociation);
* the backward recomputes the membrane with the same forward code, so the spikes it sees are exact.
"""

SOURCE = r"""
#include <cstdint>
#include <cstring>
#include <cmath>
#include <vector>
#include <memory>
#include <algorithm>
#define MS_R __restrict__
// Every per-element loop is an OpenMP SIMD loop: the block buffers never alias and the runtime flags are loop
// invariant, so the loops must vectorise whatever the compiler's cost model or alias analysis would decide
// (without it, measured 10-30x slower). SIMD loops keep IEEE semantics: no reassociation, no contraction.
#define MS_SIMD _Pragma("omp simd")
#define MS_IVDEP MS_SIMD
#ifdef _OPENMP
#include <omp.h>
#endif

namespace ms {

// Leak placements (lif_multistep): post_reset with reset_leak, post_reset without (DIET/M-LIF paper form),
// decay_input, decay_state.
enum { LM_PR = 0, LM_PRN = 1, LM_DI = 2, LM_DS = 3 };
// Surrogate derivative kinds.
enum { SK_SIGMOID = 0, SK_ATAN = 1, SK_RECT = 2, SK_TRI = 3 };

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

// dst[0..n) = src ? src[0..n) : fill. The null test stays outside the loop: a vectorised "p ? p[i] : c" becomes a
// masked load from the null page, and masked loads that touch an unmapped page are microcode-assisted (measured
// ~30x slower than the whole kernel otherwise).
template <typename S>
static inline void load_or(const S* MS_R src, S fill, S* MS_R dst, int n) {
  if (src) {
    MS_SIMD
    for (int i = 0; i < n; ++i) dst[i] = src[i];
  } else {
    MS_SIMD
    for (int i = 0; i < n; ++i) dst[i] = fill;
  }
}

template <typename S>
static inline const S* offset_or_null(const S* p, int64_t off) {
  return p ? p + off : nullptr;
}

struct Cfg {
  // float parameters (doubles from the host, cast to the element type like PyTorch casts scalar operands)
  double theta, leak, tau, vr0, v_reset, v_init, sp0, sp1;
  // integer flags
  int leak_mode, soft, fire_ge, normalized, payload_theta, detach_reset, surr_kind;
  int need_theta, need_leak, need_tau;
};

static Cfg read_cfg(const double* fp, const int64_t* ip) {
  Cfg c;
  c.theta = fp[0]; c.leak = fp[1]; c.tau = fp[2]; c.vr0 = fp[3]; c.v_reset = fp[4]; c.v_init = fp[5];
  c.sp0 = fp[6]; c.sp1 = fp[7];
  c.leak_mode = (int)ip[0]; c.soft = (int)ip[1]; c.fire_ge = (int)ip[2]; c.normalized = (int)ip[3];
  c.payload_theta = (int)ip[4]; c.detach_reset = (int)ip[5]; c.surr_kind = (int)ip[6];
  c.need_theta = (int)ip[7]; c.need_leak = (int)ip[8]; c.need_tau = (int)ip[9];
  return c;
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

// One membrane charge m(t) from the post-reset state (exactly the reference's expression for each mode).
template <typename S, int LM>
static inline S charge(S v, S lr, S x, S leak, S tau, S vr0) {
  if (LM == LM_PR) return leak * v + x;
  if (LM == LM_PRN) return leak * (v + lr) + x - lr;
  if (LM == LM_DI) return v + (x - (v - vr0)) / tau;
  return v - (v - vr0) / tau + x;
}

// The surrogate form is a template parameter: a runtime select would compute the (slow, vector) division of the
// normalised form on every element even in the difference form (measured: two thirds of the backward time).
template <int NORM, typename S>
static inline S spike_arg(S m, S theta) {
  if (NORM) return m / theta - S(1);
  return m - theta;
}

template <typename S>
static inline S fire(S arg, int fire_ge) {
  return fire_ge ? (arg >= S(0) ? S(1) : S(0)) : (arg > S(0) ? S(1) : S(0));
}

template <typename S>
static inline S after_reset(S m, S s, S theta, S v_reset, int soft) {
  return soft ? m - theta * s : m * (S(1) - s) + v_reset * s;
}

// ---------------------------------------------------------------------------------------------- forward
template <typename S, int LM, int NORM>
static void lif_fwd(const S* MS_R x, int64_t T, int64_t N, int64_t xst, S* MS_R y, int64_t yst, const S* MS_R v0,
                    const S* MS_R lr0, S* MS_R vT, S* MS_R lrT, const Cfg& c, int nthreads) {
  const S theta = (S)c.theta, leak = (S)c.leak, tau = (S)c.tau, vr0 = (S)c.vr0, v_reset = (S)c.v_reset;
  const S v_init = S(0) + (S)c.v_init;
  // reset_leak=False (LM_PRN) implies a soft reset; a compile-time constant keeps that loop simple enough to vectorise.
  const int soft = LM == LM_PRN ? 1 : c.soft, fire_ge = c.fire_ge, pth = c.payload_theta;
  const int BS = 4096;  // 16 KiB rows: long prefetch streams
  const int64_t nblocks = (N + BS - 1) / BS;
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel for schedule(static) num_threads(nth)
  for (int64_t b = 0; b < nblocks; ++b) {
    S v[BS], lr[BS];
    const int64_t i0 = b * BS;
    const int n = (int)std::min<int64_t>(BS, N - i0);
    load_or(offset_or_null(v0, i0), v_init, v, n);
    load_or(offset_or_null(lr0, i0), S(0), lr, n);
    for (int64_t t = 0; t < T; ++t) {
      const S* MS_R xt = x + t * xst + i0;
      S* MS_R yt = y + t * yst + i0;
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        S m = charge<S, LM>(v[i], lr[i], xt[i], leak, tau, vr0);
        S s = fire(spike_arg<NORM>(m, theta), fire_ge);
        S vn = after_reset(m, s, theta, v_reset, soft);
        if (LM == LM_PRN) lr[i] = theta * s;
        v[i] = vn;
        yt[i] = pth ? theta * s : s;
      }
    }
    MS_SIMD
    for (int i = 0; i < n; ++i) vT[i0 + i] = v[i];
    if (LM == LM_PRN && lrT)
      MS_SIMD
      for (int i = 0; i < n; ++i) lrT[i0 + i] = lr[i];
  }
}

// ---------------------------------------------------------------------------------------------- backward
// Per block: recompute m(t) for all t (kept in a T x BS scratch in cache), then run the adjoint backwards.
// Parameter gradients are summed per element over t, then per block in double, then over blocks in block order
// (deterministic whatever the thread count).
template <typename S, int LM, int NORM, int SK>
static void lif_bwd(const S* MS_R x, int64_t T, int64_t N, int64_t xst, const S* MS_R gy, int64_t gyst,
                    const S* MS_R v0, const S* MS_R lr0, const S* MS_R gvT, const S* MS_R glrT, S* MS_R gx,
                    int64_t gxst, S* MS_R gv0, S* MS_R glr0,
                    double* pgrad, const Cfg& c, int nthreads) {
  const S theta = (S)c.theta, leak = (S)c.leak, tau = (S)c.tau, vr0 = (S)c.vr0, v_reset = (S)c.v_reset;
  const S v_init = S(0) + (S)c.v_init;
  const S sp0 = (S)c.sp0, sp1 = (S)c.sp1;
  // reset_leak=False (LM_PRN) implies a soft reset; a compile-time constant keeps that loop simple enough to vectorise.
  const int soft = LM == LM_PRN ? 1 : c.soft, fire_ge = c.fire_ge, pth = c.payload_theta;
  const int detach = c.detach_reset;
  const int need_leak = c.need_leak && (LM == LM_PR || LM == LM_PRN);
  const int need_tau = c.need_tau && (LM == LM_DI || LM == LM_DS);
  const S inv_tau = S(1) / tau, one_m_inv_tau = S(1) - S(1) / tau, inv_tau2 = S(1) / (tau * tau);
  const S inv_theta = S(1) / theta, inv_theta2 = S(1) / (theta * theta);
  const int BS = pick_block(T, (int)sizeof(S));
  const int64_t nblocks = (N + BS - 1) / BS;
  std::vector<double> partial((size_t)nblocks * 3, 0.0);
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel num_threads(nth)
  {
    std::unique_ptr<S[]> M(new S[(size_t)T * BS]);  // scratch, no zero fill
    std::unique_ptr<S[]> buf(new S[(size_t)10 * BS]);
    S* MS_R v = buf.get();
    S* MS_R lr = v + BS;
    S* MS_R gv = lr + BS;
    S* MS_R glr = gv + BS;
    S* MS_R ath = glr + BS;
    S* MS_R ale = ath + BS;
    S* MS_R ata = ale + BS;
    S* MS_R gmb = ata + BS;
    S* MS_R vpb = gmb + BS;
    S* MS_R lpb = vpb + BS;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * BS;
      const int n = (int)std::min<int64_t>(BS, N - i0);
      load_or(offset_or_null(v0, i0), v_init, v, n);
      load_or(offset_or_null(lr0, i0), S(0), lr, n);
      // forward recomputation (identical expressions to lif_fwd)
      for (int64_t t = 0; t < T; ++t) {
        const S* xt = x + t * xst + i0;
        S* Mt = M.get() + t * BS;
        MS_SIMD
        for (int i = 0; i < n; ++i) {
          S m = charge<S, LM>(v[i], lr[i], xt[i], leak, tau, vr0);
          S s = fire(spike_arg<NORM>(m, theta), fire_ge);
          Mt[i] = m;
          if (LM == LM_PRN) lr[i] = theta * s;
          v[i] = after_reset(m, s, theta, v_reset, soft);
        }
      }
      load_or(offset_or_null(gvT, i0), S(0), gv, n);
      load_or(offset_or_null(glrT, i0), S(0), glr, n);
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        ath[i] = S(0); ale[i] = S(0); ata[i] = S(0);
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const S* MS_R Mt = M.get() + t * BS;
        const S* MS_R gyt = gy + t * gyst + i0;
        S* MS_R gxt = gx + t * gxst + i0;
        // Adjoint step: one branch-free SIMD pass (the surrogate kind is a template parameter; the other flags
        // are loop-invariant selects).
        MS_SIMD
        for (int i = 0; i < n; ++i) {
          const S m = Mt[i];
          const S arg = spike_arg<NORM>(m, theta);
          const S s = fire(arg, fire_ge);
          const S g_y = gyt[i];
          const S g_v = gv[i];
          const S g_lr = glr[i];
          S gs = pth ? g_y * theta : g_y;
          S gth = pth ? g_y * s : S(0);
          S gsr_soft = -theta * g_v;
          S gth_soft = gth - s * g_v;
          if (LM == LM_PRN) {
            gsr_soft = gsr_soft + theta * g_lr;
            gth_soft = gth_soft + s * g_lr;
          }
          const S gm0 = soft ? g_v : g_v * (S(1) - s);
          const S gsr = soft ? gsr_soft : g_v * (v_reset - m);
          gth = soft ? gth_soft : gth;
          gs = detach ? gs : gs + gsr;
          const S garg = gs * surrogate<S, SK>(arg, sp0, sp1);
          const S gm = NORM ? gm0 + garg * inv_theta : gm0 + garg;
          gth = NORM ? gth - garg * m * inv_theta2 : gth;
          ath[i] += gth;
          gmb[i] = gm;
          if (LM == LM_PR) {
            gxt[i] = gm;
            gv[i] = gm * leak;
          } else if (LM == LM_PRN) {
            gxt[i] = gm;
            gv[i] = gm * leak;
            glr[i] = gm * (leak - S(1));
          } else if (LM == LM_DI) {
            gxt[i] = gm * inv_tau;
            gv[i] = gm * one_m_inv_tau;
          } else {
            gxt[i] = gm;
            gv[i] = gm * one_m_inv_tau;
          }
        }
        if (need_leak || need_tau) {
          // The leak/tau gradients need the state before this step, v(t-1) (and lr(t-1)): recompute it from
          // m(t-1), or take the initial state at t = 0.
          if (t > 0) {
            const S* Mp = M.get() + (t - 1) * BS;
            MS_SIMD
            for (int i = 0; i < n; ++i) {
              const S mp = Mp[i];
              const S sp = fire(spike_arg<NORM>(mp, theta), fire_ge);
              vpb[i] = after_reset(mp, sp, theta, v_reset, soft);
              lpb[i] = theta * sp;
            }
          } else {
            load_or(offset_or_null(v0, i0), v_init, vpb, n);
            load_or(offset_or_null(lr0, i0), S(0), lpb, n);
          }
          const S* xt = x + t * xst + i0;
          if (LM == LM_PR) {
  MS_SIMD for (int i = 0; i < n; ++i) ale[i] += gmb[i] * vpb[i];
}
          if (LM == LM_PRN) {
  MS_SIMD for (int i = 0; i < n; ++i) ale[i] += gmb[i] * (vpb[i] + lpb[i]);
}
          if (LM == LM_DI) {
  MS_SIMD for (int i = 0; i < n; ++i) ata[i] -= gmb[i] * (xt[i] - (vpb[i] - vr0)) * inv_tau2;
}
          if (LM == LM_DS) {
  MS_SIMD for (int i = 0; i < n; ++i) ata[i] += gmb[i] * (vpb[i] - vr0) * inv_tau2;
}
        }
      }
      if (gv0) {
  MS_SIMD for (int i = 0; i < n; ++i) gv0[i0 + i] = gv[i];
}
      if (glr0) {
  MS_SIMD for (int i = 0; i < n; ++i) glr0[i0 + i] = LM == LM_PRN ? glr[i] : S(0);
}
      double s0 = 0.0, s1 = 0.0, s2 = 0.0;
      // per-block sums of the parameter gradients: tolerance-checked, so a vectorised reassociation is fine
#pragma omp simd reduction(+:s0, s1, s2)
      for (int i = 0; i < n; ++i) { s0 += (double)ath[i]; s1 += (double)ale[i]; s2 += (double)ata[i]; }
      partial[(size_t)b * 3 + 0] = s0;
      partial[(size_t)b * 3 + 1] = s1;
      partial[(size_t)b * 3 + 2] = s2;
    }
  }
  double tot[3] = {0.0, 0.0, 0.0};
  for (int64_t b = 0; b < nblocks; ++b)
    for (int k = 0; k < 3; ++k) tot[k] += partial[(size_t)b * 3 + k];
  for (int k = 0; k < 3; ++k) pgrad[k] = tot[k];
}

template <typename S, int NORM>
static int fwd_dispatch_n(const void* x, int64_t T, int64_t N, int64_t xst, void* y, int64_t yst, const void* v0,
                          const void* lr0, void* vT, void* lrT, const Cfg& c, int nth) {
#define MS_FWD_ARGS (const S*)x, T, N, xst, (S*)y, yst, (const S*)v0, (const S*)lr0, (S*)vT, (S*)lrT, c, nth
  switch (c.leak_mode) {
    case LM_PR: lif_fwd<S, LM_PR, NORM>(MS_FWD_ARGS); break;
    case LM_PRN: lif_fwd<S, LM_PRN, NORM>(MS_FWD_ARGS); break;
    case LM_DI: lif_fwd<S, LM_DI, NORM>(MS_FWD_ARGS); break;
    case LM_DS: lif_fwd<S, LM_DS, NORM>(MS_FWD_ARGS); break;
    default: return 2;
  }
#undef MS_FWD_ARGS
  return 0;
}

template <typename S>
static int fwd_dispatch(const void* x, int64_t T, int64_t N, int64_t xst, void* y, int64_t yst, const void* v0,
                        const void* lr0, void* vT, void* lrT, const Cfg& c, int nth) {
  return c.normalized ? fwd_dispatch_n<S, 1>(x, T, N, xst, y, yst, v0, lr0, vT, lrT, c, nth)
                      : fwd_dispatch_n<S, 0>(x, T, N, xst, y, yst, v0, lr0, vT, lrT, c, nth);
}

template <typename S, int LM, int NORM>
static void lif_bwd_sk(const S* x, int64_t T, int64_t N, int64_t xst, const S* gy, int64_t gyst, const S* v0,
                       const S* lr0, const S* gvT, const S* glrT, S* gx, int64_t gxst, S* gv0, S* glr0, double* pg,
                       const Cfg& c, int nth) {
#define MS_SK_ARGS x, T, N, xst, gy, gyst, v0, lr0, gvT, glrT, gx, gxst, gv0, glr0, pg, c, nth
  switch (c.surr_kind) {
    case SK_SIGMOID: lif_bwd<S, LM, NORM, SK_SIGMOID>(MS_SK_ARGS); break;
    case SK_ATAN: lif_bwd<S, LM, NORM, SK_ATAN>(MS_SK_ARGS); break;
    case SK_RECT: lif_bwd<S, LM, NORM, SK_RECT>(MS_SK_ARGS); break;
    default: lif_bwd<S, LM, NORM, SK_TRI>(MS_SK_ARGS); break;
  }
#undef MS_SK_ARGS
}

template <typename S, int NORM>
static int bwd_dispatch_n(const void* x, int64_t T, int64_t N, int64_t xst, const void* gy, int64_t gyst,
                          const void* v0, const void* lr0, const void* gvT, const void* glrT, void* gx, int64_t gxst,
                          void* gv0, void* glr0, double* pg, const Cfg& c, int nth) {
#define MS_BWD_ARGS (const S*)x, T, N, xst, (const S*)gy, gyst, (const S*)v0, (const S*)lr0, (const S*)gvT, \
                    (const S*)glrT, (S*)gx, gxst, (S*)gv0, (S*)glr0, pg, c, nth
  switch (c.leak_mode) {
    case LM_PR: lif_bwd_sk<S, LM_PR, NORM>(MS_BWD_ARGS); break;
    case LM_PRN: lif_bwd_sk<S, LM_PRN, NORM>(MS_BWD_ARGS); break;
    case LM_DI: lif_bwd_sk<S, LM_DI, NORM>(MS_BWD_ARGS); break;
    case LM_DS: lif_bwd_sk<S, LM_DS, NORM>(MS_BWD_ARGS); break;
    default: return 2;
  }
#undef MS_BWD_ARGS
  return 0;
}

template <typename S>
static int bwd_dispatch(const void* x, int64_t T, int64_t N, int64_t xst, const void* gy, int64_t gyst,
                        const void* v0, const void* lr0, const void* gvT, const void* glrT, void* gx, int64_t gxst,
                        void* gv0, void* glr0, double* pg, const Cfg& c, int nth) {
  if (c.surr_kind < 0 || c.surr_kind > 3) return 3;
  return c.normalized
             ? bwd_dispatch_n<S, 1>(x, T, N, xst, gy, gyst, v0, lr0, gvT, glrT, gx, gxst, gv0, glr0, pg, c, nth)
             : bwd_dispatch_n<S, 0>(x, T, N, xst, gy, gyst, v0, lr0, gvT, glrT, gx, gxst, gv0, glr0, pg, c, nth);
}

}  // namespace ms

extern "C" {

int ms_abi_version() { return 1; }

// dtype: 0 = float32, 1 = float64. Element (t, i) of a sequence is at base[t * stride_t + i].
int ms_lif_forward(int dtype, const void* x, int64_t T, int64_t N, int64_t xst, void* y, int64_t yst,
                   const void* v0, const void* lr0, void* vT, void* lrT, const double* fp, const int64_t* ip,
                   int nthreads) {
  ms::Cfg c = ms::read_cfg(fp, ip);
  if (dtype == 0) return ms::fwd_dispatch<float>(x, T, N, xst, y, yst, v0, lr0, vT, lrT, c, nthreads);
  if (dtype == 1) return ms::fwd_dispatch<double>(x, T, N, xst, y, yst, v0, lr0, vT, lrT, c, nthreads);
  return 1;
}

int ms_lif_backward(int dtype, const void* x, int64_t T, int64_t N, int64_t xst, const void* gy, int64_t gyst,
                    const void* v0, const void* lr0, const void* gvT, const void* glrT, void* gx, int64_t gxst,
                    void* gv0, void* glr0, double* pgrad, const double* fp, const int64_t* ip, int nthreads) {
  ms::Cfg c = ms::read_cfg(fp, ip);
  if (dtype == 0)
    return ms::bwd_dispatch<float>(x, T, N, xst, gy, gyst, v0, lr0, gvT, glrT, gx, gxst, gv0, glr0, pgrad, c, nthreads);
  if (dtype == 1)
    return ms::bwd_dispatch<double>(x, T, N, xst, gy, gyst, v0, lr0, gvT, glrT, gx, gxst, gv0, glr0, pgrad, c, nthreads);
  return 1;
}

}  // extern "C"
"""
