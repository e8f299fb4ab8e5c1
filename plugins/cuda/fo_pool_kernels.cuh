// FoPool CUDA kernels (DESIGN.md section 2): the one kernel source of the project.
//
// Included by every CUDA user: plugins/cuda/fo_pool_cuda.cu (the C ABI that PyTorch loads with
// ctypes, and the host launchers the onnxruntime CUDA op and the TensorRT plugin call) and
// plugins/cuda/fo_pool_aot.cu (extern "C" entry points whose PTX TensorRT's ahead-of-time plugin
// embeds). Nothing here is copied anywhere else.
//
// Work split: one thread owns one column (b, h) and walks time; columns are independent, so
// there is no synchronisation at all. Consecutive threads own consecutive h, so every load of a
// gate slice and every store of h is coalesced in both layouts ([T, B, *] and [B, T, *]).
// The recurrence is latency bound per column: each thread first issues the loads of
// QRNN_FO_POOL_UNROLL steps (they do not depend on c), then runs the cheap arithmetic, so that
// several loads are in flight per thread.
//
// Arithmetic is float32 for float32 / float16 / bfloat16 storage (float64 for float64), exactly
// as the reference fo_pool_ref and the PyTorch path compute.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

// Threads per block of every FoPool kernel, and the launch rule (grid = ceil(B*H / block), one
// dimension, no dynamic shared memory). qrnn_deploy/export/tensorrt_aot.py reads these two
// numbers from this file, so the ahead-of-time plugin launches exactly as the C++ users do.
// Only scripts/gpu_check.py's tuning sweep defines them otherwise (-D, into its own builds).
#ifndef QRNN_FO_POOL_BLOCK
#define QRNN_FO_POOL_BLOCK 128
#endif
#ifndef QRNN_FO_POOL_UNROLL
#define QRNN_FO_POOL_UNROLL 4
#endif

// Everything but the __global__ wrappers is host-callable too: tests/test_cuda_build.py runs the
// very same column functions on the CPU (plugins/cuda/fo_pool_host_check.cu) against the
// reference, which is how the kernel arithmetic is tested on machines without a GPU.
#define QRNN_HD __host__ __device__ __forceinline__

