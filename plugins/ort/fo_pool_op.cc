// Attribute parsing, input validation and shape inference shared by every FoPool kernel.
#include "fo_pool_op.h"

#include <memory>
#include <string>
#include <vector>

namespace qrnn {
namespace ort {

namespace {

std::string NodeLabel(const FoPoolAttrs& attrs) {
  return attrs.node.empty() ? std::string("FoPool") : "FoPool node '" + attrs.node + "'";
}

// Attribute that may be absent: returns false (and no error) when it is not set on the node.
bool TryReadInt(const OrtApi& api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  OrtStatusPtr st = api.KernelInfoGetAttribute_int64(info, name, out);
  if (st) {
    api.ReleaseStatus(st);
    return false;
  }
  return true;
}

bool TryReadString(const OrtApi& api, const OrtKernelInfo* info, const char* name, std::string* out) {
  size_t size = 0;
  OrtStatusPtr st = api.KernelInfoGetAttribute_string(info, name, nullptr, &size);
  if (st) {
    api.ReleaseStatus(st);
    return false;
  }
  std::vector<char> buf(size + 1, '\0');
  st = api.KernelInfoGetAttribute_string(info, name, buf.data(), &size);
  if (st) {
    api.ReleaseStatus(st);
    return false;
  }
  *out = std::string(buf.data());
  return true;
}

// Whether the node sets `name` with any type this API can read: a read of the expected type
// that failed on a set attribute means the type is wrong (which must not mean "the default").
bool HasAttr(const OrtApi& api, const OrtKernelInfo* info, const char* name) {
  auto ok = [&](OrtStatusPtr st) {
    if (st == nullptr) return true;
    api.ReleaseStatus(st);
    return false;
  };
  int64_t i = 0;
  float f = 0;
  size_t n = 0;
  if (ok(api.KernelInfoGetAttribute_int64(info, name, &i))) return true;
  if (ok(api.KernelInfoGetAttribute_float(info, name, &f))) return true;
  if (ok(api.KernelInfoGetAttribute_string(info, name, nullptr, &n))) return true;
  n = 0;
  if (ok(api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &n))) return true;
  n = 0;
  return ok(api.KernelInfoGetAttributeArray_float(info, name, nullptr, &n));
}

}  // namespace

OrtStatusPtr ReadFoPoolAttrs(const OrtApi& api, const OrtKernelInfo* info, FoPoolAttrs* out) {
  size_t size = 0;
  if (OrtStatusPtr st = api.KernelInfo_GetNodeName(info, nullptr, &size)) {
    api.ReleaseStatus(st);
  } else if (size > 0) {
    std::vector<char> buf(size + 1, '\0');
    if (OrtStatusPtr st2 = api.KernelInfo_GetNodeName(info, buf.data(), &size)) {
      api.ReleaseStatus(st2);
    } else {
      out->node = buf.data();
    }
  }
  std::string pooling = "fo";
  if (!TryReadString(api, info, "pooling", &pooling) && HasAttr(api, info, "pooling")) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, (NodeLabel(*out) + ": attribute 'pooling' must be a string "
                                                   "('f', 'fo' or 'ifo')").c_str());
  }
  out->P = fopool::gate_count(pooling);
  if (out->P == 0) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, (NodeLabel(*out) + ": unknown pooling attribute '" + pooling +
                                                   "': use one of 'f', 'fo', 'ifo'").c_str());
  }
  for (const char* name : {"batch_first", "reverse"}) {
    int64_t v = 0;
    if (!TryReadInt(api, info, name, &v) && HasAttr(api, info, name)) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, (NodeLabel(*out) + ": attribute '" + name +
                                                     "' must be an integer (0 or 1)").c_str());
    }
    if (v != 0 && v != 1) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, (NodeLabel(*out) + ": attribute '" + name +
                                                     "' must be 0 or 1, got " + std::to_string(v)).c_str());
    }
    (std::string(name) == "batch_first" ? out->batch_first : out->reverse) = v != 0;
  }
  return nullptr;
}

