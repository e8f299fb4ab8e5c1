// The FoPool TensorRT plugin: see fo_pool_plugin.h. Loads with trtexec --dynamicPlugins=<lib>
// and IPluginRegistry::loadLibrary (C++ apps, the Python runtime's load_library), which call the
// exported getCreators(). There is no static registrar (nothing of TensorRT is linked), so a
// plain dlopen (Triton's TensorRT backend, LD_PRELOAD) registers nothing: Triton serves the AOT
// engines instead (docs/tensorrt.md).
#include "fo_pool_plugin.h"

#include <cstring>
#include <mutex>

#include "fo_pool_cuda.h"

using namespace nvinfer1;

namespace qrnn {
namespace trt {

namespace {

// TensorRT hands us its logger through setLoggerFinder (called when the library is loaded).
ILoggerFinder* g_logger_finder = nullptr;
std::mutex g_logger_mutex;

void LogError(std::string const& msg) noexcept {
  std::lock_guard<std::mutex> lock(g_logger_mutex);
  ILogger* logger = g_logger_finder ? g_logger_finder->findLogger() : nullptr;
  const std::string line = "qrnn::FoPool plugin: " + msg;
  if (logger) logger->log(ILogger::Severity::kERROR, line.c_str());
}

int32_t GateCount(std::string const& pooling) {
  if (pooling == "f") return 2;
  if (pooling == "fo") return 3;
  if (pooling == "ifo") return 4;
  return 0;
}

bool IntField(PluginField const& f, int32_t* out) {
  if (f.length < 1 || f.data == nullptr) return false;
  switch (f.type) {
    case PluginFieldType::kINT32: *out = *static_cast<int32_t const*>(f.data); return true;
    case PluginFieldType::kINT64: *out = static_cast<int32_t>(*static_cast<int64_t const*>(f.data)); return true;
    case PluginFieldType::kINT16: *out = *static_cast<int16_t const*>(f.data); return true;
    case PluginFieldType::kINT8: *out = *static_cast<int8_t const*>(f.data); return true;
    default: return false;
  }
}

}  // namespace

bool ParseFields(PluginFieldCollection const* fc, FoPoolParams* params, std::string* error) {
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
    PluginField const& f = fc->fields[i];
    if (f.name == nullptr) continue;
    if (std::strcmp(f.name, "pooling") == 0) {
      if (f.type != PluginFieldType::kCHAR || f.data == nullptr) {
        *error = "field 'pooling' must be a string";
        return false;
      }
      // The length may or may not count a terminating NUL: stop at the first one.
      std::string s(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
      params->pooling = s.substr(0, s.find('\0'));
    } else if (std::strcmp(f.name, "num_inputs") == 0) {
      int32_t v = 0;
      // 0: serialised before configuration (a clone TensorRT never configured); onShapeChange
      // sets it before any enqueue, so refusing it would only make such an engine unloadable.
      if (!IntField(f, &v) || v < 0 || v > 2) {
        *error = "field 'num_inputs' must be 0 (not configured yet), 1 or 2";
        return false;
      }
      params->num_inputs = v;
    } else if (std::strcmp(f.name, "batch_first") == 0 || std::strcmp(f.name, "reverse") == 0) {
      int32_t v = 0;
      if (!IntField(f, &v) || (v != 0 && v != 1)) {
        *error = std::string("field '") + f.name + "' must be the integer 0 or 1";
        return false;
      }
      (std::strcmp(f.name, "batch_first") == 0 ? params->batch_first : params->reverse) = v;
    }
  }
  params->P = GateCount(params->pooling);
  if (params->P == 0) {
    *error = "unknown pooling '" + params->pooling + "': use one of 'f', 'fo', 'ifo'";
    return false;
  }
  return true;
}

// ---- the plugin ------------------------------------------------------------------------------

FoPoolPlugin::FoPoolPlugin(FoPoolParams params) : params_(std::move(params)) {}

IPluginCapability* FoPoolPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
  }
  return nullptr;
}

IPluginV3* FoPoolPlugin::clone() noexcept {
  try {
    return new FoPoolPlugin(params_);
  } catch (...) {
    LogError("out of memory in clone()");
    return nullptr;
  }
}

int32_t FoPoolPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                         int32_t nbInputs) const noexcept {
  if (nbInputs < 1 || nbOutputs != 2) return -1;
  outputTypes[0] = inputTypes[0];
  outputTypes[1] = inputTypes[0];
  return 0;
}

int32_t FoPoolPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                                      DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept {
  if (nbInputs < 1 || nbInputs > 2 || nbOutputs != 2) {
    LogError("expects inputs (gates[, c0]) and outputs (h, c_last)");
    return -1;
  }
  DimsExprs const& g = inputs[0];
  if (g.nbDims != 3) {
    LogError("input 'gates' must have rank 3 ([T, B, P*H] or [B, T, P*H])");
    return -1;
  }
  IDimensionExpr const* H =
      exprBuilder.operation(DimensionOperation::kFLOOR_DIV, *g.d[2], *exprBuilder.constant(params_.P));
  // h: the layout of gates with H on the last axis.
  outputs[0].nbDims = 3;
  outputs[0].d[0] = g.d[0];
  outputs[0].d[1] = g.d[1];
  outputs[0].d[2] = H;
  // c_last: [B, H].
  outputs[1].nbDims = 2;
  outputs[1].d[0] = params_.batch_first ? g.d[0] : g.d[1];
  outputs[1].d[1] = H;
  return 0;
}