namespace qrnn {
namespace cuda {

// ---- storage <-> arithmetic ------------------------------------------------------------------

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

QRNN_HD float load_as_acc(const float* p) { return *p; }
QRNN_HD double load_as_acc(const double* p) { return *p; }
QRNN_HD float load_as_acc(const __half* p) { return __half2float(*p); }
QRNN_HD float load_as_acc(const __nv_bfloat16* p) { return __bfloat162float(*p); }

QRNN_HD void store_from_acc(float* p, float v) { *p = v; }
QRNN_HD void store_from_acc(double* p, double v) { *p = v; }
QRNN_HD void store_from_acc(__half* p, float v) { *p = __float2half_rn(v); }
QRNN_HD void store_from_acc(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// sigmoid(+inf) = 1 and sigmoid(-inf) = 0 exactly: zoneout writes f = +inf (qrnn_deploy/nn/layers.py).
QRNN_HD float sigmoid_acc(float x) { return 1.0f / (1.0f + expf(-x)); }
QRNN_HD double sigmoid_acc(double x) { return 1.0 / (1.0 + exp(-x)); }
QRNN_HD float tanh_acc(float x) { return tanhf(x); }
QRNN_HD double tanh_acc(double x) { return tanh(x); }

// ---- shapes ----------------------------------------------------------------------------------

// Where step t of column (b, h) lives. Gates [T, B, P*H] or [B, T, P*H]; h [T, B, H] or [B, T, H].
struct FoPoolShape {
  int64_t T, B, H;
  int32_t P;            // 2 'f', 3 'fo', 4 'ifo'
  int32_t batch_first;  // 0: [T, B, *]; 1: [B, T, *]
  int32_t reverse;      // 1: process t = T-1 .. 0

  __host__ __device__ int64_t columns() const { return B * H; }
  // Element offset of (t, b) rows, in units of a row of width `width` (P*H for gates, H for h).
  __host__ __device__ int64_t row(int64_t t, int64_t b) const { return batch_first ? b * T + t : t * B + b; }
  __host__ __device__ int64_t step_to_time(int64_t s) const { return reverse ? T - 1 - s : s; }
};

// ---- forward ---------------------------------------------------------------------------------

// h_t = o_t * c_t (or c_t for 'f'), c_t = f_t c_{t-1} + (1 - f_t) z_t (or + i_t z_t for 'ifo').
// c0 may be null (zeros); c_last may be null (not wanted). S, the type of c0 / c_last, is T or
// float: a float32 state beside 16-bit gates stays at full precision, as in the reference.
template <typename T, typename S>
QRNN_HD void fo_pool_forward_column(const T* __restrict__ gates, const S* __restrict__ c0,
                                                       T* __restrict__ h, S* __restrict__ c_last,
                                                       const FoPoolShape sh, int64_t col) {
  using A = typename Acc<T>::type;
  const int64_t b = col / sh.H, j = col - b * sh.H;
  const int64_t H = sh.H, PH = sh.P * sh.H;
  A c = c0 ? static_cast<A>(load_as_acc(c0 + col)) : A(0);
  for (int64_t s0 = 0; s0 < sh.T; s0 += QRNN_FO_POOL_UNROLL) {
    A g[QRNN_FO_POOL_UNROLL][4];
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      if (s0 + u < sh.T) {
        const T* gp = gates + sh.row(sh.step_to_time(s0 + u), b) * PH + j;
        g[u][0] = load_as_acc(gp);
        g[u][1] = load_as_acc(gp + H);
        g[u][2] = sh.P >= 3 ? load_as_acc(gp + 2 * H) : A(0);
        g[u][3] = sh.P == 4 ? load_as_acc(gp + 3 * H) : A(0);
      }
    }
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      if (s0 + u < sh.T) {
        const A z = tanh_acc(g[u][0]);
        const A f = sigmoid_acc(g[u][1]);
        c = sh.P == 4 ? f * c + sigmoid_acc(g[u][3]) * z : f * c + (A(1) - f) * z;
        const A out = sh.P == 2 ? c : sigmoid_acc(g[u][2]) * c;
        store_from_acc(h + sh.row(sh.step_to_time(s0 + u), b) * H + j, out);
      }
    }
  }
  if (c_last) store_from_acc(c_last + col, c);
}

template <typename T, typename S>
__global__ void __launch_bounds__(QRNN_FO_POOL_BLOCK)
fo_pool_forward_kernel(const T* __restrict__ gates, const S* __restrict__ c0, T* __restrict__ h,
                       S* __restrict__ c_last, const FoPoolShape sh) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= sh.columns()) return;
  fo_pool_forward_column<T, S>(gates, c0, h, c_last, sh, col);
}

// ---- backward --------------------------------------------------------------------------------

