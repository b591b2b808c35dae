// Fused one-hot M-LIF kernels: multispike.neurons.mlif.mlif_multistep (kernel family "mlif", backend "cpp").
#include "ms_common.h"

namespace ms {
// one namespace per family: _build compiles all sources as one translation unit
namespace mlif {

// Charge modes: plain m = b*v + x; paper form m = b*(v + lr) + x - lr; SpikingJelly decay_input
// m = v + (x - v)*(1-b).
enum { CM_PLAIN = 0, CM_PAPER = 1, CM_DECAY = 2 };

template <typename S, int CM>
inline S charge(S v, S lr, S x, S leak, S oml) {
  if (CM == CM_PAPER) return leak * (v + lr) + x - lr;
  if (CM == CM_DECAY) return v + (x - v) * oml;
  return leak * v + x;
}

// Merged payload o = sum_s w_s o_s(r) of the block: the weight of the highest edge passed (mlif._lane_sum), and
// the "any lane fired" indicator f. One vectorised pass per edge.
template <typename S>
void fire_block(const S* MS_R r, S* MS_R o, S* MS_R f, int n, const MlifArgs& c) {
  const S unit = (S)c.unit;
  const int fire_ge = c.fire_ge, floor_b = c.floor_bounds;
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    const S a0 = fire_ge ? (r[i] >= S(1) ? S(1) : S(0)) : (r[i] > S(1) ? S(1) : S(0));
    f[i] = a0;
    o[i] = a0 * unit;
  }
  for (int k = 1; k < c.lanes; ++k) {
    const S edge = (S)std::ldexp(1.0, k);
    const S w = (S)(c.unit * std::ldexp(1.0, k));
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const bool above = floor_b ? (r[i] >= edge) : (r[i] > edge);
      o[i] = above ? w : o[i];
    }
  }
}

// One time step of a block: charge m (into m), fire at r = m / theta_e, reset v (and lr in the paper form); the
// payload goes to o, the fired indicator to f. r, o, f are work rows of the block.
template <typename S, int CM>
void step_block(const S* MS_R x, S* MS_R v, S* MS_R lr, S* MS_R m, S* MS_R r, S* MS_R o, S* MS_R f, int n,
                const MlifArgs& c) {
  const S theta = (S)c.theta, theta_e = (S)c.theta_e, leak = (S)c.leak, oml = (S)c.oml;
  const int soft = CM == CM_PAPER ? 1 : c.soft;
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    const S mi = charge<S, CM>(v[i], lr[i], x[i], leak, oml);
    m[i] = mi;
    r[i] = mi / theta_e;
  }
  fire_block<S>(r, o, f, n, c);
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    const S reset = theta * o[i];
    v[i] = soft ? m[i] - reset : m[i] * (S(1) - f[i]);
    if (CM == CM_PAPER) lr[i] = reset;
  }
}

// One lane-edge term of the window derivatives, fused in one pass: phi_k(r) = h'(r - 2^k) (unscaled) or
// h'(r 2^-k - 1) 2^-k, accumulated into D_o (weight co) and D_f (weight cf).
template <typename S, int SK>
void window_pass(const S* MS_R r, S* MS_R Do, S* MS_R Df, int n, S edge, S sc, S post, S co, S cf, S p0, S p1,
                 int unscaled) {
  if (unscaled) {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S h = surrogate<S, SK>(r[i] - edge, p0, p1);
      Do[i] += co * h;
      Df[i] += cf * h;
    }
  } else {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S h = surrogate<S, SK>(r[i] * sc - S(1), p0, p1) * post;
      Do[i] += co * h;
      Df[i] += cf * h;
    }
  }
}

