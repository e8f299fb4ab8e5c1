// The FoPool CPU kernel (DESIGN.md section 2), written once and shared by every native plugin:
// the onnxruntime custom-op library (plugins/ort), the plain C ABI library used by PyTorch
// (plugins/kernels) and any later plugin. C++17, no onnxruntime, no PyTorch: the kernel bodies are
// here; plugins/common/fo_pool_cpu.cc compiles the entry points declared at the end.
//
//   gates [T, B, P*H] (batch_first: [B, T, P*H]), PRE-activation, packed [Z | F | O | I]
//   c_t = f_t * c_{t-1} + (1 - f_t) * z_t   ('f', 'fo')      c_t = f_t * c_{t-1} + i_t * z_t  ('ifo')
//   h_t = o_t * c_t ('fo', 'ifo')           h_t = c_t ('f')
//
// Work split: one "item" is one batch row b and one chunk of up to kChunk hidden units. Items are
// independent (the recurrence is elementwise in (b, h)), so callers hand one contiguous range of
// items to each thread; a range walks time in its outer loop (see kBlockItems), keeping the
// running cell states of its items in a buffer that stays in L2. The inner loop runs over the contiguous hidden units of one (t, b) row and is
// written branch-free (own exp / tanh / sigmoid, own fp16 conversions) so that the compiler
// vectorizes it: with GCC 12 -O3 every `for (j ...)` loop below is reported as "loop vectorized
// using 64 / 32 / 16 byte vectors" in the x86-64-v4 / x86-64-v3 / baseline clones
// (checked with -fopt-info-vec-optimized; see DEVELOPERS.md "Native plugins").
//
// Arithmetic is float32 for every storage type (fp16 storage, fp32 arithmetic).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

// QRNN_IVDEP: the rows one loop touches never overlap (distinct gate blocks / time rows), but
// GCC cannot prove it from local pointers and gives up after its alias-check budget.
#if defined(__clang__)
#define QRNN_INLINE inline __attribute__((always_inline))
#define QRNN_RESTRICT __restrict__
#define QRNN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#define QRNN_PREFETCH(p, rw) __builtin_prefetch((p), (rw), 3)
#elif defined(__GNUC__)
#define QRNN_INLINE inline __attribute__((always_inline))
#define QRNN_RESTRICT __restrict__
#define QRNN_IVDEP _Pragma("GCC ivdep")
#define QRNN_PREFETCH(p, rw) __builtin_prefetch((p), (rw), 3)
#else
#define QRNN_INLINE inline
#define QRNN_RESTRICT
#define QRNN_IVDEP
#define QRNN_PREFETCH(p, rw) ((void)(p))
#endif

namespace qrnn {
namespace fopool {

// Hidden units per work item (one batch row): its gate rows per step are a few KB.
constexpr int64_t kChunk = 256;
// Below this many (t, b, h) elements per thread (~0.1 ms of work) a thread costs more to start or
// wake than it saves: a streaming step (T = 1) runs on the calling thread.
constexpr int64_t kMinElementsPerThread = int64_t{1} << 16;

// ---------------------------------------------------------------------------------------------
// Problem description and validation (shared by every plugin so messages read the same).

struct Dims {
  int64_t T = 0, B = 0, H = 0;
  int P = 3;               // gate blocks: 2 'f', 3 'fo', 4 'ifo'
  bool batch_first = false;
  bool reverse = false;

