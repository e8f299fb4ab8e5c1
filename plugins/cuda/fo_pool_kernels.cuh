// FoPool CUDA kernels (DESIGN.md section 2): the one kernel source of the project.
//
// Included by every CUDA user: plugins/cuda/fo_pool_cuda.cu (the C ABI that PyTorch loads with
// ctypes, and the host launchers the onnxruntime CUDA op and the TensorRT plugin call) and
// plugins/cuda/fo_pool_aot.cu (extern "C" entry points whose PTX TensorRT's ahead-of-time plugin
// embeds). Nothing here is copied anywhere else.
//
// Work split: one thread owns one column (b, h), or V adjacent ones (see Pack), and walks time;
// columns are independent, so there is no synchronisation at all. Consecutive threads own
// consecutive h, so every load of a gate slice and every store of h is coalesced in both layouts
// ([T, B, *] and [B, T, *]). Each thread first issues the loads of QRNN_FO_POOL_UNROLL steps
// (they do not depend on c), then runs the arithmetic, so that several loads are in flight per
// thread; it walks time by pointer steps (one add per step, no 64-bit index products).
//
// Arithmetic is float32 for float32 / float16 / bfloat16 storage (float64 for float64), as the
// reference fo_pool_ref and the PyTorch path compute. On the GPU, sigmoid and tanh are written
// with the hardware exp2 and a fast reciprocal (__expf, __fdividef): a few instructions instead of
// libm's tens, which decide the speed here (scripts/gpu_check.py's sweep measures both).
// Their absolute error stays below about 1e-6 (see sigmoid_acc for +-inf, which zoneout writes);
// QRNN_FO_POOL_ACCURATE_MATH=1 builds libm's expf / tanhf instead. The host build (the CPU check)
// uses libm with the same formulas.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include <type_traits>

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
// Widest access a thread makes to a gate / h / gradient slice (bytes), and the fewest threads a
// launch keeps when it gives a thread several columns: see Pack below.
#ifndef QRNN_FO_POOL_VEC_BYTES
#define QRNN_FO_POOL_VEC_BYTES 8
#endif
#ifndef QRNN_FO_POOL_MIN_THREADS
#define QRNN_FO_POOL_MIN_THREADS 65536
#endif
// Blocks of QRNN_FO_POOL_BLOCK threads per multiprocessor the one-column kernels are compiled to
// fit (__launch_bounds__'s minimum, which caps their registers; 0 leaves nvcc free). Every column
// of a thread walks all of T, so a launch that needs a second wave of blocks can take twice as
// long. Left free, nvcc 13 gives the backward 139 registers (3 blocks); at 8 it takes 64 and does
// not spill: 2.0x faster backward at 1024x64x2048 float16 on an H200, within 6% elsewhere. The
// forward (71 registers, 7 blocks) spills at 8: 1.7x faster at that size but up to 1.42x slower
// on small launches, which are the common case, so it is left free (docs/benchmarks-gpu.md, run 4).
// float64 is never capped: its backward would spill.
#ifndef QRNN_FO_POOL_MIN_BLOCKS_FWD
#define QRNN_FO_POOL_MIN_BLOCKS_FWD 0
#endif
#ifndef QRNN_FO_POOL_MIN_BLOCKS_BWD
#define QRNN_FO_POOL_MIN_BLOCKS_BWD 8
#endif
#ifndef QRNN_FO_POOL_ACCURATE_MATH
#define QRNN_FO_POOL_ACCURATE_MATH 0
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

