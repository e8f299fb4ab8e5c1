// The TensorRT backend (TensorRT 10 runtime API): one deserialized engine per graph, host tensors
// copied to device buffers, enqueueV3 on the backend's own CUDA stream, outputs copied back.
// Compiled only when CMake finds TensorRT (QRNN_HAVE_TENSORRT). UNTESTED on a real TensorRT
// install: it is checked to compile against a hand-written subset of the documented API
// (tests/trt_runtime_api_subset/), not against NVIDIA's headers or a real engine.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <sys/stat.h>

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include "qrnn/backend.hpp"
#include "qrnn/errors.hpp"

namespace qrnn {

namespace {

void cuda_check(cudaError_t e, const std::string& what) {
  if (e != cudaSuccess) throw BackendError("CUDA error in " + what + ": " + cudaGetErrorString(e));
}

// TensorRT reports through a logger; errors are kept so a failed call can say why.
class Logger final : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity > Severity::kWARNING) return;
    std::lock_guard<std::mutex> lock(mu_);
    last_ = msg;
  }
  std::string last() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_;
  }

 private:
  std::mutex mu_;
  std::string last_;
};

Logger& logger() {
  static Logger l;
  return l;
}

DType from_trt(nvinfer1::DataType t, const std::string& what) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return DType::Float32;
    case nvinfer1::DataType::kHALF: return DType::Float16;
    case nvinfer1::DataType::kBF16: return DType::BFloat16;
    case nvinfer1::DataType::kINT64: return DType::Int64;
    case nvinfer1::DataType::kINT32: return DType::Int32;
    case nvinfer1::DataType::kBOOL: return DType::Bool;
    default: throw BackendError(what + ": unsupported TensorRT data type " + std::to_string(static_cast<int>(t)));
  }
}

