// The FoPool custom op (DESIGN.md section 2) as seen by onnxruntime, shared by every execution
// provider: the op definition (inputs, outputs, types, shape inference) is one template; each EP
// supplies only a kernel class with
//     Kernel(const OrtApi& api, const OrtKernelInfo* info, FoPoolAttrs attrs);
//     OrtStatusPtr ComputeV2(OrtKernelContext* context);
// and registers FoPoolOp<Kernel>(ep_name, element_type) once per element type (see
// fo_pool_cpu_op.cc). Errors travel as OrtStatus, never as exceptions across the C ABI.
#pragma once

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <string>

#include "../common/fo_pool_cpu.h"

namespace qrnn {
namespace ort {

constexpr const char* kDomain = "qrnn";
constexpr const char* kOpName = "FoPool";

struct FoPoolAttrs {
  int P = 3;
  bool batch_first = false;
  bool reverse = false;
  std::string node;  // node name, for messages
};

// Reads and checks pooling / batch_first / reverse; fails on unknown values (session creation).
OrtStatusPtr ReadFoPoolAttrs(const OrtApi& api, const OrtKernelInfo* info, FoPoolAttrs* out);

// Checks the shapes the graph fixes before anything runs (rank, last axis against the pooling,
// c0 against gates); symbolic or unknown dimensions are left to PrepareFoPoolCall. Called when
// the session creates the kernel, so a graph with a bad static shape fails to load, with a
// message naming the input and the shapes.
OrtStatusPtr CheckStaticShapes(const OrtApi& api, const OrtKernelInfo* info, const FoPoolAttrs& attrs);

// One validated call: dims, element type, data pointers (device pointers for GPU EPs), outputs
// allocated through the context. c0 / c_last are null when absent / not requested.
struct FoPoolCall {
  fopool::Dims d;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  const void* gates = nullptr;
  const void* c0 = nullptr;
  void* h = nullptr;
  void* c_last = nullptr;
  bool empty() const { return d.T == 0 || d.B == 0; }
};

// Validates the inputs of one call against the attributes and allocates the outputs; the failed
// status names the input and the shapes.
OrtStatusPtr PrepareFoPoolCall(const OrtApi& api, OrtKernelContext* context, const FoPoolAttrs& attrs,
                               FoPoolCall* call);

// Output type and shape inference (h: layout of gates with H last; c_last: [B, H]).
OrtStatusPtr InferFoPoolShapes(const OrtCustomOp* op, OrtShapeInferContext* ctx);

// Runs body() and turns any escaping C++ exception into a failed OrtStatus.
template <typename Body>
OrtStatusPtr Guard(const OrtApi& api, Body body) noexcept {
  try {
    return body();
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::exception& e) {
    return api.CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
  } catch (...) {
    return api.CreateStatus(ORT_RUNTIME_EXCEPTION, "FoPool: unknown error");
  }
}

template <typename Kernel>
struct FoPoolOp : Ort::CustomOpBase<FoPoolOp<Kernel>, Kernel, /*WithStatus=*/true> {
  // ep: nullptr for CPUExecutionProvider, else the provider's name (e.g. "CUDAExecutionProvider").
  FoPoolOp(const char* ep, ONNXTensorElementDataType type) : ep_(ep), type_(type) {
    // Not CustomOpBase's ShapeInferContext path: it throws from its constructor and drops the
    // input element types; the C API lets every failure come back as a status.
    OrtCustomOp::InferOutputShapeFn = &InferFoPoolShapes;
  }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    return Guard(api, [&]() -> OrtStatusPtr {
      FoPoolAttrs attrs;
      if (OrtStatusPtr st = ReadFoPoolAttrs(api, info, &attrs)) return st;
      if (OrtStatusPtr st = CheckStaticShapes(api, info, attrs)) return st;
      *kernel = new Kernel(api, info, attrs);
      return nullptr;
    });
  }

  const char* GetName() const { return kOpName; }
  const char* GetExecutionProviderType() const { return ep_; }

  size_t GetInputTypeCount() const { return 2; }  // gates, c0
  ONNXTensorElementDataType GetInputType(size_t) const { return type_; }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t i) const {
    return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }

  size_t GetOutputTypeCount() const { return 2; }  // h, c_last
  ONNXTensorElementDataType GetOutputType(size_t) const { return type_; }
  OrtCustomOpInputOutputCharacteristic GetOutputCharacteristic(size_t i) const {
    return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  }

 private:
  const char* ep_;
  ONNXTensorElementDataType type_;
};

}  // namespace ort
}  // namespace qrnn
