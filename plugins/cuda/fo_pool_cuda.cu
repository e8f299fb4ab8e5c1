// Host launchers of the FoPool kernels (fo_pool_kernels.cuh) behind the C API of fo_pool_cuda.h.
// Built into the PyTorch ctypes library (qrnn_deploy/nn/_cuda_kernels.py), the onnxruntime
// custom-op library (QRNN_WITH_CUDA) and the TensorRT plugin library.

#include <cuda_runtime.h>

#include "fo_pool_cuda.h"
#include "fo_pool_kernels.cuh"

namespace {

using qrnn::cuda::Acc;
using qrnn::cuda::FoPoolShape;

template <typename T, typename S>
int launch_forward(const void* gates, const void* c0, void* h, void* c_last, const FoPoolShape& sh,
                   cudaStream_t stream) {
  const int64_t n = sh.columns();
  if (n == 0) return 0;
  const void* ptrs[] = {gates, h};
  const int sizes[] = {sizeof(T), sizeof(T)};
  const int v = qrnn::cuda::fo_pool_launch_width(n, sh.H, qrnn::cuda::fo_pool_max_vector<T>(), ptrs, sizes, 2);
  return qrnn::cuda::with_vector_width<T>(v, [&](auto width) {
    constexpr int V = decltype(width)::value;
    qrnn::cuda::fo_pool_forward_kernel<T, S, V><<<qrnn::cuda::fo_pool_grid(n, V), QRNN_FO_POOL_BLOCK, 0, stream>>>(
        static_cast<const T*>(gates), static_cast<const S*>(c0), static_cast<T*>(h), static_cast<S*>(c_last), sh);
    return static_cast<int>(cudaGetLastError());
  });
}

template <typename T, typename S>
int launch_backward(const void* grad_h, const void* grad_c_last, const void* gates, const void* c0,
                    void* grad_gates, void* grad_c0, void* workspace, const FoPoolShape& sh,
                    cudaStream_t stream) {
  using A = typename Acc<T>::type;
  const int64_t n = sh.columns();
  if (n == 0) return 0;
  const void* ptrs[] = {grad_h, gates, grad_gates, workspace};
  const int sizes[] = {sizeof(T), sizeof(T), sizeof(T), sizeof(A)};
  const int v = qrnn::cuda::fo_pool_launch_width(n, sh.H, qrnn::cuda::fo_pool_max_vector<T>(), ptrs, sizes, 4);
  return qrnn::cuda::with_vector_width<T>(v, [&](auto width) {
    constexpr int V = decltype(width)::value;
    qrnn::cuda::fo_pool_backward_kernel<T, S, V><<<qrnn::cuda::fo_pool_grid(n, V), QRNN_FO_POOL_BLOCK, 0, stream>>>(
        static_cast<const T*>(grad_h), static_cast<const S*>(grad_c_last), static_cast<const T*>(gates),
        static_cast<const S*>(c0), static_cast<T*>(grad_gates), static_cast<S*>(grad_c0),
        static_cast<A*>(workspace), sh);
    return static_cast<int>(cudaGetLastError());
  });
}

bool valid_shape(int64_t T, int64_t B, int64_t H, int P) {
  return T >= 0 && B >= 0 && H >= 0 && P >= 2 && P <= 4;
}

// One switch over the supported (dtype, state_dtype) pairs, shared by forward and backward.
template <template <typename, typename> class Fn, typename... Args>
int dispatch(int dtype, int state_dtype, Args&&... args) {
  const bool same = dtype == state_dtype;
  switch (dtype) {
    case QRNN_F32:
      if (same) return Fn<float, float>::run(args...);
      break;
    case QRNN_F64:
      if (same) return Fn<double, double>::run(args...);
      break;
    case QRNN_F16:
      if (same) return Fn<__half, __half>::run(args...);
      if (state_dtype == QRNN_F32) return Fn<__half, float>::run(args...);
      break;
    case QRNN_BF16:
      if (same) return Fn<__nv_bfloat16, __nv_bfloat16>::run(args...);
      if (state_dtype == QRNN_F32) return Fn<__nv_bfloat16, float>::run(args...);
      break;
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

template <typename T, typename S> struct Forward {
  template <typename... Args> static int run(Args... a) { return launch_forward<T, S>(a...); }
};
template <typename T, typename S> struct Backward {
  template <typename... Args> static int run(Args... a) { return launch_backward<T, S>(a...); }
};

}  // namespace

extern "C" {

int qrnn_fo_pool_cuda_forward(int dtype, int state_dtype, const void* gates, const void* c0, void* h,
                              void* c_last, int64_t T, int64_t B, int64_t H, int P, int batch_first,
                              int reverse, void* stream) {
  if (!valid_shape(T, B, H, P)) return static_cast<int>(cudaErrorInvalidValue);
  const FoPoolShape sh{T, B, H, P, batch_first ? 1 : 0, reverse ? 1 : 0};
  return dispatch<Forward>(dtype, state_dtype, gates, c0, h, c_last, sh, static_cast<cudaStream_t>(stream));
}

size_t qrnn_fo_pool_cuda_backward_workspace_size(int dtype, int64_t T, int64_t B, int64_t H) {
  const size_t acc = dtype == QRNN_F64 ? sizeof(double) : sizeof(float);
  return static_cast<size_t>(T) * static_cast<size_t>(B) * static_cast<size_t>(H) * acc;
}

int qrnn_fo_pool_cuda_backward(int dtype, int state_dtype, const void* grad_h, const void* grad_c_last,
                               const void* gates, const void* c0, void* grad_gates, void* grad_c0,
                               void* workspace, int64_t T, int64_t B, int64_t H, int P,
                               int batch_first, int reverse, void* stream) {
  if (!valid_shape(T, B, H, P)) return static_cast<int>(cudaErrorInvalidValue);
  if (T > 0 && B * H > 0 && workspace == nullptr) return static_cast<int>(cudaErrorInvalidValue);
  const FoPoolShape sh{T, B, H, P, batch_first ? 1 : 0, reverse ? 1 : 0};
  return dispatch<Backward>(dtype, state_dtype, grad_h, grad_c_last, gates, c0, grad_gates, grad_c0,
                            workspace, sh, static_cast<cudaStream_t>(stream));
}

const char* qrnn_fo_pool_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int qrnn_fo_pool_cuda_block_size(void) { return QRNN_FO_POOL_BLOCK; }

int qrnn_fo_pool_cuda_columns_per_thread(int dtype, int64_t B, int64_t H) {
  const void* aligned = reinterpret_cast<const void*>(static_cast<uintptr_t>(256));
  const void* ptrs[] = {aligned};
  int size = 0, vmax = 1;
  switch (dtype) {
    case QRNN_F32: size = sizeof(float), vmax = qrnn::cuda::fo_pool_max_vector<float>(); break;
    case QRNN_F16: size = sizeof(__half), vmax = qrnn::cuda::fo_pool_max_vector<__half>(); break;
    case QRNN_BF16: size = sizeof(__nv_bfloat16), vmax = qrnn::cuda::fo_pool_max_vector<__nv_bfloat16>(); break;
    case QRNN_F64: size = sizeof(double), vmax = qrnn::cuda::fo_pool_max_vector<double>(); break;
    default: return 0;
  }
  const int sizes[] = {size};
  return qrnn::cuda::fo_pool_launch_width(B * H, H, vmax, ptrs, sizes, 1);
}

}  // extern "C"
