// Runs the FoPool kernels' own group functions (fo_pool_kernels.cuh) on the CPU, one column
// after another (V adjacent columns at a time, chosen as the launchers choose or
// forced by `vec`), so that tests on machines without a GPU check the kernel arithmetic, indexing
// and layouts against the reference (tests/test_cuda_build.py). Not used in production: the
// GPU launch and the grid rule are what this cannot check; scripts/gpu_check.sh does that.

#include <stdint.h>
#include <stdlib.h>

#include "fo_pool_cuda.h"
#include "fo_pool_kernels.cuh"

namespace {

using qrnn::cuda::Acc;
using qrnn::cuda::FoPoolShape;

int last_width = 0;  // the V of the last call, for tests

// vec = 0: the launchers' divisibility and alignment rule over the same pointers
// (fo_pool_vector_width; not their thread-count rule, which small test shapes would always fail);
// else that V, which must be 1 or storage T's wide V and divide H.
template <typename T>
int pick_width(int vec, int64_t H, const void* const* ptrs, const int* sizes, int count) {
  if (vec == 0) return qrnn::cuda::fo_pool_vector_width(H, qrnn::cuda::fo_pool_max_vector<T>(), ptrs, sizes, count);
  if (vec != 1 && (vec != qrnn::cuda::fo_pool_max_vector<T>() || H % vec)) return -1;
  return vec;
}

template <typename T, typename S>
int host_forward(const void* gates, const void* c0, void* h, void* c_last, const FoPoolShape& sh, int vec) {
  const void* ptrs[] = {gates, h};
  const int sizes[] = {sizeof(T), sizeof(T)};
  const int v = pick_width<T>(vec, sh.H, ptrs, sizes, 2);
  if (v < 0) return 3;
  last_width = v;
  return qrnn::cuda::with_vector_width<T>(v, [&](auto width) {
    constexpr int V = decltype(width)::value;
    for (int64_t g = 0; g < sh.columns() / V; ++g)
      qrnn::cuda::fo_pool_forward_group<T, S, V>(static_cast<const T*>(gates), static_cast<const S*>(c0),
                                                 static_cast<T*>(h), static_cast<S*>(c_last), sh, g);
    return 0;
  });
}

template <typename T, typename S>
int host_backward(const void* grad_h, const void* grad_c_last, const void* gates, const void* c0,
                  void* grad_gates, void* grad_c0, const FoPoolShape& sh, int vec) {
  using A = typename Acc<T>::type;
  const size_t count = static_cast<size_t>(sh.T * sh.columns());
  // 16-byte aligned, as the device allocations the launchers get are (at least).
  A* ws = static_cast<A*>(aligned_alloc(16, ((count ? count : 1) * sizeof(A) + 15) / 16 * 16));
  if (!ws) return 2;
  const void* ptrs[] = {grad_h, gates, grad_gates, ws};
  const int sizes[] = {sizeof(T), sizeof(T), sizeof(T), sizeof(A)};
  const int v = pick_width<T>(vec, sh.H, ptrs, sizes, 4);
  if (v < 0) {
    free(ws);
    return 3;
  }
  last_width = v;
  qrnn::cuda::with_vector_width<T>(v, [&](auto width) {
    constexpr int V = decltype(width)::value;
    for (int64_t g = 0; g < sh.columns() / V; ++g)
      qrnn::cuda::fo_pool_backward_group<T, S, V>(
          static_cast<const T*>(grad_h), static_cast<const S*>(grad_c_last), static_cast<const T*>(gates),
          static_cast<const S*>(c0), static_cast<T*>(grad_gates), static_cast<S*>(grad_c0), ws, sh, g);
    return 0;
  });
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
                              int reverse, int vec) {
  const FoPoolShape sh{T, B, H, P, batch_first ? 1 : 0, reverse ? 1 : 0};
  QRNN_HOST_DISPATCH(host_forward, gates, c0, h, c_last, sh, vec)
}

int qrnn_fo_pool_host_backward(int dtype, int state_dtype, const void* grad_h, const void* grad_c_last,
                               const void* gates, const void* c0, void* grad_gates, void* grad_c0,
                               int64_t T, int64_t B, int64_t H, int P, int batch_first, int reverse,
                               int vec) {
  const FoPoolShape sh{T, B, H, P, batch_first ? 1 : 0, reverse ? 1 : 0};
  QRNN_HOST_DISPATCH(host_backward, grad_h, grad_c_last, gates, c0, grad_gates, grad_c0, sh, vec)
}

/* The V (columns per thread) of the last host_forward / host_backward call. */
int qrnn_fo_pool_host_last_width(void) { return last_width; }

}  // extern "C"
