// A hand-written subset of TensorRT 10's documented runtime API (NvInferRuntime.h): only the
// declarations runtime/src/trt_backend.cpp uses, with TensorRT 10's signatures, so that file can
// be compiled (-fsyntax-only) on machines without TensorRT. Not NVIDIA's header; nothing here is
// defined or linked. Used by tests/test_cpp_runtime.py.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace nvinfer1 {

using AsciiChar = char;

enum class DataType : int32_t { kFLOAT = 0, kHALF = 1, kINT8 = 2, kINT32 = 3, kBOOL = 4, kUINT8 = 5, kFP8 = 6,
                                kBF16 = 7, kINT64 = 8, kINT4 = 9 };
enum class TensorIOMode : int32_t { kNONE = 0, kINPUT = 1, kOUTPUT = 2 };
enum class ExecutionContextAllocationStrategy : int32_t { kSTATIC = 0, kON_PROFILE_CHANGE = 1, kUSER_MANAGED = 2 };

class Dims64 {
 public:
  static constexpr int32_t MAX_DIMS{8};
  int32_t nbDims;
  int64_t d[MAX_DIMS];
};
using Dims = Dims64;

class ILogger {
 public:
  enum class Severity : int32_t { kINTERNAL_ERROR = 0, kERROR = 1, kWARNING = 2, kINFO = 3, kVERBOSE = 4 };
  virtual void log(Severity severity, AsciiChar const* msg) noexcept = 0;
  virtual ~ILogger() = default;
};

class IPluginRegistry {
 public:
  using PluginLibraryHandle = void*;
  PluginLibraryHandle loadLibrary(AsciiChar const* pluginPath) noexcept;
};

class IExecutionContext {
 public:
  virtual ~IExecutionContext() noexcept;
  bool setInputShape(char const* tensorName, Dims const& dims) noexcept;
  bool setTensorAddress(char const* tensorName, void* data) noexcept;
  Dims getTensorShape(char const* tensorName) const noexcept;
  bool enqueueV3(cudaStream_t stream) noexcept;
};

class ICudaEngine {
 public:
  virtual ~ICudaEngine() noexcept;
  int32_t getNbIOTensors() const noexcept;
  char const* getIOTensorName(int32_t index) const noexcept;
  TensorIOMode getTensorIOMode(char const* tensorName) const noexcept;
  DataType getTensorDataType(char const* tensorName) const noexcept;
  IExecutionContext* createExecutionContext(
      ExecutionContextAllocationStrategy strategy = ExecutionContextAllocationStrategy::kSTATIC) noexcept;
};

class IRuntime {
 public:
  virtual ~IRuntime() noexcept;
  ICudaEngine* deserializeCudaEngine(void const* blob, std::size_t size) noexcept;
  IPluginRegistry& getPluginRegistry() noexcept;
};

IRuntime* createInferRuntime(ILogger& logger) noexcept;

}  // namespace nvinfer1
