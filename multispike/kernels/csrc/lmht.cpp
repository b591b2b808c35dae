// Fused LM-HT / M-HT: multispike.neurons.lmht.lmht_multistep, T-GIM mixing included (kernel family "lmht", backend
// "cpp"). Per block of elements: I(t) = sum_j omega_tj * (in_scale * x(j)) in tgim_mix's fixed order (M-HT: I = x *
// in_scale);  m = lam_t * v + I;  y = clamp(floor(m/theta), 0, L) * theta;  v = m - y.  Backward window
// 1{lo <= m <= hi}; the backward also applies Omega^T to dL/dI and sums dL/domega in the same pass.
#include <utility>

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

// Rows of the T-GIM equal (bit for bit) to the previous row give the previous row's current: mixing them again
// would redo identical operations (uniform and freshly initialised learnable T-GIMs have all rows equal).
static inline std::vector<char> repeated_rows(const double* omega, int64_t T) {
  std::vector<char> same((size_t)T, 0);
  if (omega)
    for (int64_t t = 1; t < T; ++t)
      same[(size_t)t] = std::memcmp(omega + t * T, omega + (t - 1) * T, (size_t)T * sizeof(double)) == 0;
  return same;
}

// out[0..n) = sum_k w[k] * rows[k][0..n) in the fixed order w[0]*rows[0], then + w[k]*rows[k] for k = 1..K-1, each
// product and sum rounded in S (the build never contracts them into an FMA); rows scaled by in_scale first when
// SCALE. Forward: I(t) from the input rows x(j) and row t of Omega. Backward: Omega^T applied to dL/dI.
// Up to K = 8 the number of terms is a template constant: the sum stays in a register (one load per term instead of
// two loads and a store row by row; measured LM-HT forward, T = 8, [8,32,128,16,16] float32, one thread: 11.0 ->
// 8.8 ms CPU time). A runtime trip count inside the SIMD loop did not vectorise (66.8 ms).
template <typename S, int SCALE, size_t... K>
inline void mix_fixed(const S* const* rows, const S* w_in, S in_scale, int n, S* MS_R out,
                      std::index_sequence<K...>) {
  // the fold expressions unroll the terms at compile time, so every row pointer and weight is a scalar
  const S* MS_R r[sizeof...(K)] = {rows[K]...};
  const S w[sizeof...(K)] = {w_in[K]...};
  MS_SIMD
  for (int i = 0; i < n; ++i) {
    S acc = S(0);
    ((acc = K == 0 ? w[K] * (SCALE ? r[K][i] * in_scale : r[K][i])
                   : acc + w[K] * (SCALE ? r[K][i] * in_scale : r[K][i])), ...);
    out[i] = acc;
  }
}

template <typename S>
inline void mix_rows(const S* const* rows, const S* w, int64_t K, S in_scale, int scale, int n, S* MS_R out) {
  const int rc = select<1, 2, 3, 4, 5, 6, 7, 8>((int)std::min<int64_t>(K, 9), [&](auto kc) {
    using Terms = std::make_index_sequence<decltype(kc)::value>;
    if (scale)
      mix_fixed<S, 1>(rows, w, in_scale, n, out, Terms{});
    else
      mix_fixed<S, 0>(rows, w, in_scale, n, out, Terms{});
  });
  if (rc == 0) return;
  for (int64_t k = 0; k < K; ++k) {  // larger T: row by row through out, same order
    const S* MS_R r = rows[k];
    const S wk = w[k];
    if (k == 0) {
      MS_SIMD
      for (int i = 0; i < n; ++i) out[i] = wk * (scale ? r[i] * in_scale : r[i]);
    } else {
      MS_SIMD
      for (int i = 0; i < n; ++i) out[i] = out[i] + wk * (scale ? r[i] * in_scale : r[i]);
    }
  }
}

// cur[0..n) = I(t) = sum_j omega_tj * x(j) of one block, in tgim_mix's order (j = 0..T-1); x(j) is first scaled by
// in_scale when the record says so (the reference mixes in_scale * x).
template <typename S>
inline void mix_block(const Seq<S>& q, const LmhtArgs& c, int64_t t, int64_t i0, int n, S* MS_R cur) {
  std::vector<const S*> rows((size_t)q.T);
  std::vector<S> w((size_t)q.T);
  for (int64_t j = 0; j < q.T; ++j) {
    rows[(size_t)j] = q.x + j * q.xst + i0;
    w[(size_t)j] = (S)c.omega[t * q.T + j];
  }
  mix_rows<S>(rows.data(), w.data(), q.T, (S)c.in_scale, c.scale_input, n, cur);
}