bool FoPoolPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                             int32_t nbOutputs) noexcept {
  if (pos < 0 || pos >= nbInputs + nbOutputs) return false;
  PluginTensorDesc const& d = inOut[pos].desc;
  if (d.format != TensorFormat::kLINEAR) return false;
  if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
  return d.type == inOut[0].desc.type;  // c0, h, c_last: the type of gates
}

int32_t FoPoolPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                      DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept {
  if (nbInputs < 1 || nbInputs > 2 || nbOutputs != 2 || in[0].desc.dims.nbDims != 3) return -1;
  if (nbInputs == 2 && in[1].desc.dims.nbDims != 2) {
    LogError("input 'c0' must have rank 2 ([B, H])");
    return -1;
  }
  params_.num_inputs = nbInputs;
  return 0;
}

int32_t FoPoolPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
                                    int32_t nbOutputs) noexcept {
  if (nbInputs < 1 || nbInputs > 2 || nbOutputs != 2) return -1;
  Dims const& g = in[0].dims;
  if (g.nbDims != 3 || g.d[2] % params_.P != 0) {
    LogError("the last axis of 'gates' must be P*H (P = " + std::to_string(params_.P) + " for pooling '" +
             params_.pooling + "')");
    return -1;
  }
  const int64_t B = params_.batch_first ? g.d[0] : g.d[1];
  const int64_t H = g.d[2] / params_.P;
  if (nbInputs == 2 && (in[1].dims.nbDims != 2 || in[1].dims.d[0] != B || in[1].dims.d[1] != H)) {
    LogError("input 'c0' must be [B, H] = [" + std::to_string(B) + ", " + std::to_string(H) + "]");
    return -1;
  }
  params_.num_inputs = nbInputs;
  return 0;
}

int32_t FoPoolPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
                              void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept {
  Dims const& g = inputDesc[0].dims;
  const int64_t T = params_.batch_first ? g.d[1] : g.d[0];
  const int64_t B = params_.batch_first ? g.d[0] : g.d[1];
  const int64_t H = g.d[2] / params_.P;
  const int dtype = inputDesc[0].type == DataType::kHALF ? QRNN_F16 : QRNN_F32;
  // enqueue is not told how many inputs there are: configurePlugin / onShapeChange recorded it.
  if (params_.num_inputs != 1 && params_.num_inputs != 2) {
    LogError("enqueue before the input count was configured");
    return -1;
  }
  const void* c0 = params_.num_inputs == 2 ? inputs[1] : nullptr;
  const int rc = qrnn_fo_pool_cuda_forward(dtype, dtype, inputs[0], c0, outputs[0], outputs[1], T, B, H, params_.P,
                                           params_.batch_first, params_.reverse, stream);
  if (rc != 0) {
    LogError(std::string("CUDA launch failed: ") + qrnn_fo_pool_cuda_error_string(rc));
    return -1;
  }
  return 0;
}

PluginFieldCollection const* FoPoolPlugin::getFieldsToSerialize() noexcept {
  fields_.clear();
  fields_.emplace_back("pooling", params_.pooling.c_str(), PluginFieldType::kCHAR,
                       static_cast<int32_t>(params_.pooling.size() + 1));
  fields_.emplace_back("batch_first", &params_.batch_first, PluginFieldType::kINT32, 1);
  fields_.emplace_back("reverse", &params_.reverse, PluginFieldType::kINT32, 1);
  fields_.emplace_back("num_inputs", &params_.num_inputs, PluginFieldType::kINT32, 1);
  field_collection_.nbFields = static_cast<int32_t>(fields_.size());
  field_collection_.fields = fields_.data();
  return &field_collection_;
}

// ---- the creator -----------------------------------------------------------------------------

FoPoolPluginCreator::FoPoolPluginCreator() {
  fields_.emplace_back("pooling", nullptr, PluginFieldType::kCHAR, 1);
  fields_.emplace_back("batch_first", nullptr, PluginFieldType::kINT32, 1);
  fields_.emplace_back("reverse", nullptr, PluginFieldType::kINT32, 1);
  field_collection_.nbFields = static_cast<int32_t>(fields_.size());
  field_collection_.fields = fields_.data();
}

IPluginV3* FoPoolPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc,
                                             TensorRTPhase) noexcept {
  try {
    FoPoolParams params;
    std::string error;
    if (!ParseFields(fc, &params, &error)) {
      LogError(std::string(name ? name : "FoPool") + ": " + error);
      return nullptr;
    }
    return new FoPoolPlugin(params);
  } catch (...) {
    LogError("out of memory in createPlugin()");
    return nullptr;
  }
}

}  // namespace trt
}  // namespace qrnn

// ---- library entry points (TensorRT 10 plugin library interface) -----------------------------

extern "C" {

__attribute__((visibility("default"))) void setLoggerFinder(ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(qrnn::trt::g_logger_mutex);
  qrnn::trt::g_logger_finder = finder;
}

__attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static qrnn::trt::FoPoolPluginCreator creator;
  static IPluginCreatorInterface* const creators[] = {&creator};
  nbCreators = 1;
  return creators;
}

}  // extern "C"
