// FoPool kernel for onnxruntime's CUDAExecutionProvider (built with -DQRNN_WITH_CUDA=ON): the
// shared CUDA kernel (plugins/cuda/fo_pool_kernels.cuh, through the C API of fo_pool_cuda.h),
// float32 and float16 (fp32 arithmetic), launched on onnxruntime's compute stream for this
// kernel context, so it orders with the provider's other work and nothing synchronises.
// Input validation, attributes and shape inference are the shared ones of fo_pool_op.cc; the
// tensors it hands over are device pointers, as the op is registered for the CUDA provider.
#include "../cuda/fo_pool_cuda.h"
#include "fo_pool_op.h"
#include "ops.h"

namespace qrnn {
namespace ort {

namespace {

struct FoPoolCudaKernel {
  FoPoolCudaKernel(const OrtApi& api, const OrtKernelInfo*, FoPoolAttrs attrs) : api_(api), attrs_(std::move(attrs)) {}

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    return Guard(api_, [&]() -> OrtStatusPtr {
      FoPoolCall call;
      if (OrtStatusPtr st = PrepareFoPoolCall(api_, context, attrs_, &call)) return st;
      void* stream = nullptr;
      if (OrtStatusPtr st = api_.KernelContext_GetGPUComputeStream(context, &stream)) return st;
      const int dtype = call.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? QRNN_F32 : QRNN_F16;
      // T = 0 needs no special case: the kernel then writes c_last = c0 (or zeros) per column.
      const int rc = qrnn_fo_pool_cuda_forward(dtype, dtype, call.gates, call.c0, call.h, call.c_last, call.d.T,
                                               call.d.B, call.d.H, call.d.P, call.d.batch_first ? 1 : 0,
                                               call.d.reverse ? 1 : 0, stream);
      if (rc != 0) {
        const std::string msg = (attrs_.node.empty() ? std::string("FoPool") : "FoPool node '" + attrs_.node + "'") +
                                ": CUDA launch failed: " + qrnn_fo_pool_cuda_error_string(rc);
        return api_.CreateStatus(ORT_RUNTIME_EXCEPTION, msg.c_str());
      }
      return nullptr;
    });
  }

 private:
  const OrtApi& api_;
  FoPoolAttrs attrs_;
};

}  // namespace

void AddCudaFoPoolOps(Ort::CustomOpDomain& domain) {
  static FoPoolOp<FoPoolCudaKernel> f32("CUDAExecutionProvider", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  static FoPoolOp<FoPoolCudaKernel> f16("CUDAExecutionProvider", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  domain.Add(&f32);
  domain.Add(&f16);
}

}  // namespace ort
}  // namespace qrnn