OrtStatusPtr PrepareFoPoolCall(const OrtApi& api, OrtKernelContext* context, const FoPoolAttrs& attrs,
                               FoPoolCall* call) {
  Ort::KernelContext ctx(context);
  const size_t n_in = ctx.GetInputCount();
  Ort::ConstValue gates = ctx.GetInput(0);
  if (!gates) return api.CreateStatus(ORT_INVALID_ARGUMENT, (NodeLabel(attrs) + ": input 'gates' is missing").c_str());
  Ort::ConstValue c0 = n_in > 1 ? ctx.GetInput(1) : Ort::ConstValue{nullptr};

  auto ginfo = gates.GetTensorTypeAndShapeInfo();
  call->type = ginfo.GetElementType();
  if (call->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && call->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT,
                            (NodeLabel(attrs) + ": input 'gates' must be float32 or float16").c_str());
  }
  std::vector<int64_t> gshape = ginfo.GetShape();
  std::vector<int64_t> cshape;
  if (c0) {
    auto cinfo = c0.GetTensorTypeAndShapeInfo();
    if (cinfo.GetElementType() != call->type) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT,
                              (NodeLabel(attrs) + ": input 'c0' must have the element type of 'gates'").c_str());
    }
    cshape = cinfo.GetShape();
  }
  call->d.P = attrs.P;
  call->d.batch_first = attrs.batch_first;
  call->d.reverse = attrs.reverse;
  std::string err = fopool::check_shapes(gshape.data(), gshape.size(), static_cast<bool>(c0), cshape.data(),
                                         cshape.size(), &call->d);
  if (!err.empty()) {
    if (!attrs.node.empty()) err = NodeLabel(attrs) + err.substr(6);  // "FoPool" -> "FoPool node 'x'"
    return api.CreateStatus(ORT_INVALID_ARGUMENT, err.c_str());
  }
  const fopool::Dims& d = call->d;
  std::vector<int64_t> hshape = {gshape[0], gshape[1], d.H};
  call->gates = gates.GetTensorRawData();
  call->c0 = c0 ? c0.GetTensorRawData() : nullptr;
  call->h = ctx.GetOutput(0, hshape).GetTensorMutableRawData();
  if (ctx.GetOutputCount() > 1) {
    Ort::UnownedValue c_last = ctx.GetOutput(1, std::vector<int64_t>{d.B, d.H});
    call->c_last = c_last ? c_last.GetTensorMutableRawData() : nullptr;
  }
  return nullptr;
}

namespace {

struct InfoDeleter {
  void operator()(OrtTensorTypeAndShapeInfo* p) const { Ort::GetApi().ReleaseTensorTypeAndShapeInfo(p); }
};

struct DimList {
  std::vector<int64_t> ints;
  std::vector<const char*> syms;  // "" where the dimension is an integer (or unknown: -1)
  std::vector<std::string> owned;  // copies of the names, when the type info they point into goes
  void own_names() {
    owned.assign(syms.size(), std::string());
    for (size_t i = 0; i < syms.size(); ++i) {
      if (syms[i]) owned[i] = syms[i];
      syms[i] = owned[i].c_str();
    }
  }
  bool known(size_t i) const { return ints[i] >= 0 && (!syms[i] || !*syms[i]); }
  bool named(size_t i) const { return syms[i] && *syms[i]; }
};

OrtStatusPtr ReadDims(const OrtApi& api, const OrtTensorTypeAndShapeInfo* info, DimList* out) {
  size_t rank = 0;
  if (OrtStatusPtr st = api.GetDimensionsCount(info, &rank)) return st;
  out->ints.assign(rank, -1);
  out->syms.assign(rank, nullptr);
  if (rank == 0) return nullptr;
  if (OrtStatusPtr st = api.GetDimensions(info, out->ints.data(), rank)) return st;
  return api.GetSymbolicDimensions(info, out->syms.data(), rank);
}

// Reads a string / int attribute in shape inference; absent -> default.
std::string InferAttrString(const OrtApi& api, OrtShapeInferContext* ctx, const char* name, const char* dflt) {
  const OrtOpAttr* attr = nullptr;
  if (OrtStatusPtr st = api.ShapeInferContext_GetAttribute(ctx, name, &attr)) {
    api.ReleaseStatus(st);
    return dflt;
  }
  size_t len = 0;
  OrtStatusPtr st = api.ReadOpAttr(attr, ORT_OP_ATTR_STRING, nullptr, 0, &len);
  if (st) api.ReleaseStatus(st);
  std::string s(len, '\0');
  if (len == 0) return s;
  if (OrtStatusPtr st2 = api.ReadOpAttr(attr, ORT_OP_ATTR_STRING, &s[0], len, &len)) {
    api.ReleaseStatus(st2);
    return dflt;
  }
  s.resize(len);
  return s;
}

int64_t InferAttrInt(const OrtApi& api, OrtShapeInferContext* ctx, const char* name, int64_t dflt) {
  const OrtOpAttr* attr = nullptr;
  if (OrtStatusPtr st = api.ShapeInferContext_GetAttribute(ctx, name, &attr)) {
    api.ReleaseStatus(st);
    return dflt;
  }
  int64_t v = dflt;
  size_t len = 0;
  if (OrtStatusPtr st = api.ReadOpAttr(attr, ORT_OP_ATTR_INT, &v, sizeof(v), &len)) {
    api.ReleaseStatus(st);
    return dflt;
  }
  return v;
}

OrtStatusPtr SetOutput(const OrtApi& api, OrtShapeInferContext* ctx, size_t index, ONNXTensorElementDataType type,
                       const std::vector<int64_t>& ints, const std::vector<const char*>& syms) {
  OrtTensorTypeAndShapeInfo* raw = nullptr;
  if (OrtStatusPtr st = api.CreateTensorTypeAndShapeInfo(&raw)) return st;
  std::unique_ptr<OrtTensorTypeAndShapeInfo, InfoDeleter> info(raw);
  if (OrtStatusPtr st = api.SetTensorElementType(raw, type)) return st;
  if (OrtStatusPtr st = api.SetDimensions(raw, ints.data(), ints.size())) return st;
  if (OrtStatusPtr st = api.SetSymbolicDimensions(raw, const_cast<const char**>(syms.data()), syms.size())) return st;
  return api.ShapeInferContext_SetOutputTypeShape(ctx, index, raw);
}

}  // namespace

