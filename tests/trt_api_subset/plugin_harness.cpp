// Runs the FoPool TensorRT plugin's own logic on the CPU, without TensorRT and without a GPU:
// field parsing and validation, serialisation round trip, output shape expressions, format
// support, shape checks, and the arguments enqueue hands to the CUDA launcher (replaced here by
// a recorder). Built with the API subset of this directory by tests/test_tensorrt_plugin.py.
// What this cannot check: TensorRT calling the plugin, and the real headers' layouts.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fo_pool_cuda.h"
#include "fo_pool_plugin.h"

using namespace nvinfer1;

// ---- a tiny expression builder: the subset declares these methods, the harness defines them --

struct Expr : IDimensionExpr {
  explicit Expr(int64_t value) : v(value) {}
  int64_t v;
};

bool IDimensionExpr::isConstant() const noexcept { return true; }
int64_t IDimensionExpr::getConstantValue() const noexcept { return static_cast<Expr const*>(this)->v; }

static std::vector<std::unique_ptr<Expr>> g_exprs;
static Expr const* make(int64_t v) {
  g_exprs.emplace_back(new Expr(v));
  return g_exprs.back().get();
}

IDimensionExpr const* IExprBuilder::constant(int64_t value) noexcept { return make(value); }
IDimensionExpr const* IExprBuilder::operation(DimensionOperation op, IDimensionExpr const& a,
                                              IDimensionExpr const& b) noexcept {
  const int64_t x = a.getConstantValue(), y = b.getConstantValue();
  switch (op) {
    case DimensionOperation::kFLOOR_DIV: return make(x / y);
    case DimensionOperation::kPROD: return make(x * y);
    case DimensionOperation::kSUM: return make(x + y);
    default: return nullptr;
  }
}

struct Builder : IExprBuilder {};

// ---- the CUDA launcher, recorded instead of launched -------------------------------------------

struct Call {
  int dtype, state_dtype;
  const void *gates, *c0;
  void *h, *c_last;
  int64_t T, B, H;
  int P, batch_first, reverse;
  void* stream;
};
static std::vector<Call> g_calls;

extern "C" int qrnn_fo_pool_cuda_forward(int dtype, int state_dtype, const void* gates, const void* c0, void* h,
                                         void* c_last, int64_t T, int64_t B, int64_t H, int P, int batch_first,
                                         int reverse, void* stream) {
  g_calls.push_back({dtype, state_dtype, gates, c0, h, c_last, T, B, H, P, batch_first, reverse, stream});
  return 0;
}
extern "C" const char* qrnn_fo_pool_cuda_error_string(int) { return "recorded"; }

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

// ---- checks ------------------------------------------------------------------------------------

static int g_failed = 0;
#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) {                                               \
      std::printf("FAILED line %d: %s\n", __LINE__, #cond);      \
      ++g_failed;                                                \
    }                                                            \
  } while (0)

static Dims dims(std::vector<int64_t> d) {
  Dims out{};
  out.nbDims = static_cast<int32_t>(d.size());
  for (size_t i = 0; i < d.size(); ++i) out.d[i] = d[i];
  return out;
}

static PluginTensorDesc desc(std::vector<int64_t> d, DataType t) {
  PluginTensorDesc p{};
  p.dims = dims(d);
  p.type = t;
  p.format = TensorFormat::kLINEAR;
  return p;
}

