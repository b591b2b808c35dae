// Fused IF/LIF kernels: multispike.neurons.lif_multistep (kernel family "lif", backend "cpp").
// ms-build-units: 4
// (multispike.kernels._build: this file's backward instantiations - about 37 of the library's 43 s of compile time,
// one core - are compiled in 4 more translation units beside the main one; see "Build units" at the end.)
#include "ms_common.h"

namespace ms {
// one namespace per family: _build compiles all sources as one translation unit (plus the build units below)
namespace lif {

// Leak placements: post_reset with reset_leak, post_reset without (DIET/M-LIF paper form), decay_input,
// decay_state.
enum { LM_PR = 0, LM_PRN = 1, LM_DI = 2, LM_DS = 3 };

// One membrane charge m(t) from the post-reset state (exactly the reference's expression for each mode).
template <typename S, int LM>
inline S charge(S v, S lr, S x, S leak, S tau, S vr0) {
  if (LM == LM_PR) return leak * v + x;
  if (LM == LM_PRN) return leak * (v + lr) + x - lr;
  if (LM == LM_DI) return v + (x - (v - vr0)) / tau;
  return v - (v - vr0) / tau + x;
}

// The surrogate form is a template parameter: a runtime select would compute the (slow, vector) division of the
// normalised form on every element even in the difference form (measured: two thirds of the backward time).
template <int NORM, typename S>
inline S spike_arg(S m, S theta) {
  if (NORM) return m / theta - S(1);
  return m - theta;
}

template <typename S>
inline S fire(S arg, int fire_ge) {
  return fire_ge ? (arg >= S(0) ? S(1) : S(0)) : (arg > S(0) ? S(1) : S(0));
}

template <typename S>
inline S after_reset(S m, S s, S theta, S v_reset, int soft) {
  return soft ? m - theta * s : m * (S(1) - s) + v_reset * s;
}

// The scalar parameters in the element type.
template <typename S, int LM>
struct Consts {
  S theta, leak, tau, vr0, v_reset, v_init;  // vr0 = v_reset: the host passes 0 for a soft reset
  int soft, fire_ge;
  explicit Consts(const LifArgs& c)
      : theta((S)c.theta), leak((S)c.leak), tau((S)c.tau), vr0((S)c.v_reset), v_reset((S)c.v_reset),
        v_init(S(0) + (S)c.v_init),
        // reset_leak=False (LM_PRN) implies a soft reset; a compile-time constant keeps that loop simple enough
        // to vectorise.
        soft(LM == LM_PRN ? 1 : c.soft), fire_ge(c.fire_ge) {}
};

// One forward step of a block: the charge, fire and reset of the reference. Returns the spike; m, v, lr updated.
template <typename S, int LM, int NORM>
inline S step(const Consts<S, LM>& k, S& v, S& lr, S x, S& m) {
  m = charge<S, LM>(v, lr, x, k.leak, k.tau, k.vr0);
  const S s = fire(spike_arg<NORM>(m, k.theta), k.fire_ge);
  if (LM == LM_PRN) lr = k.theta * s;
  v = after_reset(m, s, k.theta, k.v_reset, k.soft);
  return s;
}

// ---------------------------------------------------------------------------------------------- forward
// One forward step of a block with the reset form (SOFT) and the firing comparison (GE) as compile-time constants.
// With them as runtime selects the SIMD loop computes both reset forms and both comparisons and blends (20 AVX-512
// instructions per 16 elements, measured ~3x a copy of the same bytes when cache-resident, so the forward was
// bound by instructions, not by memory). Same IEEE operations in the same order as step(): bit-identical.
template <typename S, int LM, int NORM, int SOFT, int GE>
MS_INLINE inline void fwd_step(const Consts<S, LM>& k, const S* MS_R xt, S* MS_R yt, S* MS_R v, S* MS_R lr, int n,
                               int pth) {
  const S theta = k.theta, leak = k.leak, tau = k.tau, vr0 = k.vr0, v_reset = k.v_reset;
  if (pth) {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S m = charge<S, LM>(v[i], lr[i], xt[i], leak, tau, vr0);
      const S arg = spike_arg<NORM>(m, theta);
      const S s = GE ? (arg >= S(0) ? S(1) : S(0)) : (arg > S(0) ? S(1) : S(0));
      if (LM == LM_PRN) lr[i] = theta * s;
      v[i] = SOFT ? m - theta * s : m * (S(1) - s) + v_reset * s;
      yt[i] = theta * s;
    }
  } else {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S m = charge<S, LM>(v[i], lr[i], xt[i], leak, tau, vr0);
      const S arg = spike_arg<NORM>(m, theta);
      const S s = GE ? (arg >= S(0) ? S(1) : S(0)) : (arg > S(0) ? S(1) : S(0));
      if (LM == LM_PRN) lr[i] = theta * s;
      v[i] = SOFT ? m - theta * s : m * (S(1) - s) + v_reset * s;
      yt[i] = s;
    }
  }
}