// Zoneout writes f = +inf (qrnn_deploy/nn/layers.py): sigmoid(+inf) = 1 and sigmoid(-inf) = 0 keep
// a zoned-out unit's cell and give it zero gradient. With libm they are exact. The fast forms give
// exp(+inf) = inf, exp(-inf) = 0 and x / inf = 0 exactly (PTX's special-value rules), so sigmoid(-inf)
// = 0 and tanh(+inf) = 1 are exact; sigmoid(+inf) and tanh(-inf) need the approximate 1 / 1 to be
// exactly 1, which PTX bounds only to 2 ulp (not checked on a GPU): at worst f is an ulp below 1,
// as in the native CPU kernel (nn/layers.py). Elsewhere tanh(x) = 1 - 2 / (1 + e^{2x}) is within
// ~1e-7 (absolute), and NaN stays NaN.
#if defined(__CUDA_ARCH__) && !QRNN_FO_POOL_ACCURATE_MATH
QRNN_HD float sigmoid_acc(float x) { return __fdividef(1.0f, 1.0f + __expf(-x)); }
QRNN_HD float tanh_acc(float x) { return 1.0f - __fdividef(2.0f, 1.0f + __expf(2.0f * x)); }
#else
QRNN_HD float sigmoid_acc(float x) { return 1.0f / (1.0f + expf(-x)); }
QRNN_HD float tanh_acc(float x) { return tanhf(x); }
#endif
QRNN_HD double sigmoid_acc(double x) { return 1.0 / (1.0 + exp(-x)); }
QRNN_HD double tanh_acc(double x) { return tanh(x); }

// ---- vectors of adjacent columns -------------------------------------------------------------

// One thread owns V adjacent columns (b, j .. j+V-1) of one batch row, so each step's slice of a
// gate is one vector access of V * sizeof(T) bytes instead of V scalar ones. V is 1 or the widest
// the storage allows (QRNN_FO_POOL_VEC_BYTES / sizeof(T): 2 float32, 4 float16 / bfloat16 columns).
// The host launchers take the wide form only when V divides H, every pointer is aligned for it
// (fo_pool_vector_width) and the launch still has QRNN_FO_POOL_MIN_THREADS threads or more
// (fo_pool_launch_width): fewer, wider threads lose more to latency than they gain (measured on an
// H200, docs/benchmarks-gpu.md).
template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

template <int V, typename T, typename A>
QRNN_HD void load_vec(const T* __restrict__ p, A (&out)[V]) {
  const Pack<T, V> pk = *reinterpret_cast<const Pack<T, V>*>(p);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = static_cast<A>(load_as_acc(&pk.v[e]));
}

template <int V, typename T, typename A>
QRNN_HD void store_vec(T* __restrict__ p, const A (&in)[V]) {
  Pack<T, V> pk;
#pragma unroll
  for (int e = 0; e < V; ++e) store_from_acc(&pk.v[e], in[e]);
  *reinterpret_cast<Pack<T, V>*>(p) = pk;
}

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
  // Rows between processing step s and s + 1 (negative when reverse).
  __host__ __device__ int64_t row_step() const {
    const int64_t one = batch_first ? 1 : B;
    return reverse ? -one : one;
  }
};

// ---- forward ---------------------------------------------------------------------------------