// Window derivatives of the block: D_o = sum_k c_k phi_k(r) (payload weights unit*2^k), D_f likewise with unit
// weights (the hard reset's "fired" indicator). c_0 = w_0, c_k = w_k + sign * w_{k-1}.
template <typename S>
void windows(const S* MS_R r, S* MS_R Do, S* MS_R Df, int n, const MlifArgs& c) {
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    Do[i] = S(0);
    Df[i] = S(0);
  }
  for (int k = 0; k < c.lanes; ++k) {
    const double wk = c.unit * std::ldexp(1.0, k), wk1 = c.unit * std::ldexp(1.0, k - 1);
    const S co = (S)(k == 0 ? wk : wk + c.sign * wk1);
    const S cf = (S)(k == 0 ? 1.0 : 1.0 + c.sign);
    const S sc = (S)std::ldexp(1.0, -k);
    // the surrogate kind is chosen once per pass (not per element), outside the vectorised loop
    select<0, 1, 2, 3>(c.surr_kind, [&](auto sk) {
      window_pass<S, sk()>(r, Do, Df, n, (S)std::ldexp(1.0, k), sc, k ? sc : S(1), co, cf, (S)c.sp0, (S)c.sp1,
                           c.unscaled);
    });
  }
}

// ---------------------------------------------------------------------------------------------- forward
template <typename S, int CM, int BS>
void mlif_fwd_bs(const Seq<S>& q, const MlifArgs& c) {
  state_forward<S, BS, CM == CM_PAPER>(q, S(0) + (S)c.v_init,
                                       [&](const S* MS_R xt, S* MS_R yt, S* MS_R v, S* MS_R lr, int n) MS_INLINE {
    S m[BS], r[BS], f[BS];
    step_block<S, CM>(xt, v, lr, m, r, yt, f, n, c);  // the payload o is written straight into y(t)
  });
}

// Block length by T as in lif_fwd (measured, [T,32,128,16,16], one thread): 256 elements ran 1.2-1.8x faster than
// 2048 at T = 2 and 4; at T = 8 the long rows stay ahead (13.4-14.3 against 14.7-15.3 ms).
template <typename S, int CM>
void mlif_fwd(const Seq<S>& q, const MlifArgs& c) {
  if (q.T <= 4) mlif_fwd_bs<S, CM, 256>(q, c);
  else mlif_fwd_bs<S, CM, 2048>(q, c);
}