namespace {

struct TypeInfoDeleter {
  void operator()(OrtTypeInfo* p) const { Ort::GetApi().ReleaseTypeInfo(p); }
};

// The dimensions of kernel input i as the session knows them; false when unknown (no shape, an
// absent optional input, or an API that cannot tell).
bool StaticDims(const OrtApi& api, const OrtKernelInfo* info, size_t i, DimList* out) {
  OrtTypeInfo* raw = nullptr;
  if (OrtStatusPtr st = api.KernelInfo_GetInputTypeInfo(info, i, &raw)) {
    api.ReleaseStatus(st);
    return false;
  }
  std::unique_ptr<OrtTypeInfo, TypeInfoDeleter> owned(raw);
  const OrtTensorTypeAndShapeInfo* tinfo = nullptr;
  if (OrtStatusPtr st = api.CastTypeInfoToTensorInfo(raw, &tinfo)) {
    api.ReleaseStatus(st);
    return false;
  }
  if (tinfo == nullptr) return false;
  if (OrtStatusPtr st = ReadDims(api, tinfo, out)) {
    api.ReleaseStatus(st);
    return false;
  }
  out->own_names();  // the names point into the type info released on return
  return !out->ints.empty();  // rank 0 also stands for "shape unknown"
}

std::string DimsStr(const DimList& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.ints.size(); ++i) {
    s += i ? ", " : "";
    s += d.named(i) ? std::string(d.syms[i]) : d.known(i) ? std::to_string(d.ints[i]) : std::string("?");
  }
  return s + "]";
}

}  // namespace