template <typename S, int LM, int NORM, int BS>
void lif_fwd_bs(const Seq<S>& q, const LifArgs& c) {
  state_forward<S, BS, LM == LM_PRN>(q, S(0) + (S)c.v_init,
                                       [&](const S* MS_R xt, S* MS_R yt, S* MS_R v, S* MS_R lr, int n) MS_INLINE {
    // the constants are locals here (not captured): the compiler keeps them in registers across the stores
    const Consts<S, LM> k(c);
    const int pth = c.payload_theta;
    // reset_leak=False (LM_PRN) implies a soft reset (Consts): its hard-reset loops would be dead code
    if (k.soft || LM == LM_PRN) {
      if (k.fire_ge) fwd_step<S, LM, NORM, 1, 1>(k, xt, yt, v, lr, n, pth);
      else fwd_step<S, LM, NORM, 1, 0>(k, xt, yt, v, lr, n, pth);
    } else {
      if (k.fire_ge) fwd_step<S, LM, NORM, 0, 1>(k, xt, yt, v, lr, n, pth);
      else fwd_step<S, LM, NORM, 0, 0>(k, xt, yt, v, lr, n, pth);
    }
  });
}

// Block length by T (measured, benchmarks/perf_goals.py shapes and others, one thread, 4-32 MiB inputs): for T <= 5
// rows of 256 elements ran 1.3-1.9x faster than 4096 (T = 2: 0.55 vs 0.80 ms, T = 3: 0.71 vs 1.37, T = 4: 1.2 vs
// 2.1 on [T,32,128,16,16]); from T = 6 on the long rows win again (T = 8: 4.7 vs 5.1-5.9 ms). The T rows of x and y
// a block touches lie N elements apart - usually a multiple of 4 KiB, so they share L1 sets - and short rows keep
// the few lines in flight per set; with many rows (2T streams) the prefetchers' long streams matter more.
template <typename S, int LM, int NORM>
void lif_fwd(const Seq<S>& q, const LifArgs& c) {
  if (q.T <= 5) lif_fwd_bs<S, LM, NORM, 256>(q, c);
  else lif_fwd_bs<S, LM, NORM, 4096>(q, c);
}

