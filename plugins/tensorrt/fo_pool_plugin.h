// The FoPool TensorRT plugin (DESIGN.md section 2): name "FoPool", version "1", namespace "qrnn".
//
// An IPluginV3 with the core, build and runtime capabilities of TensorRT 10 (IPluginV3OneCore /
// IPluginV3OneBuild / IPluginV3OneRuntime), and its creator (IPluginCreatorV3One). The kernel is
// the project's one CUDA kernel (plugins/cuda/fo_pool_kernels.cuh, via fo_pool_cuda.h).
//
// Inputs: gates [T, B, P*H] ([B, T, P*H] with batch_first=1), optional c0 [B, H].
// Outputs: h (layout of gates, H last), c_last [B, H]. float32 or float16, linear format.
// Plugin fields (the ONNX node's attributes): pooling (string "f" | "fo" | "ifo"), batch_first
// (int 0|1), reverse (int 0|1); the engine serialises them plus num_inputs (1 or 2: whether c0
// is wired), which enqueue needs and is only known after configurePlugin.
//
// Written against TensorRT's documented C++ API (10.x); TensorRT is not installed on the
// project's development machines, so this code has been compiled only against a hand-written
// declaration subset of that API, and its logic (fields, serialisation, shapes, enqueue's
// arguments) run on the CPU by a harness (tests/test_tensorrt_plugin.py); never against NVIDIA's
// headers, never inside TensorRT.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace qrnn {
namespace trt {

constexpr char const* kPluginName = "FoPool";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "qrnn";

struct FoPoolParams {
  std::string pooling = "fo";
  int32_t P = 3;
  int32_t batch_first = 0;
  int32_t reverse = 0;
  int32_t num_inputs = 0;  // 1 (gates) or 2 (gates, c0); set by configurePlugin, serialised
};

class FoPoolPlugin : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime {
 public:
  explicit FoPoolPlugin(FoPoolParams params);
  ~FoPoolPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override { return 2; }
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override {
    return 0;  // the forward kernel needs no scratch memory
  }

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override { return clone(); }
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

  FoPoolParams const& params() const { return params_; }

 private:
  FoPoolParams params_;
  // Storage behind getFieldsToSerialize (valid while the plugin lives).
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

class FoPoolPluginCreator : public nvinfer1::IPluginCreatorV3One {
 public:
  FoPoolPluginCreator();
  char const* getPluginName() const noexcept override { return kPluginName; }
  char const* getPluginVersion() const noexcept override { return kPluginVersion; }
  char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &field_collection_; }
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> fields_;
  nvinfer1::PluginFieldCollection field_collection_{};
};

// Reads the plugin fields into params; false (with `error` set) on an unknown pooling or a flag
// that is not 0 or 1. Unknown fields (e.g. the ONNX parser's plugin_version) are ignored.
bool ParseFields(nvinfer1::PluginFieldCollection const* fc, FoPoolParams* params, std::string* error);

}  // namespace trt
}  // namespace qrnn
