// Runs the FoPool kernels' own column functions (fo_pool_kernels.cuh) on the CPU, one column
// after another, so that tests on machines without a GPU check the kernel arithmetic, indexing
// and layouts against the reference (tests/test_cuda_build.py). Not used in production: the
// GPU launch and the grid rule are what this cannot check; scripts/gpu_check.sh does that.

#include <stdint.h>
#include <stdlib.h>

#include "fo_pool_cuda.h"
#include "fo_pool_kernels.cuh"

namespace {

using qrnn::cuda::Acc;
using qrnn::cuda::FoPoolShape;

template <typename T, typename S>
int host_forward(const void* gates, const void* c0, void* h, void* c_last, const FoPoolShape& sh) {
  for (int64_t col = 0; col < sh.columns(); ++col)
    qrnn::cuda::fo_pool_forward_column<T, S>(static_cast<const T*>(gates), static_cast<const S*>(c0),
                                             static_cast<T*>(h), static_cast<S*>(c_last), sh, col);
  return 0;
}

template <typename T, typename S>
int host_backward(const void* grad_h, const void* grad_c_last, const void* gates, const void* c0,
                  void* grad_gates, void* grad_c0, const FoPoolShape& sh) {
  using A = typename Acc<T>::type;
  const size_t count = static_cast<size_t>(sh.T * sh.columns());
  A* ws = static_cast<A*>(malloc((count ? count : 1) * sizeof(A)));
  if (!ws) return 2;
  for (int64_t col = 0; col < sh.columns(); ++col)
    qrnn::cuda::fo_pool_backward_column<T, S>(
        static_cast<const T*>(grad_h), static_cast<const S*>(grad_c_last), static_cast<const T*>(gates),
        static_cast<const S*>(c0), static_cast<T*>(grad_gates), static_cast<S*>(grad_c0), ws, sh, col);
  free(ws);
  return 0;
}

}  // namespace

#define QRNN_HOST_DISPATCH(FN, ...)                                                            \
  switch (dtype) {                                                                             \
    case QRNN_F32: if (state_dtype == QRNN_F32) return FN<float, float>(__VA_ARGS__); break;   \
    case QRNN_F64: if (state_dtype == QRNN_F64) return FN<double, double>(__VA_ARGS__); break; \
    case QRNN_F16:                                                                             \
      if (state_dtype == QRNN_F16) return FN<__half, __half>(__VA_ARGS__);                     \
      if (state_dtype == QRNN_F32) return FN<__half, float>(__VA_ARGS__);                      \
      break;                                                                                   \
    case QRNN_BF16:                                                                            \
      if (state_dtype == QRNN_BF16) return FN<__nv_bfloat16, __nv_bfloat16>(__VA_ARGS__);      \
      if (state_dtype == QRNN_F32) return FN<__nv_bfloat16, float>(__VA_ARGS__);               \
      break;                                                                                   \
  }                                                                                            \
  return 1;

extern "C" {

int qrnn_fo_pool_host_forward(int dtype, int state_dtype, const void* gates, const void* c0, void* h,
                              void* c_last, int64_t T, int64_t B, int64_t H, int P, int batch_first,
                              int reverse) {
  const FoPoolShape sh{T, B, H, P, batch_first ? 1 : 0, reverse ? 1 : 0};
  QRNN_HOST_DISPATCH(host_forward, gates, c0, h, c_last, sh)
}

int qrnn_fo_pool_host_backward(int dtype, int state_dtype, const void* grad_h, const void* grad_c_last,
                               const void* gates, const void* c0, void* grad_gates, void* grad_c0,
                               int64_t T, int64_t B, int64_t H, int P, int batch_first, int reverse) {
  const FoPoolShape sh{T, B, H, P, batch_first ? 1 : 0, reverse ? 1 : 0};
  QRNN_HOST_DISPATCH(host_backward, grad_h, grad_c_last, gates, c0, grad_gates, grad_c0, sh)
}

}  // extern "C"