// ---------------------------------------------------------------------------------------------- backward
// Per block (state_backward): recompute m(t) for all t into the scratch, then run the adjoint backwards. Parameter
// gradients are summed per element over t, then per block in double (backward_blocks sums the blocks in order).
// This general form (reset form, firing comparison as runtime selects) serves the calls with parameter gradients;
// lif_bwd_plain below the calls without.
template <typename S, int LM, int NORM, int SK>
void lif_bwd_params(const Seq<S>& q, const LifArgs& c) {
  backward_blocks<S>(q.T, q.N, q.nthreads, STATE_ROWS + 4, 3, q.pgrad,
                     [&](int64_t i0, int n, int BS, S* M, S* work, double* part) {
    const Consts<S, LM> k(c);
    const S theta = k.theta, leak = k.leak, vr0 = k.vr0, v_reset = k.v_reset;
    const S sp0 = (S)c.sp0, sp1 = (S)c.sp1;
    const int soft = k.soft, pth = c.payload_theta, detach = c.detach_reset;
    const int need_leak = c.need_leak && (LM == LM_PR || LM == LM_PRN);
    const int need_tau = c.need_tau && (LM == LM_DI || LM == LM_DS);
    const S inv_tau = S(1) / k.tau, one_m_inv_tau = S(1) - S(1) / k.tau, inv_tau2 = S(1) / (k.tau * k.tau);
    const S inv_theta = S(1) / theta, inv_theta2 = S(1) / (theta * theta);
    // the parameter-gradient accumulators (theta, leak, tau) and gm(t) of the current step
    S* MS_R ath = work + STATE_ROWS * BS;
    S* MS_R ale = ath + BS;
    S* MS_R ata = ale + BS;
    S* MS_R gmb = ata + BS;
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      ath[i] = S(0); ale[i] = S(0); ata[i] = S(0);
    }
    state_backward<S, LM == LM_PRN>(q, i0, n, BS, M, work, k.v_init, need_leak || need_tau,
        [&](const S* MS_R xt, S* MS_R v, S* MS_R lr, S* MS_R Mt, int n) MS_INLINE {  // the forward's step
          MS_SIMD
          for (int i = 0; i < n; ++i) step<S, LM, NORM>(k, v[i], lr[i], xt[i], Mt[i]);
        },
        [&](const S* MS_R Mt, const S* MS_R gyt, S* MS_R gxt, S* MS_R gv, S* MS_R glr, int n) MS_INLINE {
          // Adjoint step: one branch-free SIMD pass (the surrogate kind is a template parameter; the other flags
          // are loop-invariant selects).
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            const S m = Mt[i];
            const S arg = spike_arg<NORM>(m, theta);
            const S s = fire(arg, k.fire_ge);
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
            gxt[i] = LM == LM_DI ? gm * inv_tau : gm;
            gv[i] = (LM == LM_PR || LM == LM_PRN) ? gm * leak : gm * one_m_inv_tau;
            if (LM == LM_PRN) glr[i] = gm * (leak - S(1));
          }
        },
        [&](const S* MS_R Mp, S* MS_R vp, S* MS_R lp, int n) MS_INLINE {  // v(t-1), lr(t-1) for the leak/tau gradients
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            const S mp = Mp[i];
            const S sp = fire(spike_arg<NORM>(mp, theta), k.fire_ge);
            vp[i] = after_reset(mp, sp, theta, v_reset, soft);
            lp[i] = theta * sp;
          }
        },
        [&](const S* MS_R xt, const S* MS_R vp, const S* MS_R lp, int n) MS_INLINE {
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            if (LM == LM_PR) ale[i] += gmb[i] * vp[i];
            if (LM == LM_PRN) ale[i] += gmb[i] * (vp[i] + lp[i]);
            if (LM == LM_DI) ata[i] -= gmb[i] * (xt[i] - (vp[i] - vr0)) * inv_tau2;
            if (LM == LM_DS) ata[i] += gmb[i] * (vp[i] - vr0) * inv_tau2;
          }
        });
    part[0] = row_sum(ath, n);
    part[1] = row_sum(ale, n);
    part[2] = row_sum(ata, n);
  });
}