// One step of a block on the current x (scaled by in_scale when scale is set): the membranes m(t) go to m (the
// backward's recomputation), the levels to y when given (the forward).
template <typename S>
inline void step_block(const S* MS_R x, S lt, S* MS_R v, S* MS_R m, S* MS_R y, int n, const LmhtArgs& c,
                       int scale) {
  const S theta = (S)c.theta, in_scale = (S)c.in_scale, L = (S)c.levels;
  if (y) {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S cur = scale ? x[i] * in_scale : x[i];
      const S mi = lt * v[i] + cur;
      const S yv = level_fire(mi, theta, L);
      v[i] = mi - yv;
      y[i] = yv;
    }
  } else {
    MS_SIMD
    for (int i = 0; i < n; ++i) {
      const S cur = scale ? x[i] * in_scale : x[i];
      const S mi = lt * v[i] + cur;
      m[i] = mi;
      v[i] = mi - level_fire(mi, theta, L);
    }
  }
}

// The current of step t for one block: the mixed current in cur (recomputed unless row t repeats row t-1), or
// the input row itself. *scale: whether step_block still has to apply in_scale.
template <typename S>
inline const S* block_current(const Seq<S>& q, const LmhtArgs& c, const std::vector<char>& same, int64_t t,
                              int64_t i0, int n, S* cur, int* scale) {
  if (!c.omega) {
    *scale = c.scale_input;
    return q.x + t * q.xst + i0;
  }
  if (!same[(size_t)t]) mix_block<S>(q, c, t, i0, n, cur);
  *scale = 0;
  return cur;
}

template <typename S>
void lmht_fwd(const Seq<S>& q, const LmhtArgs& c) {
  constexpr int BSMAX = 4096;
  // Without mixing: short rows for short sequences (measured, [T,32,128,16,16], one thread; see lif_fwd): 256
  // elements ran 1.2-1.5x faster than 4096 at T = 2 and 4; from T = 6 the long rows win.
  // With mixing each step reads the T input rows of its block again. Up to T = 8: 1024 elements (float; the T rows
  // within 32 KiB). Measured (Intel Xeon, 48 KiB L1, 2 MiB L2, one thread, learnable T-GIM), LM-HT forward with 1024
  // against the earlier 256 (T = 2) / T x BS in 256 KiB (4096 at T = 4, 8): 1.33 vs 1.32-1.54 ms (T = 2), 2.33 vs
  // 3.02 (T = 4), 5.10 vs 6.57 (T = 8). Longer sequences keep the T rows in L2 (pick_block): at T = 32 256-element
  // blocks were 1.1-1.4x slower than its 2048.
  const int BS = !c.omega ? (q.T <= 5 ? 256 : BSMAX)
                          : (q.T <= 8 ? 4096 / (int)sizeof(S) : std::min(BSMAX, pick_block(q.T, (int)sizeof(S))));
  const std::vector<char> same = repeated_rows(c.omega, q.T);
  forward_blocks(q.T, q.N, BS, q.nthreads, [&](int64_t i0, int n) {
    S v[BSMAX];
    S cur[BSMAX];
    load_or(q.v0, i0, S(0) + (S)c.v_init, v, n);
    for (int64_t t = 0; t < q.T; ++t) {
      int scale;
      const S* xt = block_current<S>(q, c, same, t, i0, n, cur, &scale);
      step_block<S>(xt, (S)c.lam[t], v, nullptr, q.y + t * q.yst + i0, n, c, scale);
    }
    store_if(q.vT, i0, v, n);
  });
}

// Per-block dot product: vector partial sums in S (at most BS/lanes terms each), their total in double. dL/domega
// needs T*T of these per element block: accumulating in double costs ~2x (half the lanes plus conversions); the
// parameter gradients are tolerance-checked like row_sum, and the blocks are summed in double in block order.
template <typename S>
static inline double row_dot(const S* MS_R a, const S* MS_R b, int n) {
  S s = S(0);
#pragma omp simd reduction(+:s)
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return (double)s;
}

