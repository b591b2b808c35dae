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

// The bit layout of the element type: lane_payload reads the binary exponent of r.
template <typename S>
struct FloatBits;
template <>
struct FloatBits<float> {
  using I = int32_t;
  static constexpr int MANT = 23, BIAS = 127, EMASK = 0xff;
};
template <>
struct FloatBits<double> {
  using I = int64_t;
  static constexpr int MANT = 52, BIAS = 1023, EMASK = 0x7ff;
};

// Merged payload o = sum_s w_s o_s(r) of one element (mlif._lane_sum: the weight unit*2^j of the highest lane edge
// 2^j that r passes; 0 when r does not pass edge 0) and the "any lane fired" indicator f, with no loop over the
// lanes: the edges are powers of two, so the highest edge r passes is r's binary exponent e (r >= 2^e always, and
// r > 2^e unless r is exactly 2^e - a zero mantissa - which the strict comparison of the paper's lane bounds does
// not pass). Edge 0 keeps its own comparison (fire_ge); j is capped at the top lane; an r that fails edge 0
// (negative, below 1, NaN) gives 0 whatever its exponent. This is exactly the reference's comparisons: r > 1 is a
// normal or infinite number (exponent 128 / 1024: capped), and unit*2^j is a power of two inside the range (the plan
// runs at most 64 lanes fused), so o is bit-identical to the weight the reference selects. One pass per element
// instead of one per lane edge (measured: the S passes dominated the forward and were repeated twice in the backward).
template <typename S>
MS_INLINE inline S lane_payload(S r, S unit, int fire_ge, int floor_b, int top, S& fired) {
  using B = FloatBits<S>;
  using I = typename B::I;
  const S a_ge = r >= S(1) ? S(1) : S(0), a_gt = r > S(1) ? S(1) : S(0);
  const S a0 = fire_ge ? a_ge : a_gt;
  I bits;
  std::memcpy(&bits, &r, sizeof(S));
  const I e = ((bits >> B::MANT) & I(B::EMASK)) - I(B::BIAS);
  const I exact = (bits & ((I(1) << B::MANT) - 1)) == I(0) ? I(1) : I(0);
  I j = floor_b ? e : e - exact;
  j = j < I(0) ? I(0) : j;
  j = j > I(top) ? I(top) : j;
  const I pbits = (j + I(B::BIAS)) << B::MANT;
  S p2j;
  std::memcpy(&p2j, &pbits, sizeof(S));
  fired = a0;
  return a0 * (unit * p2j);
}

// One time step of a block in one pass: charge m, fire at r = m / theta_e, reset v (and lr in the paper form). The
// forward (REC = 0) writes the payload to y; the backward's recomputation (REC = 1) writes m and r of the step to
// its scratch rows instead.
template <typename S, int CM, int REC>
MS_INLINE inline void step_block(const S* MS_R x, S* MS_R v, S* MS_R lr, S* MS_R y, S* MS_R m_out, S* MS_R r_out,
                                 int n, const MlifArgs& c) {
  const S theta = (S)c.theta, theta_e = (S)c.theta_e, leak = (S)c.leak, oml = (S)c.oml, unit = (S)c.unit;
  const int soft = CM == CM_PAPER ? 1 : c.soft, fire_ge = c.fire_ge, floor_b = c.floor_bounds, top = c.lanes - 1;
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    const S mi = charge<S, CM>(v[i], lr[i], x[i], leak, oml);
    const S ri = mi / theta_e;
    S f;
    const S o = lane_payload<S>(ri, unit, fire_ge, floor_b, top, f);
    const S reset = theta * o;
    const S v_soft = mi - reset, v_hard = mi * (S(1) - f);
    v[i] = soft ? v_soft : v_hard;
    if (CM == CM_PAPER) lr[i] = reset;
    if (REC) {
      m_out[i] = mi;
      r_out[i] = ri;
    } else {
      y[i] = o;
    }
  }
}

// The lanes and the window derivatives of a block (backward): o and f as lane_payload, D_o = sum_k c_k phi_k(r)
// (payload weights unit*2^k) and D_f likewise with unit weights (the hard reset's "fired" indicator; DF = 0 skips it
// where it is unused), phi_k(r) = h'(r - 2^k) (unscaled) or h'(r 2^-k - 1) 2^-k, c_0 = w_0, c_k = w_k + sign*w_{k-1}:
// the reference's per-lane sum (mlif._window_grad) in its order, one pass per lane edge.
template <typename S, int SK, int DF>
void lanes_windows_sk(const S* MS_R r, S* MS_R o, S* MS_R f, S* MS_R Do, S* MS_R Df, int n, const MlifArgs& c) {
  const S unit = (S)c.unit, p0 = (S)c.sp0, p1 = (S)c.sp1;
  const int fire_ge = c.fire_ge, floor_b = c.floor_bounds, top = c.lanes - 1;
  {  // edge 0, with the payload
    const S co = (S)c.unit, cf = S(1);
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S ri = r[i];
      const S h = surrogate<S, SK>(ri - S(1), p0, p1);  // r - 2^0 and r 2^-0 - 1 alike
      S fi;
      o[i] = lane_payload<S>(ri, unit, fire_ge, floor_b, top, fi);
      f[i] = fi;
      Do[i] = S(0) + co * h;
      if (DF) Df[i] = S(0) + cf * h;
    }
  }
  for (int k = 1; k < c.lanes; ++k) {
    const double wk = c.unit * std::ldexp(1.0, k), wk1 = c.unit * std::ldexp(1.0, k - 1);
    const S co = (S)(wk + c.sign * wk1);
    const S cf = (S)(1.0 + c.sign);
    const S edge = (S)std::ldexp(1.0, k), sc = (S)std::ldexp(1.0, -k);
    if (c.unscaled) {
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        const S h = surrogate<S, SK>(r[i] - edge, p0, p1);
        Do[i] += co * h;
        if (DF) Df[i] += cf * h;
      }
    } else {
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        const S h = surrogate<S, SK>(r[i] * sc - S(1), p0, p1) * sc;
        Do[i] += co * h;
        if (DF) Df[i] += cf * h;
      }
    }
  }
}

