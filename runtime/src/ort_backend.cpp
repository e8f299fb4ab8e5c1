// The onnxruntime backend: one Ort::Session per graph, the FoPool custom-op library registered
// when the bundle needs it, host tensors in and out.
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <sys/stat.h>

#include <onnxruntime_cxx_api.h>

#include "qrnn/backend.hpp"
#include "qrnn/errors.hpp"

namespace qrnn {

namespace {

// onnxruntime wants one environment per process; every session of the runtime shares it.
Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "qrnn_runtime");
  return env;
}

ONNXTensorElementDataType ort_type(DType t) {
  switch (t) {
    case DType::Float32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    case DType::Float16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
    case DType::BFloat16: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16;
    case DType::Int64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
    case DType::Int32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    case DType::Bool: return ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL;
  }
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

DType from_ort(ONNXTensorElementDataType t, const std::string& what) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return DType::Float32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return DType::Float16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return DType::BFloat16;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return DType::Int64;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return DType::Int32;
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return DType::Bool;
    default: throw BackendError(what + ": unsupported onnxruntime element type " + std::to_string(static_cast<int>(t)));
  }
}

bool file_exists(const std::string& p) {
  struct stat st;
  return !p.empty() && ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

class OrtBackend final : public Backend {
 public:
  OrtBackend(const std::string& path, const std::string& role, const Manifest& manifest, const Options& options)
      : role_(role), path_(path), memory_(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault)) {
    Ort::SessionOptions so;
    if (options.threads > 0) so.SetIntraOpNumThreads(options.threads);
    // One stream is a chain of small dependent ops: parallel branches gain nothing.
    so.SetInterOpNumThreads(1);
    so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    if (manifest.fo_pool == "custom") {
      const std::string lib = resolve_custom_op_library(options);
      if (lib.empty())
        throw BuildError("graph " + role + " (" + path + ") uses the FoPool custom op (fo_pool 'custom') but no "
                         "custom-op library was found: build it with scripts/build_plugins.sh, pass its path "
                         "(--custom-op-library / $QRNN_ORT_LIBRARY), or export the bundle with the portable FoPool");
      try {
        so.RegisterCustomOpsLibrary(lib.c_str());
      } catch (const Ort::Exception& e) {
        throw BuildError("cannot load the FoPool custom-op library " + lib + ": " + e.what());
      }
    }
    try {
      session_ = std::make_unique<Ort::Session>(ort_env(), path.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw BackendError("onnxruntime cannot load graph " + role + " (" + path + "): " + e.what());
    }
    Ort::AllocatorWithDefaultOptions alloc;
    for (size_t i = 0; i < session_->GetInputCount(); ++i)
      inputs_.emplace_back(session_->GetInputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < session_->GetOutputCount(); ++i)
      outputs_.emplace_back(session_->GetOutputNameAllocated(i, alloc).get());
  }

  std::vector<Tensor> run(const std::vector<std::string>& input_names, const std::vector<const Tensor*>& inputs,
                          const std::vector<std::string>& output_names) override {
    std::vector<const char*> in_names, out_names;
    std::vector<Ort::Value> values;
    values.reserve(inputs.size());
    try {
      for (size_t i = 0; i < inputs.size(); ++i) {
        const Tensor& t = *inputs[i];
        in_names.push_back(input_names[i].c_str());
        // onnxruntime reads inputs only; the API takes a non-const pointer for both directions.
        values.push_back(Ort::Value::CreateTensor(memory_, const_cast<void*>(t.raw()), t.nbytes(), t.shape().data(),
                                                  t.shape().size(), ort_type(t.dtype())));
      }
    } catch (const Ort::Exception& e) {
      throw BackendError("onnxruntime cannot take the inputs of graph " + role_ + " (" + path_ + "): " + e.what());
    }
    for (const auto& n : output_names) out_names.push_back(n.c_str());
    std::vector<Ort::Value> outs;
    try {
      outs = session_->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(), out_names.data(),
                           out_names.size());
    } catch (const Ort::Exception& e) {
      throw BackendError("onnxruntime failed to run graph " + role_ + " (" + path_ + "): " + e.what());
    }
    std::vector<Tensor> result;
    result.reserve(outs.size());
    for (size_t i = 0; i < outs.size(); ++i) {
      auto info = outs[i].GetTensorTypeAndShapeInfo();
      Tensor t(from_ort(info.GetElementType(), "graph " + role_ + " output " + output_names[i]), info.GetShape());
      if (t.nbytes()) std::memcpy(t.raw(), outs[i].GetTensorRawData(), t.nbytes());
      result.push_back(std::move(t));
    }
    return result;
  }

  std::vector<std::string> input_names() const override { return inputs_; }
  std::vector<std::string> output_names() const override { return outputs_; }
  std::string name() const override { return "onnxruntime"; }

 private:
  std::string role_, path_;
  Ort::MemoryInfo memory_;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> inputs_, outputs_;
};

}  // namespace

std::string resolve_custom_op_library(const Options& options) {
  if (!options.custom_op_library.empty()) {
    if (!file_exists(options.custom_op_library))
      throw BuildError("custom-op library " + options.custom_op_library + " does not exist");
    return options.custom_op_library;
  }
  if (const char* env = std::getenv("QRNN_ORT_LIBRARY"); env && *env) {
    if (!file_exists(env)) throw BuildError(std::string("$QRNN_ORT_LIBRARY points to ") + env + ", which does not exist");
    return env;
  }
  // The same look-up as qrnn_deploy._native.ort_library_path.
  if (const char* dir = std::getenv("QRNN_PLUGIN_DIR"); dir && *dir) {
    const std::string p = std::string(dir) + "/libqrnn_ort.so";
    if (file_exists(p)) return p;
  }
#ifdef QRNN_DEFAULT_ORT_LIBRARY
  if (file_exists(QRNN_DEFAULT_ORT_LIBRARY)) return QRNN_DEFAULT_ORT_LIBRARY;
#endif
  return "";
}

std::unique_ptr<Backend> make_ort_backend(const std::string& path, const std::string& role, const Manifest& manifest,
                                          const Options& options) {
  return std::make_unique<OrtBackend>(path, role, manifest, options);
}

std::unique_ptr<Backend> make_backend(const std::string& bundle_dir, const Manifest& manifest, const std::string& role,
                                      const Options& options) {
  const GraphSpec& g = manifest.graph(role);
  if (options.backend == "onnxruntime") {
    const std::string path = bundle_dir + "/" + g.file;
    if (!file_exists(path)) throw BundleError(bundle_dir + ": graph '" + role + "' file " + g.file + " is missing");
    return make_ort_backend(path, role, manifest, options);
  }
  if (options.backend == "tensorrt") {
#ifdef QRNN_HAVE_TENSORRT
    auto e = manifest.engines.find(role);
    if (e == manifest.engines.end())
      throw BundleError(bundle_dir + ": the manifest lists no TensorRT engine for graph '" + role +
                        "'; build the bundle's TensorRT engines first");
    const std::string path = bundle_dir + "/" + e->second.file;
    if (!file_exists(path)) throw BundleError(bundle_dir + ": engine of graph '" + role + "' file " + e->second.file + " is missing");
    return make_trt_backend(path, role, e->second, options);
#else
    throw ConfigError("this build of the runtime has no TensorRT backend (TensorRT was not found when it was "
                      "compiled); use --backend onnxruntime or rebuild with TensorRT installed");
#endif
  }
  throw ConfigError("unknown backend '" + options.backend + "' (use onnxruntime or tensorrt)");
}

}  // namespace qrnn
