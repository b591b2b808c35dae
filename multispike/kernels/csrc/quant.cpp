// Fused clip-floor activation quantizers of quantization-aware ANN training (QCFS and QAC).
//
// One pass per element in each direction: the forward reads the input and writes the quantized value; the
// backward recomputes the level from the input (nothing else is saved), writes the input gradient and returns
// the two sums from which every learnable clip/step gradient follows (multispike.kernels.quant_cpp).
// Storage is float32 or bfloat16 (bits in a uint16, rounded to nearest-even like PyTorch); arithmetic is float32
// and, for float32 storage, replays the reference expression's IEEE operations one by one (-ffp-contract=off).
#include "ms_common.h"

namespace msq {

static inline float bf2f(uint16_t b) { return __builtin_bit_cast(float, (uint32_t)b << 16); }
static inline uint16_t f2bf(float f) {
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // round to nearest even
  const uint32_t quiet_nan = (u >> 16) | 0x40u;
  return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}
struct F32 {
  typedef float T;
  static inline float ld(const T* p, int64_t i) { return p[i]; }
  static inline void st(T* p, int64_t i, float v) { p[i] = v; }
};
struct BF16 {
  typedef uint16_t T;
  static inline float ld(const T* p, int64_t i) { return bf2f(p[i]); }
  static inline void st(T* p, int64_t i, float v) { p[i] = f2bf(v); }
};

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

// out[i] = f(x[i]) for the n elements.
template <typename IO, typename F>
static void map_blocks(const typename IO::T* MS_R x, typename IO::T* MS_R out, int64_t n, int threads, F f) {
  const int64_t nb = (n + QBLOCK - 1) / QBLOCK;
  #pragma omp parallel for num_threads(threads) schedule(static) if (nb > 8)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * QBLOCK, e = s + QBLOCK < n ? s + QBLOCK : n;
    const F fl = f;  // a private copy: the outlined OpenMP body would reload captured values every iteration
    const typename IO::T* MS_R xb = x + s;
    typename IO::T* MS_R ob = out + s;
    const int m = (int)(e - s);
    MS_SIMD
    for (int i = 0; i < m; ++i) IO::st(ob, i, fl(IO::ld(xb, i)));
  }
}

// gx[i] = f(x[i], g[i], &a, &b) where f adds its contributions to the two sums; sums = (sum a, sum b).
template <typename IO, typename F>
static void reduce_blocks(const typename IO::T* MS_R x, const typename IO::T* MS_R g, typename IO::T* MS_R gx,
                          int64_t n, int threads, double* sums, F f) {
  const int64_t nb = (n + QBLOCK - 1) / QBLOCK;
  double a = 0.0, b = 0.0;
  #pragma omp parallel for num_threads(threads) schedule(static) reduction(+:a,b) if (nb > 8)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * QBLOCK, e = s + QBLOCK < n ? s + QBLOCK : n;
    const F fl = f;
    float fa = 0.0f, fb = 0.0f;
    #pragma omp simd reduction(+:fa,fb)
    for (int64_t i = s; i < e; ++i) IO::st(gx, i, fl(IO::ld(x, i), IO::ld(g, i), fa, fb));
    a += fa;
    b += fb;
  }
  sums[0] = a;
  sums[1] = b;
}

// QCFS: out = clamp(floor(z / th * L + phi) / L, 0, 1) * th   (algorithms.md 3.1, in the reference's op order)
struct Qcfs {
  float th, L, phi;
  float level(float z) const {  // clamp-free q_u = floor(z/th*L + phi)/L
    float u = z / th;
    u = u * L;
    u = u + phi;
    return floor_exact(u) / L;
  }
  float forward(float z) const { return clamp01(level(z)) * th; }
  // dz = g where 0 <= q_u <= 1 (the clamp passes both bounds); a += g*clamp(q_u); b += g_inside*z/th;
  // dL/dth = a - b.
  float backward(float z, float g, float& a, float& b) const {
    const float q = level(z);
    const float gin = q >= 0.0f && q <= 1.0f ? g : 0.0f;
    a += g * clamp01(q);
    b += gin * (z / th);
    return gin;
  }
};

// QAC: out = clamp(floor(x * T / a + 0.5), 0, T) * a / T   (algorithms.md 3.2, qac_quantize's op order)
struct Qac {
  float alpha, T;
  float forward(float x) const {
    float u = x * T;
    u = u / alpha;
    u = u + 0.5f;
    float lv = floor_exact(u);
    lv = lv < 0.0f ? 0.0f : (lv > T ? T : lv);
    return lv * alpha / T;
  }
  // dx = g inside 0 <= x <= alpha; r += g_inside*(q - x); s += g where x > alpha.
  float backward(float x, float g, float& r, float& s) const {
    const float gin = x >= 0.0f && x <= alpha ? g : 0.0f;
    r += gin * (forward(x) - x);
    s += x > alpha ? g : 0.0f;
    return gin;
  }
};

template <typename IO, typename Q>
static void run_forward(const QuantArgs& a, const Q q) {
  map_blocks<IO>((const typename IO::T*)a.x, (typename IO::T*)a.out, a.n, a.nthreads,
                 [q](float v) { return q.forward(v); });
}

template <typename IO, typename Q>
static void run_backward(const QuantArgs& a, const Q q) {
  reduce_blocks<IO>((const typename IO::T*)a.x, (const typename IO::T*)a.g, (typename IO::T*)a.out, a.n,
                    a.nthreads, a.sums,
                    [q](float v, float g, float& s0, float& s1) { return q.backward(v, g, s0, s1); });
}

template <typename Q, bool Backward>
static int dispatch(const QuantArgs* a, const Q q) {
  if (a->dtype != 0 && a->dtype != 1) return -1;
  if constexpr (Backward) {
    a->dtype == 0 ? run_backward<F32>(*a, q) : run_backward<BF16>(*a, q);
  } else {
    a->dtype == 0 ? run_forward<F32>(*a, q) : run_forward<BF16>(*a, q);
  }
  return 0;
}

static Qcfs qcfs_of(const QuantArgs* a) { return Qcfs{(float)a->p[0], (float)a->p[1], (float)a->p[2]}; }
static Qac qac_of(const QuantArgs* a) { return Qac{(float)a->p[0], (float)a->p[1]}; }

}  // namespace msq

extern "C" {
// Return 0 on success, -1 for an unknown dtype.
int ms_qcfs_forward(const QuantArgs* a) { return msq::dispatch<msq::Qcfs, false>(a, msq::qcfs_of(a)); }
int ms_qcfs_backward(const QuantArgs* a) { return msq::dispatch<msq::Qcfs, true>(a, msq::qcfs_of(a)); }
int ms_qac_forward(const QuantArgs* a) { return msq::dispatch<msq::Qac, false>(a, msq::qac_of(a)); }
int ms_qac_backward(const QuantArgs* a) { return msq::dispatch<msq::Qac, true>(a, msq::qac_of(a)); }
}  // extern "C"