// Parameter gradients: d/d lam_t (T) and, with a T-GIM, d/d omega_tj (T*T), reduced over blocks by
// backward_blocks in block order (deterministic whatever the thread count).
template <typename S>
void lmht_bwd(const Seq<S>& q, const LmhtArgs& c) {
  const bool mix = c.omega != nullptr;
  const int64_t T = q.T;
  const std::vector<char> same = repeated_rows(c.omega, T);
  // with a leak gradient the recomputation also keeps v(t) of every step (T more rows): the leak term of step t
  // reads v(t-1) instead of firing m(t-1) again (a division per element and step; measured at T = 4 the leak
  // gradient cost +1.5 ms on a 5.4 ms M-HT forward+backward)
  const int keep_v = c.need_leak ? 1 : 0;
  backward_blocks<S>(T, q.N, q.nthreads, 4 + (keep_v ? (int)T : 0), mix ? T + T * T : T, q.pgrad,
                     [&](int64_t i0, int n, int BS, S* M, S* work, double* part) {
    const S in_scale = (S)c.in_scale, v_init = S(0) + (S)c.v_init;
    const S lo = (S)c.lo, hi = (S)c.hi;
    const int scale_input = c.scale_input, detach_t = c.detach_temporal, detach_r = c.detach_reset;
    S* MS_R v = work;
    S* MS_R gv = v + BS;
    S* MS_R gmb = gv + BS;
    S* MS_R vpb = gmb + BS;
    S* const V = work + 4 * BS;  // v(t) of every step (keep_v)
    load_or(q.v0, i0, v_init, v, n);
    for (int64_t t = 0; t < T; ++t) {  // forward recomputation (the forward's step), m(t) into the scratch
      int scale;
      const S* xt = block_current<S>(q, c, same, t, i0, n, gmb, &scale);
      step_block<S>(xt, (S)c.lam[t], v, M + t * BS, nullptr, n, c, scale);
      if (keep_v) std::memcpy(V + t * BS, v, (size_t)n * sizeof(S));
    }
    load_or(q.gvT, i0, S(0), gv, n);
    // Without mixing, dL/dI(t) (times in_scale) is the input gradient of step t. With mixing it replaces m(t) in
    // the scratch (m(t) is dead once step t is done: the leak term of step t reads m(t-1)) for the mixing below.
    const int scale_out = mix ? 0 : scale_input;
    for (int64_t t = T - 1; t >= 0; --t) {
      const S lt = (S)c.lam[t];
      S* Mt = M + t * BS;
      S* out = mix ? Mt : q.gx + t * q.gxst + i0;
      const S* MS_R gyt = q.gy + t * q.gyst + i0;
      MS_SIMD
      for (int i = 0; i < n; ++i) {
        const S m = Mt[i];
        const S win = (m >= lo && m <= hi) ? S(1) : S(0);
        const S g_v = gv[i];
        const S gyy = detach_r ? gyt[i] : gyt[i] - g_v;
        const S gm = g_v + gyy * win;
        out[i] = scale_out ? gm * in_scale : gm;
        gmb[i] = gm;
        gv[i] = detach_t ? S(0) : gm * lt;
      }
      if (keep_v) {
        const S* MS_R vp = V + (t - 1) * BS;  // v(t-1): bit-identical to the forward's (same step code)
        if (t == 0) {
          load_or(q.v0, i0, v_init, vpb, n);
          vp = vpb;
        }
        MS_SIMD
        for (int i = 0; i < n; ++i) vpb[i] = gmb[i] * vp[i];
        part[t] = row_sum(vpb, n);
      }
    }
    store_if(q.gv0, i0, gv, n);
    if (!mix) return;
    // I = Omega x:  dL/dx(j) = in_scale * sum_t omega_tj G(t) (t = 0..T-1),  dL/domega_tj = sum_i G(t) x_s(j).
    std::vector<const S*> grows((size_t)T);
    std::vector<S> wcol((size_t)T);
    for (int64_t t = 0; t < T; ++t) grows[(size_t)t] = M + t * BS;
    for (int64_t j = 0; j < T; ++j) {
      S* MS_R gxj = q.gx + j * q.gxst + i0;
      for (int64_t t = 0; t < T; ++t) wcol[(size_t)t] = (S)c.omega[t * T + j];
      mix_rows<S>(grows.data(), wcol.data(), T, S(1), 0, n, gxj);
      if (scale_input) {
        MS_SIMD
        for (int i = 0; i < n; ++i) gxj[i] = gxj[i] * in_scale;
      }
      if (c.need_omega) {
        const S* MS_R xj = q.x + j * q.xst + i0;
        if (scale_input) {
          MS_SIMD
          for (int i = 0; i < n; ++i) vpb[i] = xj[i] * in_scale;
          xj = vpb;
        }
        for (int64_t t = 0; t < T; ++t) part[T + t * T + j] = row_dot<S>(M + t * BS, xj, n);
      }
    }
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