// h_t = o_t * c_t (or c_t for 'f'), c_t = f_t c_{t-1} + (1 - f_t) z_t (or + i_t z_t for 'ifo').
// c0 may be null (zeros); c_last may be null (not wanted). S, the type of c0 / c_last, is T or
// float: a float32 state beside 16-bit gates stays at full precision, as in the reference.
// `group` g owns columns g*V .. g*V+V-1 (H % V == 0, so they share one batch row b).
template <typename T, typename S, int V>
QRNN_HD void fo_pool_forward_group(const T* __restrict__ gates, const S* __restrict__ c0,
                                   T* __restrict__ h, S* __restrict__ c_last, const FoPoolShape sh,
                                   int64_t group) {
  using A = typename Acc<T>::type;
  const int64_t col = group * V, b = col / sh.H, j = col - b * sh.H;
  const int64_t H = sh.H, PH = sh.P * sh.H;
  const int64_t r0 = sh.row(sh.step_to_time(0), b), dr = sh.row_step();
  // Offsets of step s0's slices; one step is dg (gates) / dh (h) elements, negative when reverse.
  int64_t go = r0 * PH + j, ho = r0 * H + j;
  const int64_t dg = dr * PH, dh = dr * H;
  A c[V];
#pragma unroll
  for (int v = 0; v < V; ++v) c[v] = c0 ? static_cast<A>(load_as_acc(c0 + col + v)) : A(0);
  for (int64_t s0 = 0; s0 < sh.T; s0 += QRNN_FO_POOL_UNROLL) {
    A g[QRNN_FO_POOL_UNROLL][4][V];
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      if (s0 + u < sh.T) {
        const T* q = gates + (go + u * dg);
        load_vec<V>(q, g[u][0]);
        load_vec<V>(q + H, g[u][1]);
        if (sh.P >= 3) load_vec<V>(q + 2 * H, g[u][2]);
        if (sh.P == 4) load_vec<V>(q + 3 * H, g[u][3]);
      }
    }
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      if (s0 + u < sh.T) {
        A out[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const A z = tanh_acc(g[u][0][v]);
          const A f = sigmoid_acc(g[u][1][v]);
          c[v] = sh.P == 4 ? f * c[v] + sigmoid_acc(g[u][3][v]) * z : f * c[v] + (A(1) - f) * z;
          out[v] = sh.P == 2 ? c[v] : sigmoid_acc(g[u][2][v]) * c[v];
        }
        store_vec<V>(h + (ho + u * dh), out);
      }
    }
    go += QRNN_FO_POOL_UNROLL * dg;
    ho += QRNN_FO_POOL_UNROLL * dh;
  }
  if (c_last) {
#pragma unroll
    for (int v = 0; v < V; ++v) store_from_acc(c_last + col + v, c[v]);
  }
}

// One column (V = 1): what the TensorRT ahead-of-time entry points run.
template <typename T, typename S>
QRNN_HD void fo_pool_forward_column(const T* __restrict__ gates, const S* __restrict__ c0,
                                    T* __restrict__ h, S* __restrict__ c_last, const FoPoolShape sh,
                                    int64_t col) {
  fo_pool_forward_group<T, S, 1>(gates, c0, h, c_last, sh, col);
}

