// Exact uint8 copies of spike tensors (multispike.layers.pack_exact_uint8, spike_storage="bytes").
//
// One pass: read each float, write its uint8 value, and note whether any element does not round-trip bit for
// bit (fractional, negative, above 255, -0.0, NaN, inf). PyTorch needs four (convert, convert back into a new
// buffer, compare): 2.8 ms for an 8 MiB float32 spike tensor on one thread (a plain copy: 0.3 ms), about a tenth
// of a ResNet-20 SNN training step with bytes storage; this loop takes about 0.15 ms. The tensors are dense (any dense layout) and
// the uint8 buffer has the same strides, so both are walked in memory order.
#include "ms_common.h"

#include <atomic>

namespace mspack {

static const int64_t PBLOCK = 16384;

// Pack one block; returns nonzero if some element is not exact. Integer operations only, so that GCC vectorises
// it (a float comparison or select is a possible trap it will not if-convert without -fno-trapping-math): for a
// non-negative float the bit patterns order like the values, so bits <= bits(255) selects [+0, 255] (denormals
// included); anything else (negative, -0.0, > 255, inf, NaN) becomes 0 and then differs from its own bits. An
// element is exact iff its bits equal those of its truncated integer converted back.
template <typename S, typename Bits>
static inline Bits pack_block(const S* MS_R x, uint8_t* MS_R q, int m) {
  const Bits limit = __builtin_bit_cast(Bits, (S)255);
  Bits bad = 0;
  #pragma omp simd reduction(|:bad)
  for (int i = 0; i < m; ++i) {
    const Bits u = __builtin_bit_cast(Bits, x[i]);
    const Bits keep = (Bits)0 - (Bits)(u <= limit);            // all ones where 0 <= x <= 255
    const int32_t k = (int32_t)__builtin_bit_cast(S, (Bits)(u & keep));
    q[i] = (uint8_t)k;
    bad |= u ^ __builtin_bit_cast(Bits, (S)k);
  }
  return bad;
}

template <typename S, typename Bits>
static int pack(const QuantArgs* a) {
  const S* x = (const S*)a->x;
  uint8_t* q = (uint8_t*)a->out;
  const int64_t n = a->n, nb = (n + PBLOCK - 1) / PBLOCK;
  std::atomic<int> failed{0};
  #pragma omp parallel for num_threads(a->nthreads) schedule(static) if (nb > 4)
  for (int64_t blk = 0; blk < nb; ++blk) {
    if (failed.load(std::memory_order_relaxed)) continue;   // not spikes: the caller keeps the float tensor
    const int64_t s = blk * PBLOCK, e = s + PBLOCK < n ? s + PBLOCK : n;
    if (pack_block<S, Bits>(x + s, q + s, (int)(e - s))) failed.store(1, std::memory_order_relaxed);
  }
  return failed.load() ? 1 : 0;
}

}  // namespace mspack

extern "C" {
// dtype: 0 float32, 2 float64 (QuantArgs.dtype). Return 0: every element packed exactly; 1: some element is not
// exact (the uint8 buffer is then partly written and must not be used); -1: unknown dtype.
int ms_pack_exact_u8(const QuantArgs* a) {
  if (a->dtype == 0) return mspack::pack<float, uint32_t>(a);
  if (a->dtype == 2) return mspack::pack<double, uint64_t>(a);
  return -1;
}
}  // extern "C"
