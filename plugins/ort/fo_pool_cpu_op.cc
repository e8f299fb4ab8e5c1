// FoPool kernel for onnxruntime's CPUExecutionProvider: float32 and float16 (fp32 arithmetic),
// work items (batch row x chunk of hidden units) spread over the session's intra-op threads.
#include <cstring>
#include <thread>

#include "fo_pool_op.h"
#include "ops.h"

namespace qrnn {
namespace ort {

namespace {

template <typename T>
struct RangeJob {
  const fopool::ForwardArgs<T>* args;
  int64_t items;
  int64_t per_task;
};

void RunF32(void* user, size_t task) {
  auto* job = static_cast<RangeJob<float>*>(user);
  const int64_t b = static_cast<int64_t>(task) * job->per_task;
  fopool::forward_range_f32(*job->args, b, std::min(job->items, b + job->per_task));
}

void RunF16(void* user, size_t task) {
  auto* job = static_cast<RangeJob<uint16_t>*>(user);
  const int64_t b = static_cast<int64_t>(task) * job->per_task;
  fopool::forward_range_f16(*job->args, b, std::min(job->items, b + job->per_task));
}

template <typename T>
void Launch(const Ort::KernelContext& ctx, const FoPoolCall& call, void (*fn)(void*, size_t)) {
  fopool::ForwardArgs<T> args{static_cast<const T*>(call.gates), static_cast<const T*>(call.c0),
                              static_cast<T*>(call.h), static_cast<T*>(call.c_last), call.d};
  // Items are uniform in cost, and a range of items walks time in its outer loop reading its
  // rows in memory order (fo_pool_cpu.h), so each thread gets ONE contiguous range: smaller
  // tasks would break the streaming access pattern.
  const int64_t items = call.d.items();
  // The custom-op API does not tell the pool's size: one task per hardware thread (onnxruntime
  // batches tasks when its pool is smaller, so each thread still gets contiguous items).
  // Asked once: glibc answers hardware_concurrency() by reading /sys (~6 us, measured), which
  // was most of a streaming step's FoPool time.
  static const unsigned hw = std::thread::hardware_concurrency();
  const int threads = call.d.useful_threads(hw == 0 ? 1 : static_cast<int>(hw));
  if (threads == 1) {
    // Small work (a streaming step): waking the pool costs more than the step (~15 us).
    RangeJob<T> job{&args, items, items};
    fn(&job, 0);
    return;
  }
  const int64_t per_task = (items + threads - 1) / threads;
  RangeJob<T> job{&args, items, per_task};
  ctx.ParallelFor(fn, static_cast<size_t>((items + per_task - 1) / per_task), 0, &job);
}

struct FoPoolCpuKernel {
  FoPoolCpuKernel(const OrtApi& api, const OrtKernelInfo*, FoPoolAttrs attrs) : api_(api), attrs_(std::move(attrs)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return Guard(api_, [&]() -> OrtStatusPtr {
      FoPoolCall call;
      if (OrtStatusPtr st = PrepareFoPoolCall(api_, context, attrs_, &call)) return st;
      const size_t elem = call.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? sizeof(float) : sizeof(uint16_t);
      if (call.empty()) {
        // Nothing to scan: c_last is c0 (or zeros). All-zero bits are +0.0 in fp32 and fp16.
        if (call.c_last) {
          const size_t bytes = static_cast<size_t>(call.d.B * call.d.H) * elem;
          if (call.c0) std::memcpy(call.c_last, call.c0, bytes);
          else std::memset(call.c_last, 0, bytes);
        }
        return nullptr;
      }
      Ort::KernelContext ctx(context);
      if (call.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) Launch<float>(ctx, call, &RunF32);
      else Launch<uint16_t>(ctx, call, &RunF16);
      return nullptr;
    });
  }

 private:
  const OrtApi& api_;
  FoPoolAttrs attrs_;
};

}  // namespace

void AddCpuFoPoolOps(Ort::CustomOpDomain& domain) {
  // Static storage: onnxruntime keeps pointers to the ops for the life of every session.
  static FoPoolOp<FoPoolCpuKernel> f32(nullptr, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  static FoPoolOp<FoPoolCpuKernel> f16(nullptr, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  domain.Add(&f32);
  domain.Add(&f16);
}

}  // namespace ort
}  // namespace qrnn
