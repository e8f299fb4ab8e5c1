/* FoPool on CUDA: the host API of plugins/cuda/fo_pool_cuda.cu (kernels: fo_pool_kernels.cuh).
 *
 * Plain C so that PyTorch reaches it through ctypes (qrnn_deploy/nn/_cuda_kernels.py) and the
 * onnxruntime CUDA op and the TensorRT plugin call it from C++. Every function launches on the
 * given stream (a cudaStream_t passed as void*; null = the legacy default stream), never
 * synchronises, and returns a cudaError_t value (0 = success; the launch error, if any).
 *
 * Shapes (DESIGN.md section 2): gates [T, B, P*H] ([B, T, P*H] if batch_first), h the same with
 * H on the last axis, c0 / c_last / grad_c0 / grad_c_last [B, H]; all contiguous.
 * dtype codes: QRNN_F32, QRNN_F16, QRNN_BF16, QRNN_F64. `state_dtype` is the type of c0, c_last,
 * grad_c_last and grad_c0: either `dtype` or QRNN_F32 (float32 state beside 16-bit gates).
 */
#ifndef QRNN_FO_POOL_CUDA_H
#define QRNN_FO_POOL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { QRNN_F32 = 0, QRNN_F16 = 1, QRNN_BF16 = 2, QRNN_F64 = 3 };

/* h, c_last = FoPool(gates, c0). c0 may be NULL (zeros); c_last may be NULL. */
int qrnn_fo_pool_cuda_forward(int dtype, int state_dtype, const void* gates, const void* c0, void* h,
                              void* c_last, int64_t T, int64_t B, int64_t H, int P, int batch_first,
                              int reverse, void* stream);

/* Bytes of device workspace qrnn_fo_pool_cuda_backward needs (the recomputed cell states). */
size_t qrnn_fo_pool_cuda_backward_workspace_size(int dtype, int64_t T, int64_t B, int64_t H);

/* grad_gates, grad_c0 = d(h, c_last)/d(gates, c0) applied to (grad_h, grad_c_last).
 * grad_c_last, c0 and grad_c0 may be NULL (zeros / no c0). */
int qrnn_fo_pool_cuda_backward(int dtype, int state_dtype, const void* grad_h, const void* grad_c_last,
                               const void* gates, const void* c0, void* grad_gates, void* grad_c0,
                               void* workspace, int64_t T, int64_t B, int64_t H, int P,
                               int batch_first, int reverse, void* stream);

/* The CUDA runtime's message for an error code returned above. */
const char* qrnn_fo_pool_cuda_error_string(int code);

/* Threads per block of the FoPool kernels (QRNN_FO_POOL_BLOCK), for tests. */
int qrnn_fo_pool_cuda_block_size(void);

/* Columns each thread walks for gates of `dtype` with B * H columns and buffers aligned to 256
 * bytes (as CUDA allocations are): 1, or 2 (float32) / 4 (16-bit) where H allows it and the launch
 * keeps enough threads; less-aligned buffers get 1. For tests and benchmarks; 0 for an unknown dtype. */
int qrnn_fo_pool_cuda_columns_per_thread(int dtype, int64_t B, int64_t H);

#ifdef __cplusplus
}
#endif

#endif /* QRNN_FO_POOL_CUDA_H */