// ---------------------------------------------------------------------------------------------- backward
template <typename S, int CM>
void mlif_bwd(const Seq<S>& q, const MlifArgs& c) {
  backward_blocks<S>(q.T, q.N, q.nthreads, STATE_ROWS + 8, 2, q.pgrad,
                     [&](int64_t i0, int n, int BS, S* M, S* work, double* part) {
    constexpr int PF = CM == CM_PAPER;
    const S theta = (S)c.theta, theta_e = (S)c.theta_e, leak = (S)c.leak, oml = (S)c.oml;
    const int soft = PF ? 1 : c.soft, detach = c.detach_reset;
    const S inv_te = S(1) / theta_e;
    // d theta_e / d theta = unit (scaled) or 1; folded into the theta-gradient factor
    const S dte = (S)(c.theta_e / c.theta);
    const S inv_te2 = S(1) / (theta_e * theta_e);
    // the parameter-gradient accumulators (theta, leak), the lane rows of one step (r, o, f, D_o, D_f), gm(t)
    S* MS_R ath = work + STATE_ROWS * BS;
    S* MS_R ale = ath + BS;
    S* MS_R rb = ale + BS;
    S* MS_R ob = rb + BS;
    S* MS_R fb = ob + BS;
    S* MS_R Do = fb + BS;
    S* MS_R Df = Do + BS;
    S* MS_R gmb = Df + BS;
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      ath[i] = S(0);
      ale[i] = S(0);
    }
    state_backward<S, PF>(q, i0, n, BS, M, work, S(0) + (S)c.v_init, c.need_leak,
        [&](const S* MS_R xt, S* MS_R v, S* MS_R lr, S* MS_R Mt, int n) MS_INLINE {  // the forward's step
          step_block<S, CM>(xt, v, lr, Mt, rb, ob, fb, n, c);
        },
        [&](const S* MS_R Mt, const S* MS_R gyt, S* MS_R gxt, S* MS_R gv, S* MS_R glr, int n) MS_INLINE {
          MS_SIMD
          for (int i = 0; i < n; ++i) rb[i] = Mt[i] / theta_e;
          fire_block<S>(rb, ob, fb, n, c);
          windows<S>(rb, Do, Df, n, c);
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            const S m = Mt[i];
            const S o = ob[i], f = fb[i];
            const S g_v = gv[i];
            const S g_y = gyt[i];
            // Branch-free (both resets computed, then selected): with a runtime `soft` the if/else form was not
            // vectorised at all (GCC 12: "no vectype"), only the paper form, where soft is a constant, was.
            S gor = -theta * g_v;
            S gth_soft = -o * g_v;
            if (PF) {
              gor = gor + theta * glr[i];
              gth_soft = gth_soft + o * glr[i];
            }
            const S go_soft = detach ? g_y : g_y + gor;
            const S gf_hard = detach ? S(0) : -m * g_v;
            S gm = soft ? g_v : g_v * (S(1) - f);
            const S go = soft ? go_soft : g_y;
            const S gf = soft ? S(0) : gf_hard;
            S gth = soft ? gth_soft : S(0);
            const S gr = go * Do[i] + gf * Df[i];
            gm = gm + gr * inv_te;
            gth = gth - gr * m * inv_te2 * dte;
            ath[i] += gth;
            gxt[i] = CM == CM_DECAY ? gm * oml : gm;
            gv[i] = CM == CM_DECAY ? gm * (S(1) - oml) : gm * leak;
            if (PF) glr[i] = gm * (leak - S(1));
            gmb[i] = gm;
          }
        },
        [&](const S* MS_R Mp, S* MS_R vp, S* MS_R lp, int n) MS_INLINE {  // v(t-1), lr(t-1) for the leak gradient
          MS_SIMD
          for (int i = 0; i < n; ++i) rb[i] = Mp[i] / theta_e;
          fire_block<S>(rb, ob, fb, n, c);
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            const S reset = theta * ob[i];
            vp[i] = soft ? Mp[i] - reset : Mp[i] * (S(1) - fb[i]);
            lp[i] = reset;
          }
        },
        [&](const S* MS_R xt, const S* MS_R vp, const S* MS_R lp, int n) MS_INLINE {
          // dm/dbeta: v(t-1) (plain), v(t-1) + lr(t-1) (paper form), -(x(t) - v(t-1)) (decay_input)
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            if (CM == CM_DECAY) ale[i] -= gmb[i] * (xt[i] - vp[i]);
            else if (PF) ale[i] += gmb[i] * (vp[i] + lp[i]);
            else ale[i] += gmb[i] * vp[i];
          }
        });
    part[0] = row_sum(ath, n);
    part[1] = row_sum(ale, n);
  });
}

}  // namespace mlif
}  // namespace ms

extern "C" {

int ms_mlif_forward(const MlifArgs* a) {
  if (a->lanes < 1) return 2;
  return ms::with_dtype(a->io.dtype, [&](auto s) {
    using S = decltype(s);
    const ms::Seq<S> q(a->io);
    return ms::select<0, 1, 2>(a->charge, [&](auto cm) { ms::mlif::mlif_fwd<S, cm()>(q, *a); });
  });
}

int ms_mlif_backward(const MlifArgs* a) {
  if (a->lanes < 1 || a->surr_kind < 0 || a->surr_kind > 3) return 2;
  return ms::with_dtype(a->io.dtype, [&](auto s) {
    using S = decltype(s);
    const ms::Seq<S> q(a->io);
    return ms::select<0, 1, 2>(a->charge, [&](auto cm) { ms::mlif::mlif_bwd<S, cm()>(q, *a); });
  });
}

}  // extern "C"
