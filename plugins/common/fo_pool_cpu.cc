// Out-of-line entry points of the shared FoPool CPU kernel (fo_pool_cpu.h). On x86-64 with GCC or
// Clang each is compiled three times, for the baseline ISA, x86-64-v3 (AVX2 + FMA + F16C) and
// x86-64-v4 (AVX-512), and the loader picks the best clone the CPU supports: one portable binary
// that uses 16-wide vectors where it can (1.65x over AVX2 on an AMD EPYC, docs/benchmarks.md).
#include "fo_pool_cpu.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(QRNN_NO_CLONES)
#define QRNN_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QRNN_CLONES
#endif

namespace qrnn {
namespace fopool {

QRNN_CLONES void forward_range_f32(const ForwardArgs<float>& a, int64_t begin, int64_t end) {
  forward_items(a, begin, end);
}

QRNN_CLONES void forward_range_f16(const ForwardArgs<uint16_t>& a, int64_t begin, int64_t end) {
  forward_items(a, begin, end);
}

QRNN_CLONES void backward_range_f32(const BackwardArgs& a, int64_t begin, int64_t end) {
  backward_items(a, begin, end);
}

}  // namespace fopool
}  // namespace qrnn