template <typename S>
void lanes_windows(const S* MS_R r, S* MS_R o, S* MS_R f, S* MS_R Do, S* MS_R Df, int n, const MlifArgs& c,
                   int need_df) {
  // the surrogate kind is chosen once per call (not per element), outside the vectorised loops
  select<0, 1, 2, 3>(c.surr_kind, [&](auto sk) {
    if (need_df) lanes_windows_sk<S, sk(), 1>(r, o, f, Do, Df, n, c);
    else lanes_windows_sk<S, sk(), 0>(r, o, f, Do, Df, n, c);
  });
}

// ---------------------------------------------------------------------------------------------- forward
template <typename S, int CM, int BS>
void mlif_fwd_bs(const Seq<S>& q, const MlifArgs& c) {
  state_forward<S, BS, CM == CM_PAPER>(q, S(0) + (S)c.v_init,
                                       [&](const S* MS_R xt, S* MS_R yt, S* MS_R v, S* MS_R lr, int n) MS_INLINE {
    step_block<S, CM, 0>(xt, v, lr, yt, nullptr, nullptr, n, c);
  });
}

// Block length by T as in lif_fwd (measured, [T,32,128,16,16], one thread, before the one-pass step): 256 elements
// ran 1.2-1.8x faster than 2048 at T = 2 and 4; at T = 8 the long rows stayed ahead (13.4-14.3 against 14.7-15.3 ms).
template <typename S, int CM>
void mlif_fwd(const Seq<S>& q, const MlifArgs& c) {
  if (q.T <= 4) mlif_fwd_bs<S, CM, 256>(q, c);
  else mlif_fwd_bs<S, CM, 2048>(q, c);
}

// ---------------------------------------------------------------------------------------------- backward
// The recomputation keeps r(t) = m(t) / theta_e of every step beside m(t) (T more work rows): the adjoint and the
// leak gradient's previous state reuse it instead of dividing again.
template <typename S, int CM>
void mlif_bwd(const Seq<S>& q, const MlifArgs& c) {
  constexpr int OWN_ROWS = 7;
  backward_blocks<S>(q.T, q.N, q.nthreads, STATE_ROWS + OWN_ROWS + (int)q.T, 2, q.pgrad,
                     [&](int64_t i0, int n, int BS, S* M, S* work, double* part) {
    constexpr int PF = CM == CM_PAPER;
    const S theta = (S)c.theta, theta_e = (S)c.theta_e, leak = (S)c.leak, oml = (S)c.oml, unit = (S)c.unit;
    const int soft = PF ? 1 : c.soft, detach = c.detach_reset;
    const int fire_ge = c.fire_ge, floor_b = c.floor_bounds, top = c.lanes - 1;
    const S inv_te = S(1) / theta_e;
    // d theta_e / d theta = unit (scaled) or 1; folded into the theta-gradient factor
    const S dte = (S)(c.theta_e / c.theta);
    const S inv_te2 = S(1) / (theta_e * theta_e);
    // the parameter-gradient accumulators (theta, leak), the lane rows of one step (o, f, D_o, D_f), gm(t), then
    // r(t) of every step
    S* MS_R ath = work + STATE_ROWS * BS;
    S* MS_R ale = ath + BS;
    S* MS_R ob = ale + BS;
    S* MS_R fb = ob + BS;
    S* MS_R Do = fb + BS;
    S* MS_R Df = Do + BS;
    S* MS_R gmb = Df + BS;
    S* const R = work + (STATE_ROWS + OWN_ROWS) * BS;
    // D_f feeds only the hard reset's "fired" term
    const int need_df = !soft && !detach;
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      ath[i] = S(0);
      ale[i] = S(0);
      Df[i] = S(0);  // stays 0 where lanes_windows skips it (a conditional load would stop the adjoint vectorising)
    }
    int64_t t_rec = 0;    // the step the recomputation works on (the lambdas get row pointers, R is indexed by step)
    int64_t t_now = q.T;  // the step the adjoint works on
    state_backward<S, PF>(q, i0, n, BS, M, work, S(0) + (S)c.v_init, c.need_leak,
        [&](const S* MS_R xt, S* MS_R v, S* MS_R lr, S* MS_R Mt, int n) MS_INLINE {  // the forward's step
          step_block<S, CM, 1>(xt, v, lr, nullptr, Mt, R + (t_rec++) * BS, n, c);
        },
        [&](const S* MS_R Mt, const S* MS_R gyt, S* MS_R gxt, S* MS_R gv, S* MS_R glr, int n) MS_INLINE {
          lanes_windows<S>(R + (--t_now) * BS, ob, fb, Do, Df, n, c, need_df);
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
          const S* MS_R rp = R + (t_now - 1) * BS;
          MS_SIMD
          for (int i = 0; i < n; ++i) {
            S f;
            const S reset = theta * lane_payload<S>(rp[i], unit, fire_ge, floor_b, top, f);
            const S v_soft = Mp[i] - reset, v_hard = Mp[i] * (S(1) - f);
            vp[i] = soft ? v_soft : v_hard;
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
