// libqrnn_kernels: C ABI wrappers around the shared FoPool CPU kernel (plugins/common).
#include "qrnn_kernels.h"

#include "../common/fo_pool_cpu.h"
#include "../common/thread_split.h"

using qrnn::fopool::Dims;

namespace {

bool make_dims(int64_t T, int64_t B, int64_t H, int P, int batch_first, int reverse, Dims* d) {
  if (T < 0 || B < 0 || H < 1 || P < 2 || P > 4) return false;
  d->T = T;
  d->B = B;
  d->H = H;
  d->P = P;
  d->batch_first = batch_first != 0;
  d->reverse = reverse != 0;
  return true;
}

}  // namespace

extern "C" int qrnn_kernels_abi_version(void) { return QRNN_KERNELS_ABI_VERSION; }

extern "C" int qrnn_fo_pool_forward_f32(const float* gates, const float* c0, float* h, float* c_last,
                                        int64_t T, int64_t B, int64_t H, int P, int batch_first,
                                        int reverse, int threads) {
  Dims d;
  if (!make_dims(T, B, H, P, batch_first, reverse, &d)) return -1;
  if ((T * B > 0 && (!gates || !h))) return -2;
  if (T == 0 || B == 0) {
    // Nothing to scan: c_last is the starting state.
    if (c_last) {
      for (int64_t k = 0; k < B * H; ++k) c_last[k] = c0 ? c0[k] : 0.0f;
    }
    return 0;
  }
  qrnn::fopool::ForwardArgs<float> a{gates, c0, h, c_last, d};
  qrnn::split_items(d.items(), d.useful_threads(threads), [&](int64_t b, int64_t e) { qrnn::fopool::forward_range_f32(a, b, e); });
  return 0;
}

extern "C" int qrnn_fo_pool_backward_f32(const float* grad_h, const float* grad_c_last, const float* gates,
                                         const float* c0, float* grad_gates, float* grad_c0,
                                         int64_t T, int64_t B, int64_t H, int P, int batch_first,
                                         int reverse, int threads) {
  Dims d;
  if (!make_dims(T, B, H, P, batch_first, reverse, &d)) return -1;
  if (B > 0 && !grad_c_last) return -2;
  if (T * B > 0 && (!gates || !grad_h || !grad_gates)) return -2;
  if (T == 0 || B == 0) {
    // c_last = c0: its gradient passes straight through; gates are empty.
    if (grad_c0) {
      for (int64_t k = 0; k < B * H; ++k) grad_c0[k] = grad_c_last[k];
    }
    return 0;
  }
  qrnn::fopool::BackwardArgs a{grad_h, grad_c_last, gates, c0, grad_gates, grad_c0, d};
  qrnn::split_items(d.items(), d.useful_threads(threads), [&](int64_t b, int64_t e) { qrnn::fopool::backward_range_f32(a, b, e); });
  return 0;
}