// Backward without parameter gradients (the usual case: fixed θ, λ, τ), with the reset form (SOFT) and the firing
// comparison (GE) as compile-time constants like the forward. The general form computes both reset forms, both
// comparisons, the θ-gradient chain and its accumulator row for every element and blends; here only the adjoint
// itself is left. The recompute is the forward's loop (fwd_step's expressions: the same spikes) storing m(t), and
// the adjoint performs the general form's IEEE operations in the same order, so the gradients are unchanged.
template <typename S, int LM, int NORM, int SK, int SOFT, int GE>
void lif_bwd_plain(const Seq<S>& q, const LifArgs& c) {
  backward_blocks<S>(q.T, q.N, q.nthreads, STATE_ROWS, 3, q.pgrad,
                     [&](int64_t i0, int n, int BS, S* M, S* work, double* part) {
    const Consts<S, LM> k(c);
    const S theta = k.theta, leak = k.leak, tau = k.tau, vr0 = k.vr0, v_reset = k.v_reset;
    const S sp0 = (S)c.sp0, sp1 = (S)c.sp1;
    const int detach = c.detach_reset;
    // payload θ·s: gs = g_y·θ; a spike payload multiplies by exactly 1 (g_y·1 == g_y), one mul instead of a select
    const S gscale = c.payload_theta ? theta : S(1);
    const S inv_tau = S(1) / k.tau, one_m_inv_tau = S(1) - S(1) / k.tau;
    const S inv_theta = S(1) / theta;
    const S gv_mul = (LM == LM_PR || LM == LM_PRN) ? leak : one_m_inv_tau;
    state_backward<S, LM == LM_PRN>(q, i0, n, BS, M, work, k.v_init, false,
        [&](const S* MS_R xt, S* MS_R v, S* MS_R lr, S* MS_R Mt, int n) MS_INLINE {
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            const S m = charge<S, LM>(v[i], lr[i], xt[i], leak, tau, vr0);
            const S arg = spike_arg<NORM>(m, theta);
            const S s = GE ? (arg >= S(0) ? S(1) : S(0)) : (arg > S(0) ? S(1) : S(0));
            if (LM == LM_PRN) lr[i] = theta * s;
            v[i] = SOFT ? m - theta * s : m * (S(1) - s) + v_reset * s;
            Mt[i] = m;
          }
        },
        [&](const S* MS_R Mt, const S* MS_R gyt, S* MS_R gxt, S* MS_R gv, S* MS_R glr, int n) MS_INLINE {
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            const S m = Mt[i];
            const S arg = spike_arg<NORM>(m, theta);
            const S s = GE ? (arg >= S(0) ? S(1) : S(0)) : (arg > S(0) ? S(1) : S(0));
            const S g_v = gv[i];
            S gsr, gm0;
            if (SOFT) {
              gsr = -theta * g_v;
              if (LM == LM_PRN) gsr = gsr + theta * glr[i];
              gm0 = g_v;
            } else {
              gsr = g_v * (v_reset - m);
              gm0 = g_v * (S(1) - s);
            }
            S gs = gyt[i] * gscale;
            gs = detach ? gs : gs + gsr;
            const S garg = gs * surrogate<S, SK>(arg, sp0, sp1);
            const S gm = NORM ? gm0 + garg * inv_theta : gm0 + garg;
            gxt[i] = LM == LM_DI ? gm * inv_tau : gm;
            gv[i] = gm * gv_mul;
            if (LM == LM_PRN) glr[i] = gm * (leak - S(1));
          }
        },
        [&](const S*, S*, S*, int) MS_INLINE {}, [&](const S*, const S*, const S*, int) MS_INLINE {});
    part[0] = part[1] = part[2] = 0.0;
  });
}

template <typename S, int LM, int NORM, int SK>
void lif_bwd(const Seq<S>& q, const LifArgs& c) {
  const bool pgrads = q.pgrad && (c.need_theta || (c.need_leak && (LM == LM_PR || LM == LM_PRN)) ||
                                  (c.need_tau && (LM == LM_DI || LM == LM_DS)));
  if (pgrads) return lif_bwd_params<S, LM, NORM, SK>(q, c);
  // reset_leak=False (LM_PRN) implies a soft reset (Consts): no hard-reset instantiation
  if (c.soft || LM == LM_PRN) {
    if (c.fire_ge) lif_bwd_plain<S, LM, NORM, SK, 1, 1>(q, c);
    else lif_bwd_plain<S, LM, NORM, SK, 1, 0>(q, c);
  } else {
    if (c.fire_ge) lif_bwd_plain<S, LM, NORM, SK, 0, 1>(q, c);
    else lif_bwd_plain<S, LM, NORM, SK, 0, 0>(q, c);
  }
}