// Gradients of (h, c_last) w.r.t. (gates, c0), the explicit scan of _fo_pool_backward_impl:
//   dc_s   = dh_s * o_s (dh_s for 'f') + f_{s+1} dc_{s+1}, with dc_{T-1} also getting dc_last
//   dz = dc (1 - f)  [dc i],  df = dc (c_{s-1} - z)  [dc c_{s-1}],  di = dc z,  do = dh c_s
//   d(pre-activation) = dz (1 - z^2), df f (1 - f), do o (1 - o), di i (1 - i);  dc0 = f_0 dc_0
// (s counts processing steps; with reverse=1, step s is time T-1-s).
//
// The reverse walk needs c_{s-1} at every step. This kernel recomputes the forward scan first
// and keeps c_s in `workspace` ([T, B*H] of the arithmetic type, written and read back by the
// same thread, so no synchronisation): the op keeps only (gates, c0) for backward, as on CPU,
// so training memory is the same on both devices, at the price of a second read of the gates.
// Inverting the recurrence (c_{s-1} = (c_s - (1-f) z) / f) would avoid the workspace but is
// unstable when f is near 0, so it is not used.
template <typename T, typename S>
QRNN_HD void fo_pool_backward_column(
    const T* __restrict__ grad_h, const S* __restrict__ grad_c_last, const T* __restrict__ gates,
    const S* __restrict__ c0, T* __restrict__ grad_gates, S* __restrict__ grad_c0,
    typename Acc<T>::type* __restrict__ workspace, const FoPoolShape sh, int64_t col) {
  using A = typename Acc<T>::type;
  const int64_t b = col / sh.H, j = col - b * sh.H;
  const int64_t H = sh.H, PH = sh.P * sh.H, n = sh.columns();
  const A c_init = c0 ? static_cast<A>(load_as_acc(c0 + col)) : A(0);

  // Pass 1: the forward scan, keeping every c_s.
  A c = c_init;
  for (int64_t s0 = 0; s0 < sh.T; s0 += QRNN_FO_POOL_UNROLL) {
    A gz[QRNN_FO_POOL_UNROLL], gf[QRNN_FO_POOL_UNROLL], gi[QRNN_FO_POOL_UNROLL];
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      if (s0 + u < sh.T) {
        const T* gp = gates + sh.row(sh.step_to_time(s0 + u), b) * PH + j;
        gz[u] = load_as_acc(gp);
        gf[u] = load_as_acc(gp + H);
        gi[u] = sh.P == 4 ? load_as_acc(gp + 3 * H) : A(0);
      }
    }
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      if (s0 + u < sh.T) {
        const A z = tanh_acc(gz[u]);
        const A f = sigmoid_acc(gf[u]);
        c = sh.P == 4 ? f * c + sigmoid_acc(gi[u]) * z : f * c + (A(1) - f) * z;
        workspace[(s0 + u) * n + col] = c;
      }
    }
  }

  // Pass 2: walk the steps back, QRNN_FO_POOL_UNROLL steps of loads at a time (none depends on
  // the carried gradient). `carry` = f_{s+1} dc_{s+1} (dc_last before the last step); `c_s`
  // is carried down too, so each step reads one cell state, c_{s-1}.
  A carry = grad_c_last ? static_cast<A>(load_as_acc(grad_c_last + col)) : A(0);
  A c_s = c;
  for (int64_t s0 = sh.T - 1; s0 >= 0; s0 -= QRNN_FO_POOL_UNROLL) {
    A g[QRNN_FO_POOL_UNROLL][4], dh[QRNN_FO_POOL_UNROLL], cp[QRNN_FO_POOL_UNROLL];
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      const int64_t s = s0 - u;
      if (s >= 0) {
        const int64_t r = sh.row(sh.step_to_time(s), b);
        const T* gp = gates + r * PH + j;
        g[u][0] = load_as_acc(gp);
        g[u][1] = load_as_acc(gp + H);
        g[u][2] = sh.P >= 3 ? load_as_acc(gp + 2 * H) : A(0);
        g[u][3] = sh.P == 4 ? load_as_acc(gp + 3 * H) : A(0);
        dh[u] = load_as_acc(grad_h + r * H + j);
        cp[u] = s > 0 ? workspace[(s - 1) * n + col] : c_init;
      }
    }
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      const int64_t s = s0 - u;
      if (s >= 0) {
        T* dgp = grad_gates + sh.row(sh.step_to_time(s), b) * PH + j;
        const A z = tanh_acc(g[u][0]);
        const A f = sigmoid_acc(g[u][1]);
        const A c_prev = cp[u];
        A dc = carry;
        if (sh.P >= 3) {
          const A o = sigmoid_acc(g[u][2]);
          dc += dh[u] * o;
          store_from_acc(dgp + 2 * H, dh[u] * c_s * o * (A(1) - o));
        } else {
          dc += dh[u];
        }
        if (sh.P == 4) {
          const A i = sigmoid_acc(g[u][3]);
          store_from_acc(dgp, dc * i * (A(1) - z * z));
          store_from_acc(dgp + H, dc * c_prev * f * (A(1) - f));
          store_from_acc(dgp + 3 * H, dc * z * i * (A(1) - i));
        } else {
          store_from_acc(dgp, dc * (A(1) - f) * (A(1) - z * z));
          store_from_acc(dgp + H, dc * (c_prev - z) * f * (A(1) - f));
        }
        carry = f * dc;
        c_s = c_prev;
      }
    }
  }
  if (grad_c0) store_from_acc(grad_c0 + col, carry);
}

template <typename T, typename S>
__global__ void __launch_bounds__(QRNN_FO_POOL_BLOCK)
fo_pool_backward_kernel(const T* __restrict__ grad_h, const S* __restrict__ grad_c_last,
                        const T* __restrict__ gates, const S* __restrict__ c0, T* __restrict__ grad_gates,
                        S* __restrict__ grad_c0, typename Acc<T>::type* __restrict__ workspace,
                        const FoPoolShape sh) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= sh.columns()) return;
  fo_pool_backward_column<T, S>(grad_h, grad_c_last, gates, c0, grad_gates, grad_c0, workspace, sh, col);
}

// The launch rule shared by every host launcher (and mirrored, by reading the macros above, in
// the ahead-of-time plugin): one thread per column.
__host__ __forceinline__ unsigned int fo_pool_grid(int64_t columns) {
  return static_cast<unsigned int>((columns + QRNN_FO_POOL_BLOCK - 1) / QRNN_FO_POOL_BLOCK);
}

}  // namespace cuda
}  // namespace qrnn