bool file_exists(const std::string& p) {
  struct stat st;
  return !p.empty() && ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string resolve_plugin_library(const Options& options) {
  if (!options.trt_plugin_library.empty()) {
    if (!file_exists(options.trt_plugin_library))
      throw BuildError("TensorRT plugin library " + options.trt_plugin_library + " does not exist");
    return options.trt_plugin_library;
  }
  if (const char* env = std::getenv("QRNN_TRT_PLUGIN_LIBRARY"); env && *env) {
    if (!file_exists(env)) throw BuildError(std::string("$QRNN_TRT_PLUGIN_LIBRARY points to ") + env + ", which does not exist");
    return env;
  }
  if (const char* dir = std::getenv("QRNN_PLUGIN_DIR"); dir && *dir) {
    const std::string p = std::string(dir) + "/libqrnn_trt_plugin.so";
    if (file_exists(p)) return p;
  }
#ifdef QRNN_DEFAULT_TRT_PLUGIN_LIBRARY
  if (file_exists(QRNN_DEFAULT_TRT_PLUGIN_LIBRARY)) return QRNN_DEFAULT_TRT_PLUGIN_LIBRARY;
#endif
  return "";
}

// A device buffer that grows on demand and is reused across runs.
struct DeviceBuffer {
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* ptr = nullptr;
  std::size_t capacity = 0;
  void reserve(std::size_t bytes, const std::string& what) {
    if (bytes <= capacity) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    capacity = 0;
    cuda_check(cudaMalloc(&ptr, bytes ? bytes : 1), "cudaMalloc for " + what);
    capacity = bytes;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

class TrtBackend final : public Backend {
 public:
  TrtBackend(const std::string& path, const std::string& role, const EngineSpec& engine, const Options& options)
      : role_(role), path_(path) {
    cuda_check(cudaSetDevice(options.device), "cudaSetDevice(" + std::to_string(options.device) + ")");
    runtime_.reset(nvinfer1::createInferRuntime(logger()));
    if (!runtime_) throw BackendError("TensorRT: createInferRuntime failed: " + logger().last());
    if (engine.plugin == "library") {
      const std::string lib = resolve_plugin_library(options);
      if (lib.empty())
        throw BuildError("engine " + path + " needs the FoPool TensorRT plugin library libqrnn_trt_plugin.so: build it "
                         "with scripts/build_plugins.sh on a machine with TensorRT, or set $QRNN_TRT_PLUGIN_LIBRARY");
      if (!runtime_->getPluginRegistry().loadLibrary(lib.c_str()))
        throw BuildError("TensorRT cannot load the plugin library " + lib + ": " + logger().last());
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) throw BundleError("cannot read TensorRT engine " + path);
    const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_)
      throw BackendError("TensorRT cannot deserialize engine " + path + " (built by another TensorRT version or for "
                         "another GPU? rebuild it here): " + logger().last());
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw BackendError("TensorRT: cannot create an execution context for " + path + ": " + logger().last());
    for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) {
      const char* name = engine_->getIOTensorName(i);
      (engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT ? inputs_ : outputs_).emplace_back(name);
    }
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }

  ~TrtBackend() override {
    // The context and engine go before the runtime that made them; the stream last.
    context_.reset();
    engine_.reset();
    runtime_.reset();
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::vector<Tensor> run(const std::vector<std::string>& input_names, const std::vector<const Tensor*>& inputs,
                          const std::vector<std::string>& output_names) override {
    // One execution context, stream and set of device buffers serve every call: one at a time
    // (a TensorRT context must not be used by two threads at once).
    std::lock_guard<std::mutex> lock(run_mu_);
    const std::string where = "TensorRT engine of graph " + role_ + " (" + path_ + ")";
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& t = *inputs[i];
      const char* name = input_names[i].c_str();
      if (from_trt(engine_->getTensorDataType(name), where) != t.dtype())
        throw BackendError(where + ": input " + input_names[i] + " is " + t.describe() + ", the engine wants another dtype");
      nvinfer1::Dims dims{};
      dims.nbDims = static_cast<int32_t>(t.rank());
      for (std::size_t d = 0; d < t.rank(); ++d) dims.d[d] = t.shape()[d];
      if (!context_->setInputShape(name, dims))
        throw BackendError(where + ": input " + input_names[i] + " shape " + t.describe() +
                           " is outside the engine's optimization profile: " + logger().last());
      DeviceBuffer& buf = buffers_[input_names[i]];
      buf.reserve(t.nbytes(), input_names[i]);
      cuda_check(cudaMemcpyAsync(buf.ptr, t.raw(), t.nbytes(), cudaMemcpyHostToDevice, stream_), "copy of " + input_names[i]);
      context_->setTensorAddress(name, buf.ptr);
    }
    std::vector<Tensor> result;
    for (const std::string& n : output_names) {
      const nvinfer1::Dims dims = context_->getTensorShape(n.c_str());
      if (dims.nbDims < 0) throw BackendError(where + ": no output " + n);
      std::vector<int64_t> shape(dims.d, dims.d + dims.nbDims);
      for (int64_t d : shape)
        if (d < 0) throw BackendError(where + ": output " + n + " has an unresolved shape; were all inputs given?");
      result.emplace_back(from_trt(engine_->getTensorDataType(n.c_str()), where), shape);
      DeviceBuffer& buf = buffers_[n];
      buf.reserve(result.back().nbytes(), n);
      context_->setTensorAddress(n.c_str(), buf.ptr);
    }
    // Outputs the caller did not ask for still need an address.
    for (const std::string& n : outputs_) {
      if (std::find(output_names.begin(), output_names.end(), n) != output_names.end()) continue;
      const nvinfer1::Dims dims = context_->getTensorShape(n.c_str());
      std::size_t bytes = dtype_size(from_trt(engine_->getTensorDataType(n.c_str()), where));
      for (int32_t d = 0; d < dims.nbDims; ++d) bytes *= static_cast<std::size_t>(std::max<int64_t>(dims.d[d], 0));
      DeviceBuffer& buf = buffers_[n];
      buf.reserve(bytes, n);
      context_->setTensorAddress(n.c_str(), buf.ptr);
    }
    if (!context_->enqueueV3(stream_)) throw BackendError(where + ": enqueueV3 failed: " + logger().last());
    for (std::size_t i = 0; i < output_names.size(); ++i)
      cuda_check(cudaMemcpyAsync(result[i].raw(), buffers_[output_names[i]].ptr, result[i].nbytes(),
                                 cudaMemcpyDeviceToHost, stream_),
                 "copy of " + output_names[i]);
    cuda_check(cudaStreamSynchronize(stream_), where);
    return result;
  }

  std::vector<std::string> input_names() const override { return inputs_; }
  std::vector<std::string> output_names() const override { return outputs_; }
  std::string name() const override { return "tensorrt"; }

 private:
  std::string role_, path_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  std::vector<std::string> inputs_, outputs_;
  std::map<std::string, DeviceBuffer> buffers_;
  std::mutex run_mu_;
};

}  // namespace

std::unique_ptr<Backend> make_trt_backend(const std::string& engine_path, const std::string& role,
                                          const EngineSpec& engine, const Options& options) {
  return std::make_unique<TrtBackend>(engine_path, role, engine, options);
}

}  // namespace qrnn
