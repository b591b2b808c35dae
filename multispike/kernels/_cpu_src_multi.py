"""C++ source of the fused CPU kernels for the multi-level neurons: one-hot M-LIF and the LM-HT/M-HT level loop.

Appended to :mod:`multispike.kernels._cpu_src_lif` (it reuses its helpers: ``ms_exp``, ``surrogate``, ``load_or``,
``pick_block``, ``pick_threads``, ``MS_R``, ``MS_IVDEP``). The same exactness rules apply: forward expressions
replicate the reference's IEEE operations one by one; the backward recomputes the membrane.
"""

SOURCE = r"""
namespace ms {

// ============================================================================================ one-hot M-LIF
// fp: theta, theta_edge, leak, v_init, unit, sp0, sp1, one_minus_leak (decay_input charge, computed in the leak's dtype)
// ip: charge mode (0 plain, 1 paper form, 2 decay_input), S, floor_bounds, fire_ge, soft, detach, sign (+1/-1), unscaled, surr_kind, need_theta, need_leak
struct MCfg {
  double theta, theta_e, leak, v_init, unit, sp0, sp1, oml;
  int paper, S, floor_b, fire_ge, soft, detach, sign, unscaled, sk, need_theta, need_leak;
};

static MCfg read_mcfg(const double* fp, const int64_t* ip) {
  MCfg c;
  c.theta = fp[0]; c.theta_e = fp[1]; c.leak = fp[2]; c.v_init = fp[3]; c.unit = fp[4]; c.sp0 = fp[5]; c.sp1 = fp[6]; c.oml = fp[7];
  c.paper = (int)ip[0]; c.S = (int)ip[1]; c.floor_b = (int)ip[2]; c.fire_ge = (int)ip[3]; c.soft = (int)ip[4];
  c.detach = (int)ip[5]; c.sign = (int)ip[6]; c.unscaled = (int)ip[7]; c.sk = (int)ip[8];
  c.need_theta = (int)ip[9]; c.need_leak = (int)ip[10];
  return c;
}

// Merged payload o = sum_s w_s o_s(r) of the block: the weight of the highest edge passed (mlif._lane_sum), and
// the "any lane fired" indicator f. One vectorised pass per edge.
template <typename S>
static void mlif_fire_block(const S* MS_R r, S* MS_R o, S* MS_R f, int n, const MCfg& c) {
  const S unit = (S)c.unit;
  const int fire_ge = c.fire_ge, floor_b = c.floor_b;
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    const S a0 = fire_ge ? (r[i] >= S(1) ? S(1) : S(0)) : (r[i] > S(1) ? S(1) : S(0));
    f[i] = a0;
    o[i] = a0 * unit;
  }
  for (int k = 1; k < c.S; ++k) {
    const S edge = (S)std::ldexp(1.0, k);
    const S w = (S)(c.unit * std::ldexp(1.0, k));
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const bool above = floor_b ? (r[i] >= edge) : (r[i] > edge);
      o[i] = above ? w : o[i];
    }
  }
}

// One lane-edge term of the window derivatives, fused in one pass: phi_k(r) = h'(r - 2^k) (unscaled) or
// h'(r 2^-k - 1) 2^-k, accumulated into D_o (weight co) and D_f (weight cf).
template <typename S, int SK>
static void mlif_window_pass_k(const S* MS_R r, S* MS_R Do, S* MS_R Df, int n, S edge, S sc, S post, S co, S cf,
                               S p0, S p1, int unscaled) {
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

template <typename S>
static void mlif_window_pass(const S* MS_R r, S* MS_R Do, S* MS_R Df, int n, S edge, S sc, S post, S co, S cf, S p0,
                             S p1, int unscaled, int sk) {
  switch (sk) {
    case SK_SIGMOID: mlif_window_pass_k<S, SK_SIGMOID>(r, Do, Df, n, edge, sc, post, co, cf, p0, p1, unscaled); break;
    case SK_ATAN: mlif_window_pass_k<S, SK_ATAN>(r, Do, Df, n, edge, sc, post, co, cf, p0, p1, unscaled); break;
    case SK_RECT: mlif_window_pass_k<S, SK_RECT>(r, Do, Df, n, edge, sc, post, co, cf, p0, p1, unscaled); break;
    default: mlif_window_pass_k<S, SK_TRI>(r, Do, Df, n, edge, sc, post, co, cf, p0, p1, unscaled); break;
  }
}

// Charge modes: plain m = b*v + x; paper form m = b*(v + lr) + x - lr; SpikingJelly decay_input m = v + (x - v)*(1-b).
enum { CM_PLAIN = 0, CM_PAPER = 1, CM_DECAY = 2 };

template <typename S, int CM>
static inline S mlif_charge(S v, S lr, S x, S leak, S oml) {
  if (CM == CM_PAPER) return leak * (v + lr) + x - lr;
  if (CM == CM_DECAY) return v + (x - v) * oml;
  return leak * v + x;
}

template <typename S, int CM>
static void mlif_fwd(const S* MS_R x, int64_t T, int64_t N, int64_t xst, S* MS_R y, int64_t yst,
                     const S* MS_R v0, const S* MS_R lr0, S* MS_R vT, S* MS_R lrT, const MCfg& c, int nthreads) {
  const S theta = (S)c.theta, theta_e = (S)c.theta_e, leak = (S)c.leak, oml = (S)c.oml;
  constexpr int PF = CM == CM_PAPER;
  const S v_init = S(0) + (S)c.v_init;
  const int soft = PF ? 1 : c.soft;
  const int BS = 2048;
  const int64_t nblocks = (N + BS - 1) / BS;
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel for schedule(static) num_threads(nth)
  for (int64_t b = 0; b < nblocks; ++b) {
    S v[BS], lr[BS], m[BS], r[BS], o[BS], f[BS];
    const int64_t i0 = b * BS;
    const int n = (int)std::min<int64_t>(BS, N - i0);
    load_or(offset_or_null(v0, i0), v_init, v, n);
    load_or(offset_or_null(lr0, i0), S(0), lr, n);
    for (int64_t t = 0; t < T; ++t) {
      const S* MS_R xt = x + t * xst + i0;
      S* MS_R yt = y + t * yst + i0;
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        const S mi = mlif_charge<S, CM>(v[i], lr[i], xt[i], leak, oml);
        m[i] = mi;
        r[i] = mi / theta_e;
      }
      mlif_fire_block<S>(r, o, f, n, c);
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        const S reset = theta * o[i];
        v[i] = soft ? m[i] - reset : m[i] * (S(1) - f[i]);
        if (PF) lr[i] = reset;
        yt[i] = o[i];
      }
    }
    MS_SIMD
    for (int i = 0; i < n; ++i) vT[i0 + i] = v[i];
    if (PF && lrT)
      MS_SIMD
      for (int i = 0; i < n; ++i) lrT[i0 + i] = lr[i];
  }
}

template <typename S, int CM>
static void mlif_bwd(const S* MS_R x, int64_t T, int64_t N, int64_t xst, const S* MS_R gy, int64_t gyst,
                     const S* MS_R v0, const S* MS_R lr0, const S* MS_R gvT, const S* MS_R glrT, S* MS_R gx,
                     int64_t gxst, S* MS_R gv0, S* MS_R glr0, double* pgrad, const MCfg& c, int nthreads) {
  const S theta = (S)c.theta, theta_e = (S)c.theta_e, leak = (S)c.leak, oml = (S)c.oml;
  constexpr int PF = CM == CM_PAPER;
  const S v_init = S(0) + (S)c.v_init;
  const S sp0 = (S)c.sp0, sp1 = (S)c.sp1;
  const int soft = PF ? 1 : c.soft, detach = c.detach;
  const S inv_te = S(1) / theta_e;
  // d theta_e / d theta = unit (scaled) or 1; folded into the theta-gradient factor
  const S dte = (S)(c.theta_e / c.theta);
  const S inv_te2 = S(1) / (theta_e * theta_e);
  const int BS = pick_block(T, (int)sizeof(S));
  const int64_t nblocks = (N + BS - 1) / BS;
  std::vector<double> partial((size_t)nblocks * 2, 0.0);
  const int nth = pick_threads(N * T, nthreads);
  const int S_ = c.S;
#pragma omp parallel num_threads(nth)
  {
    std::unique_ptr<S[]> M(new S[(size_t)T * BS]);  // scratch, no zero fill
    std::unique_ptr<S[]> buf(new S[(size_t)14 * BS]);
    S* MS_R v = buf.get();
    S* MS_R lr = v + BS;
    S* MS_R gv = lr + BS;
    S* MS_R glr = gv + BS;
    S* MS_R ath = glr + BS;
    S* MS_R ale = ath + BS;
    S* MS_R rb = ale + BS;
    S* MS_R ob = rb + BS;
    S* MS_R fb = ob + BS;
    S* MS_R Do = fb + BS;
    S* MS_R Df = Do + BS;
    S* MS_R tmp = Df + BS;
    S* MS_R hb = tmp + BS;
    S* MS_R vpb = hb + BS;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * BS;
      const int n = (int)std::min<int64_t>(BS, N - i0);
      load_or(offset_or_null(v0, i0), v_init, v, n);
      load_or(offset_or_null(lr0, i0), S(0), lr, n);
      for (int64_t t = 0; t < T; ++t) {
        const S* MS_R xt = x + t * xst + i0;
        S* MS_R Mt = M.get() + t * BS;
        MS_SIMD
        for (int i = 0; i < n; ++i) {
          const S mi = mlif_charge<S, CM>(v[i], lr[i], xt[i], leak, oml);
          Mt[i] = mi;
          rb[i] = mi / theta_e;
        }
        mlif_fire_block<S>(rb, ob, fb, n, c);
        MS_SIMD
        for (int i = 0; i < n; ++i) {
          const S reset = theta * ob[i];
          v[i] = soft ? Mt[i] - reset : Mt[i] * (S(1) - fb[i]);
          if (PF) lr[i] = reset;
        }
      }
      load_or(offset_or_null(gvT, i0), S(0), gv, n);
      load_or(offset_or_null(glrT, i0), S(0), glr, n);
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        ath[i] = S(0);
        ale[i] = S(0);
      }
      for (int64_t t = T - 1; t >= 0; --t) {
        const S* MS_R Mt = M.get() + t * BS;
        const S* MS_R gyt = gy + t * gyst + i0;
        S* MS_R gxt = gx + t * gxst + i0;
        MS_SIMD
        for (int i = 0; i < n; ++i) {
          rb[i] = Mt[i] / theta_e;
          Do[i] = S(0);
          Df[i] = S(0);
        }
        mlif_fire_block<S>(rb, ob, fb, n, c);
        // Window derivatives: D_o = sum_k c_k phi_k(r) (payload weights unit*2^k), D_f likewise with unit weights
        // (the hard reset's "fired" indicator). c_0 = w_0, c_k = w_k + sign * w_{k-1}.
        for (int k = 0; k < S_; ++k) {
          const double wk = c.unit * std::ldexp(1.0, k), wk1 = c.unit * std::ldexp(1.0, k - 1);
          const S co = (S)(k == 0 ? wk : wk + c.sign * wk1);
          const S cf = (S)(k == 0 ? 1.0 : 1.0 + c.sign);
          const S sc = (S)std::ldexp(1.0, -k);
          mlif_window_pass<S>(rb, Do, Df, n, (S)std::ldexp(1.0, k), sc, k ? sc : S(1), co, cf, sp0, sp1, c.unscaled,
                              c.sk);
        }
        MS_IVDEP
        for (int i = 0; i < n; ++i) {
          const S m = Mt[i];
          const S o = ob[i], f = fb[i];
          const S g_v = gv[i];
          S go = gyt[i];
          S gm, gf, gth;
          if (soft) {
            gm = g_v;
            S gor = -theta * g_v;
            gth = -o * g_v;
            if (PF) {
              gor = gor + theta * glr[i];
              gth = gth + o * glr[i];
            }
            go = detach ? go : go + gor;
            gf = S(0);
          } else {
            gm = g_v * (S(1) - f);
            gf = detach ? S(0) : -m * g_v;
            gth = S(0);
          }
          const S gr = go * Do[i] + gf * Df[i];
          gm = gm + gr * inv_te;
          gth = gth - gr * m * inv_te2 * dte;
          ath[i] += gth;
          gxt[i] = CM == CM_DECAY ? gm * oml : gm;
          gv[i] = CM == CM_DECAY ? gm * (S(1) - oml) : gm * leak;
          if (PF) glr[i] = gm * (leak - S(1));
          tmp[i] = gm;
        }
        if (c.need_leak) {
          // dm/dbeta: v(t-1) (plain), v(t-1) + lr(t-1) (paper form), -(x(t) - v(t-1)) (decay_input)
          if (t > 0) {
            const S* MS_R Mp = M.get() + (t - 1) * BS;
            MS_SIMD
            for (int i = 0; i < n; ++i) rb[i] = Mp[i] / theta_e;
            mlif_fire_block<S>(rb, ob, fb, n, c);
            MS_SIMD
            for (int i = 0; i < n; ++i) {
              const S reset = theta * ob[i];
              const S vp = soft ? Mp[i] - reset : Mp[i] * (S(1) - fb[i]);
              vpb[i] = PF ? vp + reset : vp;
            }
          } else {
            load_or(offset_or_null(v0, i0), v_init, vpb, n);
            if (PF) {
              load_or(offset_or_null(lr0, i0), S(0), hb, n);
              MS_SIMD
              for (int i = 0; i < n; ++i) vpb[i] = vpb[i] + hb[i];
            }
          }
          if (CM == CM_DECAY) {
            const S* MS_R xt = x + t * xst + i0;
            MS_SIMD
            for (int i = 0; i < n; ++i) ale[i] -= tmp[i] * (xt[i] - vpb[i]);
          } else {
            MS_SIMD
            for (int i = 0; i < n; ++i) ale[i] += tmp[i] * vpb[i];
          }
        }
      }
      if (gv0) {
  MS_SIMD for (int i = 0; i < n; ++i) gv0[i0 + i] = gv[i];
}
      if (glr0) {
  MS_SIMD for (int i = 0; i < n; ++i) glr0[i0 + i] = PF ? glr[i] : S(0);
}
      double s0 = 0.0, s1 = 0.0;
#pragma omp simd reduction(+:s0, s1)
      for (int i = 0; i < n; ++i) { s0 += (double)ath[i]; s1 += (double)ale[i]; }
      partial[(size_t)b * 2] = s0;
      partial[(size_t)b * 2 + 1] = s1;
    }
  }
  double t0 = 0.0, t1 = 0.0;
  for (int64_t b = 0; b < nblocks; ++b) { t0 += partial[(size_t)b * 2]; t1 += partial[(size_t)b * 2 + 1]; }
  pgrad[0] = t0;
  pgrad[1] = t1;
}

// ============================================================================================ LM-HT / M-HT
// Level loop of lmht_multistep on the (already mixed) current I:  m = lam_t * v + I*in_scale;
// y = clamp(floor(m/theta), 0, L) * theta;  v = m - y.  Backward window 1{lo <= m <= hi}.
// fp: theta, in_scale, v_init, lo, hi   ip: L, scale_input, detach_temporal, detach_reset, need_leak
template <typename S> struct RoundMagic;
template <> struct RoundMagic<float> { static constexpr float value = 8388608.0f; };            // 2^23
template <> struct RoundMagic<double> { static constexpr double value = 4503599627370496.0; };  // 2^52

template <typename S>
static inline S lmht_fire(S m, S theta, S L) {
  // clamp(floor(q), 0, L) for q = m/theta with selects only (no floor call, no NaN branch, so that it vectorises).
  // q is clamped to [0, L+1] first, where (q + 2^p) - 2^p rounds to the nearest integer exactly; floor follows by
  // one comparison. NaN propagates through every step (comparisons with NaN are false), as torch.clamp does.
  const S q = m / theta;
  S qc = q < S(0) ? S(0) : q;
  qc = qc > L + S(1) ? L + S(1) : qc;
  const S r = (qc + RoundMagic<S>::value) - RoundMagic<S>::value;
  S fl = r > qc ? r - S(1) : r;
  fl = fl > L ? L : fl;
  return fl * theta;
}

template <typename S>
static void lmht_fwd(const S* MS_R x, int64_t T, int64_t N, int64_t xst, S* MS_R y, int64_t yst,
                     const S* MS_R v0, S* MS_R vT, const double* lam, const double* fp, const int64_t* ip,
                     int nthreads) {
  const S theta = (S)fp[0], in_scale = (S)fp[1], v_init = S(0) + (S)fp[2];
  const S L = (S)ip[0];
  const int scale_input = (int)ip[1];
  const int BS = 4096;
  const int64_t nblocks = (N + BS - 1) / BS;
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel for schedule(static) num_threads(nth)
  for (int64_t b = 0; b < nblocks; ++b) {
    S v[BS];
    const int64_t i0 = b * BS;
    const int n = (int)std::min<int64_t>(BS, N - i0);
    load_or(offset_or_null(v0, i0), v_init, v, n);
    for (int64_t t = 0; t < T; ++t) {
      const S lt = (S)lam[t];
      const S* MS_R xt = x + t * xst + i0;
      S* MS_R yt = y + t * yst + i0;
      MS_IVDEP
      for (int i = 0; i < n; ++i) {
        const S cur = scale_input ? xt[i] * in_scale : xt[i];
        const S m = lt * v[i] + cur;
        const S yv = lmht_fire(m, theta, L);
        v[i] = m - yv;
        yt[i] = yv;
      }
    }
    MS_SIMD
    for (int i = 0; i < n; ++i) vT[i0 + i] = v[i];
  }
}

template <typename S>
static void lmht_bwd(const S* MS_R x, int64_t T, int64_t N, int64_t xst, const S* MS_R gy, int64_t gyst,
                     const S* MS_R v0, const S* MS_R gvT, S* MS_R gx, int64_t gxst, S* MS_R gv0,
                     const double* lam, double* pgrad, const double* fp, const int64_t* ip, int nthreads) {
  const S theta = (S)fp[0], in_scale = (S)fp[1], v_init = S(0) + (S)fp[2], lo = (S)fp[3], hi = (S)fp[4];
  const S L = (S)ip[0];
  const int scale_input = (int)ip[1], detach_t = (int)ip[2], detach_r = (int)ip[3], need_leak = (int)ip[4];
  const int BS = pick_block(T, (int)sizeof(S));
  const int64_t nblocks = (N + BS - 1) / BS;
  std::vector<double> partial((size_t)nblocks * T, 0.0);
  const int nth = pick_threads(N * T, nthreads);
#pragma omp parallel num_threads(nth)
  {
    std::unique_ptr<S[]> M(new S[(size_t)T * BS]);  // scratch, no zero fill
    std::unique_ptr<S[]> buf(new S[(size_t)4 * BS]);
    S* MS_R v = buf.get();
    S* MS_R gv = v + BS;
    S* MS_R gmb = gv + BS;
    S* MS_R vpb = gmb + BS;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t i0 = b * BS;
      const int n = (int)std::min<int64_t>(BS, N - i0);
      load_or(offset_or_null(v0, i0), v_init, v, n);
      for (int64_t t = 0; t < T; ++t) {
        const S lt = (S)lam[t];
        const S* MS_R xt = x + t * xst + i0;
        S* MS_R Mt = M.get() + t * BS;
        MS_IVDEP
        for (int i = 0; i < n; ++i) {
          const S cur = scale_input ? xt[i] * in_scale : xt[i];
          const S m = lt * v[i] + cur;
          Mt[i] = m;
          v[i] = m - lmht_fire(m, theta, L);
        }
      }
      load_or(offset_or_null(gvT, i0), S(0), gv, n);
      for (int64_t t = T - 1; t >= 0; --t) {
        const S lt = (S)lam[t];
        const S* MS_R Mt = M.get() + t * BS;
        const S* MS_R gyt = gy + t * gyst + i0;
        S* MS_R gxt = gx + t * gxst + i0;
        MS_IVDEP
        for (int i = 0; i < n; ++i) {
          const S m = Mt[i];
          const S win = (m >= lo && m <= hi) ? S(1) : S(0);
          const S g_v = gv[i];
          const S gyy = detach_r ? gyt[i] : gyt[i] - g_v;
          const S gm = g_v + gyy * win;
          gxt[i] = scale_input ? gm * in_scale : gm;
          gmb[i] = gm;
          gv[i] = detach_t ? S(0) : gm * lt;
        }
        if (need_leak) {
          if (t > 0) {
            const S* MS_R Mp = M.get() + (t - 1) * BS;
            MS_SIMD
            for (int i = 0; i < n; ++i) vpb[i] = Mp[i] - lmht_fire(Mp[i], theta, L);
          } else {
            load_or(offset_or_null(v0, i0), v_init, vpb, n);
          }
          double acc = 0.0;
#pragma omp simd reduction(+:acc)
          for (int i = 0; i < n; ++i) acc += (double)(gmb[i] * vpb[i]);
          partial[(size_t)b * T + t] = acc;
        }
      }
      if (gv0) {
  MS_SIMD for (int i = 0; i < n; ++i) gv0[i0 + i] = gv[i];
}
    }
  }
  for (int64_t t = 0; t < T; ++t) {
    double acc = 0.0;
    for (int64_t b = 0; b < nblocks; ++b) acc += partial[(size_t)b * T + t];
    pgrad[t] = acc;
  }
}

}  // namespace ms

extern "C" {

int ms_mlif_forward(int dtype, const void* x, int64_t T, int64_t N, int64_t xst, void* y, int64_t yst,
                    const void* v0, const void* lr0, void* vT, void* lrT, const double* fp, const int64_t* ip,
                    int nthreads) {
  ms::MCfg c = ms::read_mcfg(fp, ip);
  if (c.S < 1 || c.sk < 0 || c.sk > 3) return 2;
#define MS_MF(S, PF) ms::mlif_fwd<S, PF>((const S*)x, T, N, xst, (S*)y, yst, (const S*)v0, (const S*)lr0, (S*)vT, \
                                         (S*)lrT, c, nthreads)
  if (c.paper < 0 || c.paper > 2) return 2;
  if (dtype == 0) { if (c.paper == 1) MS_MF(float, 1); else if (c.paper == 2) MS_MF(float, 2); else MS_MF(float, 0); return 0; }
  if (dtype == 1) { if (c.paper == 1) MS_MF(double, 1); else if (c.paper == 2) MS_MF(double, 2); else MS_MF(double, 0); return 0; }
#undef MS_MF
  return 1;
}

int ms_mlif_backward(int dtype, const void* x, int64_t T, int64_t N, int64_t xst, const void* gy, int64_t gyst,
                     const void* v0, const void* lr0, const void* gvT, const void* glrT, void* gx, int64_t gxst,
                     void* gv0, void* glr0, double* pgrad, const double* fp, const int64_t* ip, int nthreads) {
  ms::MCfg c = ms::read_mcfg(fp, ip);
  if (c.S < 1 || c.sk < 0 || c.sk > 3) return 2;
#define MS_MB(S, PF) ms::mlif_bwd<S, PF>((const S*)x, T, N, xst, (const S*)gy, gyst, (const S*)v0, (const S*)lr0, \
                                         (const S*)gvT, (const S*)glrT, (S*)gx, gxst, (S*)gv0, (S*)glr0, pgrad, c, \
                                         nthreads)
  if (c.paper < 0 || c.paper > 2) return 2;
  if (dtype == 0) { if (c.paper == 1) MS_MB(float, 1); else if (c.paper == 2) MS_MB(float, 2); else MS_MB(float, 0); return 0; }
  if (dtype == 1) { if (c.paper == 1) MS_MB(double, 1); else if (c.paper == 2) MS_MB(double, 2); else MS_MB(double, 0); return 0; }
#undef MS_MB
  return 1;
}

int ms_lmht_forward(int dtype, const void* x, int64_t T, int64_t N, int64_t xst, void* y, int64_t yst,
                    const void* v0, void* vT, const double* lam, const double* fp, const int64_t* ip, int nthreads) {
  if (dtype == 0) { ms::lmht_fwd<float>((const float*)x, T, N, xst, (float*)y, yst, (const float*)v0, (float*)vT,
                                        lam, fp, ip, nthreads); return 0; }
  if (dtype == 1) { ms::lmht_fwd<double>((const double*)x, T, N, xst, (double*)y, yst, (const double*)v0,
                                         (double*)vT, lam, fp, ip, nthreads); return 0; }
  return 1;
}

int ms_lmht_backward(int dtype, const void* x, int64_t T, int64_t N, int64_t xst, const void* gy, int64_t gyst,
                     const void* v0, const void* gvT, void* gx, int64_t gxst, void* gv0, const double* lam,
                     double* pgrad, const double* fp, const int64_t* ip, int nthreads) {
  if (dtype == 0) { ms::lmht_bwd<float>((const float*)x, T, N, xst, (const float*)gy, gyst, (const float*)v0,
                                        (const float*)gvT, (float*)gx, gxst, (float*)gv0, lam, pgrad, fp, ip,
                                        nthreads); return 0; }
  if (dtype == 1) { ms::lmht_bwd<double>((const double*)x, T, N, xst, (const double*)gy, gyst, (const double*)v0,
                                         (const double*)gvT, (double*)gx, gxst, (double*)gv0, lam, pgrad, fp, ip,
                                         nthreads); return 0; }
  return 1;
}

}  // extern "C"
"""
