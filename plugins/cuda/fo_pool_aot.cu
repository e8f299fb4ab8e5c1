// extern "C" entry points of the FoPool forward kernel for TensorRT's ahead-of-time Python plugin
// (qrnn_deploy/export/tensorrt_aot.py compiles this file with `nvcc --ptx` and embeds the PTX in
// the engine). Same column function as every other user (fo_pool_kernels.cuh); only the calling
// convention differs: TensorRT passes the input pointers, then the extra int32 scalars the
// plugin declares, then the output pointers.
//
//   qrnn_fo_pool_aot_<dtype>      (gates, c0, T, B, H, P, batch_first, reverse, h, c_last)
//   qrnn_fo_pool_aot_<dtype>_noc0 (gates,     T, B, H, P, batch_first, reverse, h, c_last)
//
// Launch: block QRNN_FO_POOL_BLOCK, grid ceil(B*H / QRNN_FO_POOL_BLOCK), no shared memory.

#include "fo_pool_kernels.cuh"

#define QRNN_FO_POOL_AOT_ENTRIES(NAME, T)                                                            \
  extern "C" __global__ void __launch_bounds__(QRNN_FO_POOL_BLOCK)                                   \
  NAME(const T* __restrict__ gates, const T* __restrict__ c0, int T_, int B, int H, int P,            \
       int batch_first, int reverse, T* __restrict__ h, T* __restrict__ c_last) {                     \
    const qrnn::cuda::FoPoolShape sh{T_, B, H, P, batch_first, reverse};                             \
    const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;                 \
    if (col < sh.columns()) qrnn::cuda::fo_pool_forward_column<T, T>(gates, c0, h, c_last, sh, col); \
  }                                                                                                  \
  extern "C" __global__ void __launch_bounds__(QRNN_FO_POOL_BLOCK)                                   \
  NAME##_noc0(const T* __restrict__ gates, int T_, int B, int H, int P, int batch_first, int reverse, \
              T* __restrict__ h, T* __restrict__ c_last) {                                           \
    const qrnn::cuda::FoPoolShape sh{T_, B, H, P, batch_first, reverse};                             \
    const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;                 \
    if (col < sh.columns())                                                                          \
      qrnn::cuda::fo_pool_forward_column<T, T>(gates, nullptr, h, c_last, sh, col);                  \
  }

QRNN_FO_POOL_AOT_ENTRIES(qrnn_fo_pool_aot_f32, float)
QRNN_FO_POOL_AOT_ENTRIES(qrnn_fo_pool_aot_f16, __half)
QRNN_FO_POOL_AOT_ENTRIES(qrnn_fo_pool_aot_bf16, __nv_bfloat16)
