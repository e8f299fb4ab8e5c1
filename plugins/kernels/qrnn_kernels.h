/* libqrnn_kernels: the shared FoPool CPU kernel behind a plain C ABI (no onnxruntime, no PyTorch).
 * Used by qrnn_deploy/nn/_cpu_kernels.py through ctypes; any C caller can use it.
 *
 * Layout: gates [T, B, P*H] packed [Z | F | O | I] (batch_first != 0: [B, T, P*H]), h like gates
 * with H on the last axis, c0 / c_last / grad_c_last / grad_c0 [B, H]; all C-contiguous float32.
 * P = 2 ('f'), 3 ('fo'), 4 ('ifo'). reverse != 0 processes t = T-1 .. 0. threads <= 0 means 1.
 * Returns 0 on success, a negative code on bad arguments (nothing written then).
 */
#ifndef QRNN_KERNELS_H_
#define QRNN_KERNELS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QRNN_KERNELS_ABI_VERSION 1

#if defined(__GNUC__)
#define QRNN_KERNELS_API __attribute__((visibility("default")))
#else
#define QRNN_KERNELS_API
#endif

QRNN_KERNELS_API int qrnn_kernels_abi_version(void);

/* h, c_last: outputs. c0 may be NULL (zeros). c_last may be NULL (not wanted). */
QRNN_KERNELS_API int qrnn_fo_pool_forward_f32(const float* gates, const float* c0, float* h, float* c_last,
                                              int64_t T, int64_t B, int64_t H, int P, int batch_first,
                                              int reverse, int threads);

/* Gradients of (h, c_last) w.r.t. (gates, c0). c0 may be NULL (zeros); grad_c0 may be NULL. */
QRNN_KERNELS_API int qrnn_fo_pool_backward_f32(const float* grad_h, const float* grad_c_last, const float* gates,
                                               const float* c0, float* grad_gates, float* grad_c0,
                                               int64_t T, int64_t B, int64_t H, int P, int batch_first,
                                               int reverse, int threads);

#ifdef __cplusplus
}
#endif

#endif /* QRNN_KERNELS_H_ */