int main() {
  int32_t n = 0;
  IPluginCreatorInterface* const* creators = getCreators(n);
  CHECK(n == 1);
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  CHECK(std::strcmp(creator->getPluginName(), "FoPool") == 0);
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(creator->getPluginNamespace(), "qrnn") == 0);
  CHECK(creator->getFieldNames()->nbFields == 3);

  // Fields as the ONNX parser gives them: pooling (string, no NUL), ints, and the attributes it
  // used to find the plugin, which must be ignored.
  const char pooling[] = {'i', 'f', 'o'};
  const int32_t one = 1;
  const int64_t zero64 = 0;
  std::vector<PluginField> f = {PluginField("pooling", pooling, PluginFieldType::kCHAR, 3),
                                PluginField("batch_first", &one, PluginFieldType::kINT32, 1),
                                PluginField("reverse", &zero64, PluginFieldType::kINT64, 1),
                                PluginField("plugin_version", "1", PluginFieldType::kCHAR, 1)};
  PluginFieldCollection fc{static_cast<int32_t>(f.size()), f.data()};
  std::unique_ptr<IPluginV3> plugin(creator->createPlugin("node", &fc, TensorRTPhase::kBUILD));
  CHECK(plugin != nullptr);
  auto* fp = dynamic_cast<qrnn::trt::FoPoolPlugin*>(plugin.get());
  CHECK(fp && fp->params().P == 4 && fp->params().batch_first == 1 && fp->params().reverse == 0);
  auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
  auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
  CHECK(std::strcmp(core->getPluginNamespace(), "qrnn") == 0);

  // Output shapes: gates [B=3, T=7, 4*H=20] batch-first -> h [3, 7, 5], c_last [3, 5].
  Builder eb;
  DimsExprs in[2]{};
  in[0].nbDims = 3;
  in[0].d[0] = make(3);
  in[0].d[1] = make(7);
  in[0].d[2] = make(20);
  in[1].nbDims = 2;
  in[1].d[0] = make(3);
  in[1].d[1] = make(5);
  DimsExprs out[2]{};
  CHECK(build->getOutputShapes(in, 2, nullptr, 0, out, 2, eb) == 0);
  CHECK(out[0].nbDims == 3 && out[0].d[0]->getConstantValue() == 3 && out[0].d[1]->getConstantValue() == 7 &&
        out[0].d[2]->getConstantValue() == 5);
  CHECK(out[1].nbDims == 2 && out[1].d[0]->getConstantValue() == 3 && out[1].d[1]->getConstantValue() == 5);
  DataType types[2];
  const DataType in_types[2] = {DataType::kHALF, DataType::kHALF};
  CHECK(build->getOutputDataTypes(types, 2, in_types, 2) == 0 && types[0] == DataType::kHALF &&
        types[1] == DataType::kHALF);

  // Formats: float32 / float16 linear, every tensor of the gates' type.
  DynamicPluginTensorDesc io[4]{};
  for (auto& d : io) d.desc = desc({3, 7, 20}, DataType::kHALF);
  CHECK(build->supportsFormatCombination(0, io, 2, 2) && build->supportsFormatCombination(3, io, 2, 2));
  io[2].desc.type = DataType::kFLOAT;
  CHECK(!build->supportsFormatCombination(2, io, 2, 2));
  io[0].desc.type = DataType::kINT32;
  CHECK(!build->supportsFormatCombination(0, io, 2, 2));

  // Runtime: shapes are checked, and enqueue hands the launcher the right arguments.
  PluginTensorDesc rin[2] = {desc({3, 7, 20}, DataType::kHALF), desc({3, 5}, DataType::kHALF)};
  PluginTensorDesc rout[2] = {desc({3, 7, 5}, DataType::kHALF), desc({3, 5}, DataType::kHALF)};
  CHECK(runtime->onShapeChange(rin, 2, rout, 2) == 0);
  PluginTensorDesc bad_c0 = desc({3, 6}, DataType::kHALF);
  PluginTensorDesc bad_in[2] = {rin[0], bad_c0};
  CHECK(runtime->onShapeChange(bad_in, 2, rout, 2) != 0);
  PluginTensorDesc bad_gates[1] = {desc({3, 7, 21}, DataType::kHALF)};
  CHECK(runtime->onShapeChange(bad_gates, 1, rout, 2) != 0);
  CHECK(runtime->onShapeChange(rin, 2, rout, 2) == 0);
  int a, b, c, d;
  const void* inputs[2] = {&a, &b};
  void* outputs[2] = {&c, &d};
  CHECK(runtime->enqueue(rin, rout, inputs, outputs, nullptr, reinterpret_cast<cudaStream_t>(0x1234)) == 0);
  if (g_calls.size() != 1) {
    std::printf("FAILED: enqueue did not call the launcher once\n");
    return 1;
  }
  const Call& k = g_calls.back();
  CHECK(k.dtype == QRNN_F16 && k.state_dtype == QRNN_F16 && k.gates == &a && k.c0 == &b && k.h == &c &&
        k.c_last == &d);
  CHECK(k.T == 7 && k.B == 3 && k.H == 5 && k.P == 4 && k.batch_first == 1 && k.reverse == 0);
  CHECK(k.stream == reinterpret_cast<void*>(0x1234));

  // Serialisation round trip, including the input count (one input: no c0).
  PluginTensorDesc rin1[1] = {desc({3, 7, 20}, DataType::kFLOAT)};
  CHECK(runtime->onShapeChange(rin1, 1, rout, 2) == 0);
  PluginFieldCollection const* ser = runtime->getFieldsToSerialize();
  std::unique_ptr<IPluginV3> again(creator->createPlugin("node", ser, TensorRTPhase::kRUNTIME));
  auto* fp2 = dynamic_cast<qrnn::trt::FoPoolPlugin*>(again.get());
  CHECK(fp2 && fp2->params().pooling == "ifo" && fp2->params().batch_first == 1 && fp2->params().num_inputs == 1);
  auto* runtime2 = static_cast<IPluginV3OneRuntime*>(again->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  const void* inputs1[1] = {&a};
  CHECK(runtime2->enqueue(rin1, rout, inputs1, outputs, nullptr, nullptr) == 0);
  CHECK(g_calls.size() == 2 && g_calls.back().c0 == nullptr && g_calls.back().dtype == QRNN_F32);
  std::unique_ptr<IPluginV3> cloned(plugin->clone());
  CHECK(dynamic_cast<qrnn::trt::FoPoolPlugin*>(cloned.get())->params().P == 4);
  // A plugin serialised before any configuration (num_inputs 0) loads again: refusing it made
  // such an engine unloadable (found by review).
  std::unique_ptr<IPluginV3> fresh(creator->createPlugin("node", &fc, TensorRTPhase::kBUILD));
  CHECK(fresh && dynamic_cast<qrnn::trt::FoPoolPlugin*>(fresh.get())->params().num_inputs == 0);
  auto* fresh_rt = static_cast<IPluginV3OneRuntime*>(fresh->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  std::unique_ptr<IPluginV3> reloaded(
      creator->createPlugin("node", fresh_rt->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
  CHECK(reloaded != nullptr);

  // Bad fields are refused (createPlugin returns null, no crash).
  const char lstm[] = "lstm";
  PluginField badp("pooling", lstm, PluginFieldType::kCHAR, 5);
  PluginFieldCollection badc{1, &badp};
  CHECK(creator->createPlugin("node", &badc, TensorRTPhase::kBUILD) == nullptr);
  const int32_t two = 2;
  PluginField badr("reverse", &two, PluginFieldType::kINT32, 1);
  PluginFieldCollection badrc{1, &badr};
  CHECK(creator->createPlugin("node", &badrc, TensorRTPhase::kBUILD) == nullptr);
  // No fields at all: the defaults of the ONNX op (fo, time-first, forward).
  PluginFieldCollection none{0, nullptr};
  std::unique_ptr<IPluginV3> dflt(creator->createPlugin("node", &none, TensorRTPhase::kBUILD));
  CHECK(dflt && dynamic_cast<qrnn::trt::FoPoolPlugin*>(dflt.get())->params().P == 3);

  if (g_failed == 0) std::printf("ok\n");
  return g_failed == 0 ? 0 : 1;
}