OrtStatusPtr CheckStaticShapes(const OrtApi& api, const OrtKernelInfo* info, const FoPoolAttrs& attrs) {
  size_t n_in = 0;
  if (OrtStatusPtr st = api.KernelInfo_GetInputCount(info, &n_in)) {
    api.ReleaseStatus(st);
    return nullptr;
  }
  DimList g;
  if (n_in == 0 || !StaticDims(api, info, 0, &g)) return nullptr;
  const std::string who = NodeLabel(attrs);
  const char* layout = attrs.batch_first ? "[B, T, P*H]" : "[T, B, P*H]";
  if (g.ints.size() != 3) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, (who + ": input 'gates' must have rank 3 " + layout +
                                                   ", the graph gives it shape " + DimsStr(g)).c_str());
  }
  int64_t H = -1;
  if (g.known(2)) {
    if (g.ints[2] % attrs.P != 0 || g.ints[2] == 0) {
      static const char* names[] = {"", "", "f", "fo", "ifo"};
      return api.CreateStatus(ORT_INVALID_ARGUMENT,
                              (who + ": last axis of input 'gates' (" + std::to_string(g.ints[2]) + ", shape " +
                               DimsStr(g) + " in the graph) is not P*H with P = " + std::to_string(attrs.P) +
                               " for pooling '" + names[attrs.P] + "' and H >= 1").c_str());
    }
    H = g.ints[2] / attrs.P;
  }
  DimList c;
  if (n_in < 2 || !StaticDims(api, info, 1, &c)) return nullptr;
  const size_t bax = attrs.batch_first ? 0 : 1;
  const bool bad = c.ints.size() != 2 || (g.known(bax) && c.known(0) && c.ints[0] != g.ints[bax]) ||
                   (H >= 0 && c.known(1) && c.ints[1] != H);
  if (bad) {
    const std::string want = "[" + (g.known(bax) ? std::to_string(g.ints[bax]) : std::string("B")) + ", " +
                             (H >= 0 ? std::to_string(H) : std::string("H")) + "]";
    return api.CreateStatus(ORT_INVALID_ARGUMENT, (who + ": input 'c0' must be [B, H] = " + want +
                                                   " for gates of shape " + DimsStr(g) +
                                                   ", the graph gives it shape " + DimsStr(c)).c_str());
  }
  return nullptr;
}

// Bad static shapes come back as a failed status; onnxruntime 1.32 drops statuses returned by
// custom-op shape inference (the graph loads and the kernel's own check fails the first run),
// later versions may refuse the graph up front. Either way nothing crashes.
OrtStatusPtr InferFoPoolShapes(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi& api = Ort::GetApi();
  return Guard(api, [&]() -> OrtStatusPtr {
    size_t n_in = 0;
    if (OrtStatusPtr st = api.ShapeInferContext_GetInputCount(ctx, &n_in)) return st;
    if (n_in == 0) return nullptr;
    OrtTensorTypeAndShapeInfo* ginfo = nullptr;  // owned by the context
    if (OrtStatusPtr st = api.ShapeInferContext_GetInputTypeShape(ctx, 0, &ginfo)) return st;
    ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
    if (OrtStatusPtr st = api.GetTensorElementType(ginfo, &type)) return st;
    DimList g;
    if (OrtStatusPtr st = ReadDims(api, ginfo, &g)) return st;
    // Rank 0 here also stands for "shape unknown": leave the outputs to the runtime check.
    if (g.ints.empty()) return nullptr;
    const std::string pooling = InferAttrString(api, ctx, "pooling", "fo");
    const int P = fopool::gate_count(pooling);
    if (P == 0) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT,
                              ("FoPool: unknown pooling attribute '" + pooling + "': use one of 'f', 'fo', 'ifo'").c_str());
    }
    if (g.ints.size() != 3) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, ("FoPool: input 'gates' must have rank 3, got shape " +
                                                     fopool::shape_str(g.ints.data(), g.ints.size())).c_str());
    }
    // H is only known when the last axis is a number; a symbolic P*H cannot be divided, and
    // inventing a name for H would tell the memory planner that unrelated tensors match.
    if (!g.known(2)) return nullptr;
    if (g.ints[2] % P != 0 || g.ints[2] == 0) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, ("FoPool: last axis of input 'gates' (" + std::to_string(g.ints[2]) +
                                                     ") is not P*H with P = " + std::to_string(P)).c_str());
    }
    const int64_t H = g.ints[2] / P;
    const bool batch_first = InferAttrInt(api, ctx, "batch_first", 0) != 0;
    const size_t bax = batch_first ? 0 : 1;
    static const char kEmpty[] = "";
    auto sym = [&](size_t i) { return g.named(i) ? g.syms[i] : kEmpty; };
    // A dimension that is neither a number nor a name cannot be passed on through this API.
    if (!(g.known(0) || g.named(0)) || !(g.known(1) || g.named(1))) return nullptr;
    if (OrtStatusPtr st = SetOutput(api, ctx, 0, type, {g.ints[0], g.ints[1], H}, {sym(0), sym(1), kEmpty})) return st;
    // The context cannot tell whether the node asked for c_last; when it did not, setting it
    // fails harmlessly, so that status is dropped.
    if (OrtStatusPtr st = SetOutput(api, ctx, 1, type, {g.ints[bax], H}, {sym(bax), kEmpty})) api.ReleaseStatus(st);
    return nullptr;
  });
}

}  // namespace ort
}  // namespace qrnn
