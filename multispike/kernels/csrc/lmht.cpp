// Fused LM-HT / M-HT level loop: multispike.neurons.lmht.lmht_multistep after its T-GIM mixing (kernel family
// "lmht", backend "cpp"). On the mixed current I:  m = lam_t * v + I*in_scale;  y = clamp(floor(m/theta), 0, L)
// * theta;  v = m - y.  Backward window 1{lo <= m <= hi}.
#include "ms_common.h"

namespace ms {
// one namespace per family: _build compiles all sources as one translation unit
namespace lmht {

template <typename S> struct RoundMagic;
template <> struct RoundMagic<float> { static constexpr float value = 8388608.0f; };            // 2^23
template <> struct RoundMagic<double> { static constexpr double value = 4503599627370496.0; };  // 2^52

template <typename S>
inline S level_fire(S m, S theta, S L) {
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

// One step of a block: the membranes m(t) go to m (the output row in the forward, the scratch in the backward's
// recomputation), the levels to y when given.
template <typename S>
inline void step_block(const S* MS_R x, S lt, S* MS_R v, S* MS_R m, S* MS_R y, int n, const LmhtArgs& c) {
  const S theta = (S)c.theta, in_scale = (S)c.in_scale, L = (S)c.levels;
  const int scale_input = c.scale_input;
  if (y) {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S cur = scale_input ? x[i] * in_scale : x[i];
      const S mi = lt * v[i] + cur;
      const S yv = level_fire(mi, theta, L);
      v[i] = mi - yv;
      y[i] = yv;
    }
  } else {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S cur = scale_input ? x[i] * in_scale : x[i];
      const S mi = lt * v[i] + cur;
      m[i] = mi;
      v[i] = mi - level_fire(mi, theta, L);
    }
  }
}

template <typename S>
void lmht_fwd(const Seq<S>& q, const LmhtArgs& c) {
  constexpr int BS = 4096;
  forward_blocks(q.T, q.N, BS, q.nthreads, [&](int64_t i0, int n) {
    S v[BS];
    load_or(q.v0, i0, S(0) + (S)c.v_init, v, n);
    for (int64_t t = 0; t < q.T; ++t)
      step_block<S>(q.x + t * q.xst + i0, (S)c.lam[t], v, nullptr, q.y + t * q.yst + i0, n, c);
    store_if(q.vT, i0, v, n);
  });
}

// Parameter gradients: one per step (d/d lam_t), reduced over blocks by backward_blocks.
template <typename S>
void lmht_bwd(const Seq<S>& q, const LmhtArgs& c) {
  backward_blocks<S>(q.T, q.N, q.nthreads, 4, q.T, q.pgrad,
                     [&](int64_t i0, int n, int BS, S* M, S* work, double* part) {
    const S theta = (S)c.theta, in_scale = (S)c.in_scale, v_init = S(0) + (S)c.v_init;
    const S lo = (S)c.lo, hi = (S)c.hi, L = (S)c.levels;
    const int scale_input = c.scale_input, detach_t = c.detach_temporal, detach_r = c.detach_reset;
    S* MS_R v = work;
    S* MS_R gv = v + BS;
    S* MS_R gmb = gv + BS;
    S* MS_R vpb = gmb + BS;
    load_or(q.v0, i0, v_init, v, n);
    for (int64_t t = 0; t < q.T; ++t)  // forward recomputation (the forward's step), m(t) into the scratch
      step_block<S>(q.x + t * q.xst + i0, (S)c.lam[t], v, M + t * BS, nullptr, n, c);
    load_or(q.gvT, i0, S(0), gv, n);
    for (int64_t t = q.T - 1; t >= 0; --t) {
      const S lt = (S)c.lam[t];
      const S* MS_R Mt = M + t * BS;
      const S* MS_R gyt = q.gy + t * q.gyst + i0;
      S* MS_R gxt = q.gx + t * q.gxst + i0;
      MS_SIMD
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
      if (c.need_leak) {
        if (t > 0) {
          const S* MS_R Mp = M + (t - 1) * BS;
          MS_SIMD
          for (int i = 0; i < n; ++i) vpb[i] = Mp[i] - level_fire(Mp[i], theta, L);
        } else {
          load_or(q.v0, i0, v_init, vpb, n);
        }
        MS_SIMD
        for (int i = 0; i < n; ++i) vpb[i] = gmb[i] * vpb[i];
        part[t] = row_sum(vpb, n);
      }
    }
    store_if(q.gv0, i0, gv, n);
  });
}

}  // namespace lmht
}  // namespace ms

extern "C" {

int ms_lmht_forward(const LmhtArgs* a) {
  return ms::with_dtype(a->io.dtype, [&](auto s) {
    ms::lmht::lmht_fwd<decltype(s)>(ms::Seq<decltype(s)>(a->io), *a);
    return 0;
  });
}

int ms_lmht_backward(const LmhtArgs* a) {
  return ms::with_dtype(a->io.dtype, [&](auto s) {
    ms::lmht::lmht_bwd<decltype(s)>(ms::Seq<decltype(s)>(a->io), *a);
    return 0;
  });
}

}  // extern "C"