template <typename T, typename S, int V>
__global__ void __launch_bounds__(QRNN_FO_POOL_BLOCK, V == 1 ? QRNN_FO_POOL_MIN_BLOCKS_FWD : 0)
fo_pool_forward_kernel(const T* __restrict__ gates, const S* __restrict__ c0, T* __restrict__ h,
                       S* __restrict__ c_last, const FoPoolShape sh) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group * V >= sh.columns()) return;
  fo_pool_forward_group<T, S, V>(gates, c0, h, c_last, sh, group);
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
template <typename T, typename S, int V>
QRNN_HD void fo_pool_backward_group(
    const T* __restrict__ grad_h, const S* __restrict__ grad_c_last, const T* __restrict__ gates,
    const S* __restrict__ c0, T* __restrict__ grad_gates, S* __restrict__ grad_c0,
    typename Acc<T>::type* __restrict__ workspace, const FoPoolShape sh, int64_t group) {
  using A = typename Acc<T>::type;
  const int64_t col = group * V, b = col / sh.H, j = col - b * sh.H;
  const int64_t H = sh.H, PH = sh.P * sh.H, n = sh.columns();
  const int64_t dr = sh.row_step(), dg = dr * PH, dhs = dr * H;
  A c_init[V], c[V];
#pragma unroll
  for (int v = 0; v < V; ++v) c[v] = c_init[v] = c0 ? static_cast<A>(load_as_acc(c0 + col + v)) : A(0);

  // Pass 1: the forward scan, keeping every c_s (workspace row s, column col).
  {
    int64_t go = sh.row(sh.step_to_time(0), b) * PH + j, wo = col;
    for (int64_t s0 = 0; s0 < sh.T; s0 += QRNN_FO_POOL_UNROLL) {
      A gz[QRNN_FO_POOL_UNROLL][V], gf[QRNN_FO_POOL_UNROLL][V], gi[QRNN_FO_POOL_UNROLL][V];
#pragma unroll
      for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
        if (s0 + u < sh.T) {
          const T* q = gates + (go + u * dg);
          load_vec<V>(q, gz[u]);
          load_vec<V>(q + H, gf[u]);
          if (sh.P == 4) load_vec<V>(q + 3 * H, gi[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
        if (s0 + u < sh.T) {
#pragma unroll
          for (int v = 0; v < V; ++v) {
            const A z = tanh_acc(gz[u][v]);
            const A f = sigmoid_acc(gf[u][v]);
            c[v] = sh.P == 4 ? f * c[v] + sigmoid_acc(gi[u][v]) * z : f * c[v] + (A(1) - f) * z;
          }
          store_vec<V>(workspace + (wo + u * n), c);
        }
      }
      go += QRNN_FO_POOL_UNROLL * dg;
      wo += QRNN_FO_POOL_UNROLL * n;
    }
  }

  // Pass 2: walk the steps back, QRNN_FO_POOL_UNROLL steps of loads at a time (none depends on
  // the carried gradient). `carry` = f_{s+1} dc_{s+1} (dc_last before the last step); `c_s`
  // is carried down too, so each step reads one cell state, c_{s-1}. Offsets start at step
  // T-1 and move back one step (-dg, -dhs, -n) at a time.
  A carry[V], c_s[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    carry[v] = grad_c_last ? static_cast<A>(load_as_acc(grad_c_last + col + v)) : A(0);
    c_s[v] = c[v];
  }
  if (sh.T == 0) {
    if (grad_c0) {
#pragma unroll
      for (int v = 0; v < V; ++v) store_from_acc(grad_c0 + col + v, carry[v]);
    }
    return;
  }
  const int64_t rl = sh.row(sh.step_to_time(sh.T - 1), b);
  int64_t go = rl * PH + j, ho = rl * H + j;
  int64_t wo = (sh.T - 2) * n + col;  // c_{s-1} of step s = T-1 (read only for s > 0)
  for (int64_t s0 = sh.T - 1; s0 >= 0; s0 -= QRNN_FO_POOL_UNROLL) {
    A g[QRNN_FO_POOL_UNROLL][4][V], dh[QRNN_FO_POOL_UNROLL][V], cp[QRNN_FO_POOL_UNROLL][V];
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      const int64_t s = s0 - u;
      if (s >= 0) {
        const T* q = gates + (go - u * dg);
        load_vec<V>(q, g[u][0]);
        load_vec<V>(q + H, g[u][1]);
        if (sh.P >= 3) load_vec<V>(q + 2 * H, g[u][2]);
        if (sh.P == 4) load_vec<V>(q + 3 * H, g[u][3]);
        load_vec<V>(grad_h + (ho - u * dhs), dh[u]);
        if (s > 0) {
          load_vec<V>(workspace + (wo - u * n), cp[u]);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) cp[u][v] = c_init[v];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < QRNN_FO_POOL_UNROLL; ++u) {
      const int64_t s = s0 - u;
      if (s >= 0) {
        A dz[V], df[V], d_o[V], di[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          const A z = tanh_acc(g[u][0][v]);
          const A f = sigmoid_acc(g[u][1][v]);
          const A c_prev = cp[u][v];
          A dc = carry[v];
          if (sh.P >= 3) {
            const A o = sigmoid_acc(g[u][2][v]);
            dc += dh[u][v] * o;
            d_o[v] = dh[u][v] * c_s[v] * o * (A(1) - o);
          } else {
            dc += dh[u][v];
          }
          if (sh.P == 4) {
            const A i = sigmoid_acc(g[u][3][v]);
            dz[v] = dc * i * (A(1) - z * z);
            df[v] = dc * c_prev * f * (A(1) - f);
            di[v] = dc * z * i * (A(1) - i);
          } else {
            dz[v] = dc * (A(1) - f) * (A(1) - z * z);
            df[v] = dc * (c_prev - z) * f * (A(1) - f);
          }
          carry[v] = f * dc;
          c_s[v] = c_prev;
        }
        T* q = grad_gates + (go - u * dg);
        store_vec<V>(q, dz);
        store_vec<V>(q + H, df);
        if (sh.P >= 3) store_vec<V>(q + 2 * H, d_o);
        if (sh.P == 4) store_vec<V>(q + 3 * H, di);
      }
    }
    go -= QRNN_FO_POOL_UNROLL * dg;
    ho -= QRNN_FO_POOL_UNROLL * dhs;
    wo -= QRNN_FO_POOL_UNROLL * n;
  }
  if (grad_c0) {
#pragma unroll
    for (int v = 0; v < V; ++v) store_from_acc(grad_c0 + col + v, carry[v]);
  }
}

template <typename T, typename S, int V>
__global__ void __launch_bounds__(QRNN_FO_POOL_BLOCK,
                                  (V == 1 && !std::is_same<T, double>::value) ? QRNN_FO_POOL_MIN_BLOCKS_BWD : 0)
fo_pool_backward_kernel(const T* __restrict__ grad_h, const S* __restrict__ grad_c_last,
                        const T* __restrict__ gates, const S* __restrict__ c0, T* __restrict__ grad_gates,
                        S* __restrict__ grad_c0, typename Acc<T>::type* __restrict__ workspace,
                        const FoPoolShape sh) {
  const int64_t group = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (group * V >= sh.columns()) return;
  fo_pool_backward_group<T, S, V>(grad_h, grad_c_last, gates, c0, grad_gates, grad_c0, workspace, sh, group);
}

// ---- launch rules (host) ---------------------------------------------------------------------

// One thread per group of V columns (V = 1 in the ahead-of-time plugin, whose grid
// qrnn_deploy/export/tensorrt_aot.py mirrors by reading QRNN_FO_POOL_BLOCK above).
__host__ __forceinline__ unsigned int fo_pool_grid(int64_t columns, int V = 1) {
  const int64_t groups = columns / V;
  return static_cast<unsigned int>((groups + QRNN_FO_POOL_BLOCK - 1) / QRNN_FO_POOL_BLOCK);
}

// The wide V of storage T: QRNN_FO_POOL_VEC_BYTES / sizeof(T) rounded down to a power of two,
// at most 8, at least 1.
template <typename T> __host__ __device__ constexpr int fo_pool_max_vector() {
  return QRNN_FO_POOL_VEC_BYTES / static_cast<int>(sizeof(T)) >= 8   ? 8
         : QRNN_FO_POOL_VEC_BYTES / static_cast<int>(sizeof(T)) >= 4 ? 4
         : QRNN_FO_POOL_VEC_BYTES / static_cast<int>(sizeof(T)) >= 2 ? 2
                                                                      : 1;
}

// `vmax` if it divides H and every pointer in `ptrs` (of elements of `sizes[i]` bytes; null ones
// are skipped) is aligned to vmax elements, else 1.
__host__ inline int fo_pool_vector_width(int64_t H, int vmax, const void* const* ptrs, const int* sizes, int count) {
  if (vmax <= 1 || H % vmax != 0) return 1;
  for (int k = 0; k < count; ++k) {
    if (reinterpret_cast<uintptr_t>(ptrs[k]) % static_cast<uintptr_t>(vmax * sizes[k]) != 0) return 1;
  }
  return vmax;
}

// What the launchers run: fo_pool_vector_width, kept only while the launch still has
// QRNN_FO_POOL_MIN_THREADS threads (columns / V) or more.
__host__ inline int fo_pool_launch_width(int64_t columns, int64_t H, int vmax, const void* const* ptrs,
                                         const int* sizes, int count) {
  const int v = fo_pool_vector_width(H, vmax, ptrs, sizes, count);
  return (v > 1 && columns / v >= QRNN_FO_POOL_MIN_THREADS) ? v : 1;
}

// Calls f(std::integral_constant<int, V>) with V = v when v is storage T's wide V, else V = 1:
// only those two are instantiated.
template <typename T, typename F>
__host__ auto with_vector_width(int v, F&& f) {
  if constexpr (fo_pool_max_vector<T>() > 1) {
    if (v == fo_pool_max_vector<T>()) return f(std::integral_constant<int, fo_pool_max_vector<T>()>{});
  }
  return f(std::integral_constant<int, 1>{});
}

}  // namespace cuda
}  // namespace qrnn