  int64_t items() const { return B * ((H + kChunk - 1) / kChunk); }
  // How many of `threads` are worth using for this problem (>= 1).
  int useful_threads(int threads) const {
    const int64_t by_work = (T * B * H) / kMinElementsPerThread;
    int64_t n = threads < by_work ? threads : by_work;
    n = n < items() ? n : items();
    return n < 1 ? 1 : static_cast<int>(n);
  }
  // Offset (in elements) of row (t, b) of a [T, B, W] / [B, T, W] tensor, W = width.
  int64_t row(int64_t t, int64_t b, int64_t width) const {
    return (batch_first ? (b * T + t) : (t * B + b)) * width;
  }
};

// "f" -> 2, "fo" -> 3, "ifo" -> 4; 0 for anything else.
inline int gate_count(const std::string& pooling) {
  if (pooling == "f") return 2;
  if (pooling == "fo") return 3;
  if (pooling == "ifo") return 4;
  return 0;
}

inline std::string shape_str(const int64_t* shape, size_t rank) {
  std::string s = "[";
  for (size_t i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Checks gates (and c0 when has_c0) against the contract; fills dims (P, batch_first, reverse
// must be set by the caller). Returns "" when valid, else a message naming the input and shapes.
inline std::string check_shapes(const int64_t* gates_shape, size_t gates_rank, bool has_c0,
                                const int64_t* c0_shape, size_t c0_rank, Dims* d) {
  const char* layout = d->batch_first ? "[B, T, P*H]" : "[T, B, P*H]";
  if (gates_rank != 3) {
    return std::string("FoPool: input 'gates' must have rank 3 ") + layout + ", got shape " +
           shape_str(gates_shape, gates_rank);
  }
  for (size_t i = 0; i < 3; ++i) {
    if (gates_shape[i] < 0) return "FoPool: input 'gates' has a negative dimension: " + shape_str(gates_shape, 3);
  }
  const int64_t last = gates_shape[2];
  if (last % d->P != 0 || last == 0) {
    static const char* names[] = {"", "", "f", "fo", "ifo"};
    return "FoPool: last axis of input 'gates' (" + std::to_string(last) + ", shape " +
           shape_str(gates_shape, 3) + ") is not P*H with P = " + std::to_string(d->P) +
           " for pooling '" + names[d->P] + "' and H >= 1";
  }
  d->T = d->batch_first ? gates_shape[1] : gates_shape[0];
  d->B = d->batch_first ? gates_shape[0] : gates_shape[1];
  d->H = last / d->P;
  if (has_c0) {
    if (c0_rank != 2 || c0_shape[0] != d->B || c0_shape[1] != d->H) {
      return "FoPool: input 'c0' must be [B, H] = [" + std::to_string(d->B) + ", " + std::to_string(d->H) +
             "] for gates of shape " + shape_str(gates_shape, 3) + ", got shape " + shape_str(c0_shape, c0_rank);
    }
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Branch-free float math. std::exp / std::tanh are calls into libm that GCC does not vectorize
// without -ffast-math; these are plain arithmetic plus bit moves, accurate to a few ulp.

QRNN_INLINE float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
QRNN_INLINE uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// e^x for x <= 0 (every caller passes -|x|, so results lie in [0, 1] and no quotient formed
// from them can overflow). Below -87 the result is 0 (e^-87 is 1.6e-38, and there 2^n would
// leave the exponent range); a NaN stays NaN, so a diverged model's NaNs reach the outputs.
// x = n ln2 + r with |r| <= ln2/2; e^r by a degree-5 polynomial (Horner, 5 FMAs) fitted here for
// minimal relative error on that interval (7.5e-8; evaluated in float32 the whole function stays
// within 2.1e-7 relative of e^x on [-87, 0], checked on 4M points); 2^n from exponent bits.
QRNN_INLINE float exp_nonpos(float x) {
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (no -ffast-math)
  const float t = x * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  float r = x - n * 0.693359375f;     // ln2 split in a short high part (exact product) ...
  r = r - n * -2.12194440e-4f;        // ... and the remainder
  float p = 8.297654800e-03f;
  p = p * r + 4.191538319e-02f;
  p = p * r + 1.666757464e-01f;
  p = p * r + 4.999889433e-01f;
  p = p * r + 9.999997020e-01f;
  p = p * r + 1.000000119e+00f;
  // t's bits are 0x4B400000 + n (n in [-126, 0] sits in the low mantissa bits); shifting
  // (bits + 127) left by 23 drops the 0x4B4 part and leaves the biased exponent n + 127: 2^n
  // without a float -> int conversion.
  const float v = p * bits_to_float((float_to_bits(t) + 127u) << 23);
  return x < -87.0f ? 0.0f : v;  // last, so whatever the formula gave below -87 is dropped
}

// IEEE binary16 <-> float32, branch-free (selects only). Round to nearest even on the way down.
QRNN_INLINE float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t em = h & 0x7fffu;
  // Normal and subnormal halves: shift into a float's mantissa position and rescale by 2^112.
  float mag = bits_to_float(em << 13) * 5.192296858534828e+33f;
  uint32_t bits = float_to_bits(mag);
  bits = em >= 0x7c00u ? ((em << 13) | 0x7f800000u) : bits;  // inf / nan
  return bits_to_float(bits | sign);
}

QRNN_INLINE uint16_t float_to_half(float x) {
  uint32_t f = float_to_bits(x);
  uint32_t sign = f & 0x80000000u;
  f ^= sign;
  // Subnormal (or zero) halves: let the float adder round the value into the low bits.
  uint32_t sub = float_to_bits(bits_to_float(f) + 0.5f) - 0x3f000000u;
  // Normal halves: rebias the exponent, round half to even on the 13 dropped bits.
  uint32_t odd = (f >> 13) & 1u;
  uint32_t norm = (f + 0xc8000fffu + odd) >> 13;  // 0xc8000000 = (15 - 127) << 23 (mod 2^32)
  uint32_t o = f < 0x38800000u ? sub : norm;
  o = f >= 0x47800000u ? 0x7c00u : o;            // overflow -> inf
  o = f > 0x7f800000u ? 0x7e00u : o;             // nan
  return static_cast<uint16_t>(o | (sign >> 16));
}

// Storage types: float, or uint16_t holding IEEE binary16 bits.
QRNN_INLINE float load(float v) { return v; }
QRNN_INLINE float load(uint16_t v) { return half_to_float(v); }
QRNN_INLINE void store(float* p, float v) { *p = v; }
QRNN_INLINE void store(uint16_t* p, float v) { *p = float_to_half(v); }

// ---------------------------------------------------------------------------------------------
// The gate activations of one element from e^-|x| and ONE division. Divisions are the slow part
// of these loops (vdivps issues every ~5-10 cycles, everything else pipelines), and each of
// tanh and sigmoid needs one. With e = e^-|x| in (0, 1] every denominator lies in [1, 2]:
//   sigmoid(x) = s / (1 + e), 1 - sigmoid(x) = s' / (1 + e)   (s, s') = x >= 0 ? (1, e) : (e, 1)
//   tanh(x) = sign(x) (1 - e2) / (1 + e2)                      e2 = e^-2|x|
// so one reciprocal of the product of all denominators (at most 16) gives each quotient by
// multiplications, with no clamping of arguments and no overflow. Both sigmoid and 1 - sigmoid
// come out with small relative error (no cancellation); tanh near 0 has an absolute error of
// about one float32 ulp of 1 (6e-8), far inside the contract's 1e-6.

struct Sig {
  float num, omnum, den;  // sigmoid = num / den, 1 - sigmoid = omnum / den
};

QRNN_INLINE Sig sigmoid_parts(float x) {
  const float e = exp_nonpos(-std::fabs(x));
  const bool pos = x >= 0.0f;
  return {pos ? 1.0f : e, pos ? e : 1.0f, 1.0f + e};
}

// tanh(x) = zn / zd.
QRNN_INLINE void tanh_parts(float x, float* zn, float* zd) {
  const float e = exp_nonpos(-2.0f * std::fabs(x));
  *zn = std::copysign(1.0f - e, x);
  *zd = 1.0f + e;
}

struct Gates {
  float z, f, omf, o = 0.0f, omo = 0.0f, i = 0.0f, omi = 0.0f;  // omX = 1 - X
};

// One forward step of one element: (c_t, h_t) from the pre-activations and c_{t-1}, with one
// division. With f = sf/df, 1 - f = sf'/df, i = si/di, o = so/dO, z = zn/zd:
//   'f', 'fo': c_t = N / (df zd), N = c sf zd + sf' zn
//   'ifo':     c_t = N / (df zd di), N = c sf zd di + si zn df
//   h_t = c_t so / dO: with r = 1 / (den dO), h_t = so N r and c_t = N dO r.
template <int P>
QRNN_INLINE void forward_step(float gz, float gf, float go, float gi, float c_prev, float* c_t, float* h_t) {
  float zn, zd;
  tanh_parts(gz, &zn, &zd);
  const Sig f = sigmoid_parts(gf);
  float num, den;
  if (P == 4) {
    const Sig i = sigmoid_parts(gi);
    num = c_prev * f.num * zd * i.den + i.num * zn * f.den;
    den = f.den * zd * i.den;
  } else {
    num = c_prev * f.num * zd + f.omnum * zn;
    den = f.den * zd;
  }
  if (P >= 3) {
    const Sig o = sigmoid_parts(go);
    const float r = 1.0f / (den * o.den);
    *h_t = o.num * num * r;
    *c_t = num * o.den * r;
  } else {
    *c_t = num / den;
    *h_t = *c_t;
  }
}

// Every activation of one element (the backward pass needs them all), again with one division.
template <int P>
QRNN_INLINE Gates activations(float gz, float gf, float go, float gi) {
  float zn, zd;
  tanh_parts(gz, &zn, &zd);
  const Sig f = sigmoid_parts(gf);
  const Sig o = P >= 3 ? sigmoid_parts(go) : Sig{1.0f, 0.0f, 1.0f};
  const Sig i = P == 4 ? sigmoid_parts(gi) : Sig{1.0f, 0.0f, 1.0f};
  const float r = 1.0f / (zd * f.den * o.den * i.den);
  Gates a;
  const float inv_df = zd * o.den * i.den * r;
  a.f = f.num * inv_df;
  a.omf = f.omnum * inv_df;
  a.z = zn * f.den * o.den * i.den * r;
  if (P >= 3) {
    const float inv_do = zd * f.den * i.den * r;
    a.o = o.num * inv_do;
    a.omo = o.omnum * inv_do;
  }
  if (P == 4) {
    const float inv_di = zd * f.den * o.den * r;
    a.i = i.num * inv_di;
    a.omi = i.omnum * inv_di;
  }
  return a;
}

// ---------------------------------------------------------------------------------------------
// Forward: items [begin, end). c0 may be null (zeros); c_last may be null (not requested).

template <typename T>
struct ForwardArgs {
  const T* gates;
  const T* c0;
  T* h;
  T* c_last;
  Dims d;
};

// Where item `it` lives: batch row b, first hidden unit h0, n units (<= kChunk).
struct ItemPos {
  int64_t b, h0, n;
};

QRNN_INLINE ItemPos item_pos(const Dims& d, int64_t it) {
  const int64_t chunks = (d.H + kChunk - 1) / kChunk;
  const int64_t h0 = (it % chunks) * kChunk;
  return {it / chunks, h0, (d.H - h0) < kChunk ? (d.H - h0) : kChunk};
}

// A range of items is processed in blocks of up to kBlockItems items, and each block walks time
// in the OUTER loop: at every step it reads the rows of all its items, which lie next to each
// other in memory (a whole [b0..b1) x P*H slab when time-major), so the hardware prefetchers
// stream the gates and h at full bandwidth, while the running cell states of the block
// (kBlockItems * kChunk floats = 256 KB) stay in L2. (Walking time inside each item instead jumps
// a whole [B, P*H] plane between consecutive reads, a TLB miss and a cold line every time: on a
// 43 GB/s machine that ran at 9 GB/s.)
constexpr int64_t kBlockItems = 256;

// Software prefetch. Each step of an item reads P rows of up to kChunk values that lie H apart,
// so every gate block of a batch row is a run of only H values (4 KB at H = 1024) before the next
// row: the hardware prefetchers, which stop at page boundaries, keep relearning and a single core
// stalls on memory (1.0 ns per element at T=512, B=64, H=1024 against 0.56 ns with the data in
// cache). So while computing one item the loop prefetches the rows of the item kAheadItems later
// in the walk (the same step, or the next step's first items), kSub values at a time.
constexpr int64_t kAheadItems = 2;
constexpr int64_t kSub = 64;

// The item kAheadItems later in a block's walk: the same step, or the first items of the next
// step in walking order (step s + dir, dir = +1 or -1). ok is false past the end of the walk.
struct Ahead {
  bool ok = false;
  int64_t t = 0;
  ItemPos p{0, 0, 0};
};

QRNN_INLINE Ahead ahead(const Dims& d, int64_t begin, int64_t end, int64_t s, int64_t it, int dir) {
  int64_t nit = it + kAheadItems;
  if (nit >= end) {
    nit = begin + (nit - end);
    s += dir;
    if (s < 0 || s >= d.T || nit >= end) return {};
  }
  return {true, d.reverse ? d.T - 1 - s : s, item_pos(d, nit)};
}

// The P gate rows of one (t, b) row starting at `g` (H apart) and, unless null, one more row `x`,
// line by line across the rows.
template <int P, typename T, typename U>
QRNN_INLINE void prefetch_gates(const T* g, int64_t H, const U* x, int64_t j0, int64_t j1, int rw, int x_rw) {
  static_assert(sizeof(T) == sizeof(U), "rows of one storage type");
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t j = j0; j < j1; j += kLine) {
    for (int k = 0; k < P; ++k) {
      if (rw) {
        QRNN_PREFETCH(g + k * H + j, 1);
      } else {
        QRNN_PREFETCH(g + k * H + j, 0);
      }
    }
    if (x) {
      if (x_rw) {
        QRNN_PREFETCH(x + j, 1);
      } else {
        QRNN_PREFETCH(x + j, 0);
      }
    }
  }
}

template <int P, typename T>
QRNN_INLINE void forward_block(const ForwardArgs<T>& a, int64_t begin, int64_t end, float* state) {
  const Dims& d = a.d;
  const int64_t H = d.H;
  for (int64_t it = begin; it < end; ++it) {
    const ItemPos p = item_pos(d, it);
    float* c = state + (it - begin) * kChunk;
    for (int64_t j = 0; j < p.n; ++j) c[j] = a.c0 ? load(a.c0[p.b * H + p.h0 + j]) : 0.0f;
  }
  for (int64_t s = 0; s < d.T; ++s) {
    const int64_t t = d.reverse ? d.T - 1 - s : s;
    for (int64_t it = begin; it < end; ++it) {
      const ItemPos p = item_pos(d, it);
      const T* QRNN_RESTRICT g = a.gates + d.row(t, p.b, P * H) + p.h0;
      T* QRNN_RESTRICT out = a.h + d.row(t, p.b, H) + p.h0;
      float* QRNN_RESTRICT c = state + (it - begin) * kChunk;
      const Ahead nx = ahead(d, begin, end, s, it, +1);
      const T* next_g = nx.ok ? a.gates + d.row(nx.t, nx.p.b, P * H) + nx.p.h0 : nullptr;
      const T* next_out = nx.ok ? a.h + d.row(nx.t, nx.p.b, H) + nx.p.h0 : nullptr;
      for (int64_t j0 = 0; j0 < p.n; j0 += kSub) {
        const int64_t j1 = p.n - j0 < kSub ? p.n : j0 + kSub;
        if (next_g) {
          prefetch_gates<P>(next_g, H, next_out, j0, j1, 0, 1);
        }
        QRNN_IVDEP
        for (int64_t j = j0; j < j1; ++j) {
          float cj, hj;
          forward_step<P>(load(g[j]), load(g[H + j]), P >= 3 ? load(g[2 * H + j]) : 0.0f,
                          P == 4 ? load(g[3 * H + j]) : 0.0f, c[j], &cj, &hj);
          c[j] = cj;
          store(out + j, hj);
        }
      }
    }
  }
  if (a.c_last) {
    for (int64_t it = begin; it < end; ++it) {
      const ItemPos p = item_pos(d, it);
      const float* c = state + (it - begin) * kChunk;
      for (int64_t j = 0; j < p.n; ++j) store(a.c_last + p.b * H + p.h0 + j, c[j]);
    }
  }
}

// The running cell states of a block: up to kBlockItems * kChunk floats (256 KB) per thread,
// kept for the thread's lifetime. A fresh allocation per call is above malloc's mmap threshold,
// so every call paid an mmap, 64 page faults and an munmap: ~20 us, which was 80% of a
// streaming step (T = 1, B = 32, H = 256).
inline float* state_buffer(int64_t items) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local int64_t cap = 0;
  if (items > cap) {
    buf.reset(new float[items * kChunk]);
    cap = items;
  }
  return buf.get();
}

// forward_items / backward_items repeat their block loop on purpose: a shared walker taking a
// lambda puts the lambda body outside the target_clones entry points (fo_pool_cpu.cc), so the
// blocks compile for the baseline ISA only (measured: 5x slower).
template <typename T>
QRNN_INLINE void forward_items(const ForwardArgs<T>& a, int64_t begin, int64_t end) {
  if (end <= begin) return;
  float* state = state_buffer((end - begin) < kBlockItems ? (end - begin) : kBlockItems);
  for (int64_t b0 = begin; b0 < end; b0 += kBlockItems) {
    const int64_t b1 = end - b0 < kBlockItems ? end : b0 + kBlockItems;
    switch (a.d.P) {
      case 2: forward_block<2>(a, b0, b1, state); break;
      case 3: forward_block<3>(a, b0, b1, state); break;
      default: forward_block<4>(a, b0, b1, state); break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward (float32): gradients of (h, c_last) w.r.t. (gates, c0). Same semantics as
// qrnn_deploy/nn/fo_pool.py `_fo_pool_backward_impl`: recompute the forward cell states, then
// walk time backwards. The recomputed c_t are parked in the F block of grad_gates (its own
// memory, written before it is needed for the F gradient of the same step), so no scratch.

struct BackwardArgs {
  const float* grad_h;       // layout of h
  const float* grad_c_last;  // [B, H]
  const float* gates;
  const float* c0;           // may be null
  float* grad_gates;         // layout of gates
  float* grad_c0;            // [B, H]; may be null
  Dims d;
};

template <int P>
QRNN_INLINE void backward_block(const BackwardArgs& a, int64_t begin, int64_t end, float* state) {
  const Dims& d = a.d;
  const int64_t H = d.H, W = P * d.H;
  auto time_of = [&](int64_t s) { return d.reverse ? d.T - 1 - s : s; };
  // Pass 1, forward in time: running c in `state`, every c_t parked in grad_gates' F block.
  for (int64_t it = begin; it < end; ++it) {
    const ItemPos p = item_pos(d, it);
    float* c = state + (it - begin) * kChunk;
    for (int64_t j = 0; j < p.n; ++j) c[j] = a.c0 ? a.c0[p.b * H + p.h0 + j] : 0.0f;
  }
  for (int64_t s = 0; s < d.T; ++s) {
    const int64_t t = time_of(s);
    for (int64_t it = begin; it < end; ++it) {
      const ItemPos p = item_pos(d, it);
      const float* QRNN_RESTRICT g = a.gates + d.row(t, p.b, W) + p.h0;
      float* QRNN_RESTRICT cs = a.grad_gates + d.row(t, p.b, W) + H + p.h0;
      float* QRNN_RESTRICT c = state + (it - begin) * kChunk;
      const Ahead nx = ahead(d, begin, end, s, it, +1);
      const int64_t next_row = nx.ok ? d.row(nx.t, nx.p.b, W) + nx.p.h0 : 0;
      for (int64_t j0 = 0; j0 < p.n; j0 += kSub) {
        const int64_t j1 = p.n - j0 < kSub ? p.n : j0 + kSub;
        if (nx.ok) {
          prefetch_gates<P>(a.gates + next_row, H, a.grad_gates + next_row + H, j0, j1, 0, 1);
        }
        QRNN_IVDEP
        for (int64_t j = j0; j < j1; ++j) {
          float cj, hj;  // the forward's own arithmetic: the same c_t bit for bit
          forward_step<P>(g[j], g[H + j], P >= 3 ? g[2 * H + j] : 0.0f, P == 4 ? g[3 * H + j] : 0.0f, c[j], &cj, &hj);
          c[j] = cj;
          cs[j] = cj;
        }
      }
    }
  }
  // Pass 2, backward in time: `state` now carries f_{s+1} * dc_{s+1}.
  for (int64_t it = begin; it < end; ++it) {
    const ItemPos p = item_pos(d, it);
    float* carry = state + (it - begin) * kChunk;
    for (int64_t j = 0; j < p.n; ++j) carry[j] = a.grad_c_last[p.b * H + p.h0 + j];
  }
  for (int64_t s = d.T - 1; s >= 0; --s) {
    const int64_t t = time_of(s);
    for (int64_t it = begin; it < end; ++it) {
      const ItemPos p = item_pos(d, it);
      const float* QRNN_RESTRICT g = a.gates + d.row(t, p.b, W) + p.h0;
      const float* QRNN_RESTRICT gh = a.grad_h + d.row(t, p.b, H) + p.h0;
      float* dg = a.grad_gates + d.row(t, p.b, W) + p.h0;
      // One restrict pointer per gate block: with a single base pointer GCC sees reads of
      // dg[H + j] and writes of dg[2H + j] at a symbolic distance and refuses to vectorize.
      float* QRNN_RESTRICT dgz = dg;
      float* QRNN_RESTRICT dgf = dg + H;
      float* QRNN_RESTRICT dgo = dg + 2 * H;
      float* QRNN_RESTRICT dgi = dg + 3 * H;
      // c_{t-1}: the previous step's parked c, or c0 (zeros when absent) at the first step.
      const float* QRNN_RESTRICT cprev =
          s > 0 ? a.grad_gates + d.row(time_of(s - 1), p.b, W) + H + p.h0
                : (a.c0 ? a.c0 + p.b * H + p.h0 : nullptr);
      float* QRNN_RESTRICT carry = state + (it - begin) * kChunk;
      const Ahead nx = ahead(d, begin, end, s, it, -1);
      const int64_t next_row = nx.ok ? d.row(nx.t, nx.p.b, W) + nx.p.h0 : 0;
      const int64_t next_h_row = nx.ok ? d.row(nx.t, nx.p.b, H) + nx.p.h0 : 0;
      for (int64_t j0 = 0; j0 < p.n; j0 += kSub) {
        const int64_t j1 = p.n - j0 < kSub ? p.n : j0 + kSub;
        if (nx.ok) {
          prefetch_gates<P>(a.gates + next_row, H, a.grad_h + next_h_row, j0, j1, 0, 0);
          prefetch_gates<P>(a.grad_gates + next_row, H, static_cast<const float*>(nullptr), j0, j1, 1, 0);
        }
        QRNN_IVDEP
        for (int64_t j = j0; j < j1; ++j) {
          Gates act = activations<P>(g[j], g[H + j], P >= 3 ? g[2 * H + j] : 0.0f, P == 4 ? g[3 * H + j] : 0.0f);
          const float z = act.z, f = act.f;
          float c = dgf[j];
          float cp = cprev ? cprev[j] : 0.0f;
          float ghj = gh[j];
          float dc;
          if (P >= 3) {
            dc = ghj * act.o + carry[j];
            dgo[j] = ghj * c * act.o * act.omo;
          } else {
            dc = ghj + carry[j];
          }
          float dz, dfg;
          if (P == 4) {
            dz = dc * act.i;
            dfg = dc * cp;
            dgi[j] = dc * z * act.i * act.omi;
          } else {
            dz = dc * act.omf;
            dfg = dc * (cp - z);
          }
          dgz[j] = dz * (1.0f - z * z);
          dgf[j] = dfg * f * act.omf;
          carry[j] = f * dc;
        }
      }
    }
  }
  if (a.grad_c0) {
    for (int64_t it = begin; it < end; ++it) {
      const ItemPos p = item_pos(d, it);
      const float* carry = state + (it - begin) * kChunk;
      for (int64_t j = 0; j < p.n; ++j) a.grad_c0[p.b * H + p.h0 + j] = carry[j];
    }
  }
}

QRNN_INLINE void backward_items(const BackwardArgs& a, int64_t begin, int64_t end) {
  if (end <= begin) return;
  float* state = state_buffer((end - begin) < kBlockItems ? (end - begin) : kBlockItems);
  for (int64_t b0 = begin; b0 < end; b0 += kBlockItems) {
    const int64_t b1 = end - b0 < kBlockItems ? end : b0 + kBlockItems;
    switch (a.d.P) {
      case 2: backward_block<2>(a, b0, b1, state); break;
      case 3: backward_block<3>(a, b0, b1, state); break;
      default: backward_block<4>(a, b0, b1, state); break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points compiled once (plugins/common/fo_pool_cpu.cc) with baseline, AVX2 and AVX-512
// clones chosen at load time, so one binary is both portable and fast.

void forward_range_f32(const ForwardArgs<float>& a, int64_t begin, int64_t end);
void forward_range_f16(const ForwardArgs<uint16_t>& a, int64_t begin, int64_t end);
void backward_range_f32(const BackwardArgs& a, int64_t begin, int64_t end);

}  // namespace fopool
}  // namespace qrnn