// ---------------------------------------------------------------------------------------------- build units
// The library is compiled as one main translation unit (MS_UNIT 0: every family and every entry point) and, for this
// file, 4 more (MS_UNIT 1-4) that hold the backward's instantiations by element type and surrogate form, so that a
// multi-core machine compiles them side by side (multispike.kernels._build runs them in parallel after unit 0).
// The main unit declares them `extern template` (it calls, but does not instantiate them); each build unit defines
// its share by explicit instantiation. Without MS_UNIT (a single-unit build) everything is instantiated here.
#define MS_LIF_BWD_SHARE(X, S, NM)                                                                               \
  X(S, 0, NM, 0) X(S, 0, NM, 1) X(S, 0, NM, 2) X(S, 0, NM, 3) X(S, 1, NM, 0) X(S, 1, NM, 1) X(S, 1, NM, 2)      \
  X(S, 1, NM, 3) X(S, 2, NM, 0) X(S, 2, NM, 1) X(S, 2, NM, 2) X(S, 2, NM, 3) X(S, 3, NM, 0) X(S, 3, NM, 1)      \
  X(S, 3, NM, 2) X(S, 3, NM, 3)
#define MS_LIF_BWD_EXTERN(S, LM, NM, SK) extern template void lif_bwd<S, LM, NM, SK>(const Seq<S>&, const LifArgs&);
#define MS_LIF_BWD_DEFINE(S, LM, NM, SK) template void lif_bwd<S, LM, NM, SK>(const Seq<S>&, const LifArgs&);
#if defined(MS_UNIT) && MS_UNIT == 0
MS_LIF_BWD_SHARE(MS_LIF_BWD_EXTERN, float, 0)
MS_LIF_BWD_SHARE(MS_LIF_BWD_EXTERN, float, 1)
MS_LIF_BWD_SHARE(MS_LIF_BWD_EXTERN, double, 0)
MS_LIF_BWD_SHARE(MS_LIF_BWD_EXTERN, double, 1)
#elif defined(MS_UNIT) && MS_UNIT == 1
MS_LIF_BWD_SHARE(MS_LIF_BWD_DEFINE, float, 0)
#elif defined(MS_UNIT) && MS_UNIT == 2
MS_LIF_BWD_SHARE(MS_LIF_BWD_DEFINE, float, 1)
#elif defined(MS_UNIT) && MS_UNIT == 3
MS_LIF_BWD_SHARE(MS_LIF_BWD_DEFINE, double, 0)
#elif defined(MS_UNIT) && MS_UNIT == 4
MS_LIF_BWD_SHARE(MS_LIF_BWD_DEFINE, double, 1)
#elif defined(MS_UNIT)
#error "lif.cpp: MS_UNIT must be 0-4 (ms-build-units: 4)"
#endif

}  // namespace lif
}  // namespace ms

#if !defined(MS_UNIT) || MS_UNIT == 0
extern "C" {

int ms_lif_forward(const LifArgs* a) {
  return ms::with_dtype(a->io.dtype, [&](auto s) {
    using S = decltype(s);
    const ms::Seq<S> q(a->io);
    return ms::select<0, 1, 2, 3>(a->leak_mode, [&](auto lm) {
      ms::select<0, 1>(a->normalized, [&](auto nm) { ms::lif::lif_fwd<S, lm(), nm()>(q, *a); });
    });
  });
}

int ms_lif_backward(const LifArgs* a) {
  if (a->surr_kind < 0 || a->surr_kind > 3) return 3;
  return ms::with_dtype(a->io.dtype, [&](auto s) {
    using S = decltype(s);
    const ms::Seq<S> q(a->io);
    return ms::select<0, 1, 2, 3>(a->leak_mode, [&](auto lm) {
      ms::select<0, 1>(a->normalized, [&](auto nm) {
        ms::select<0, 1, 2, 3>(a->surr_kind, [&](auto sk) { ms::lif::lif_bwd<S, lm(), nm(), sk()>(q, *a); });
      });
    });
  });
}

}  // extern "C"
#endif  // the entry points: main unit only
