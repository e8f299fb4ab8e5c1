// libqrnn_ort: onnxruntime custom-op library registering domain "qrnn" (DESIGN.md section 2).
// Load it with SessionOptions.register_custom_ops_library(path) (Python) or
// Ort::SessionOptions::RegisterCustomOpsLibrary (C++); onnxruntime calls RegisterCustomOps.
#include <mutex>
#include <vector>

#include "ops.h"

namespace {

std::mutex g_mutex;

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (!api) {
    // The host onnxruntime is older than the headers this library was built against.
    const OrtApi* v1 = api_base->GetApi(1);
    return v1 ? v1->CreateStatus(ORT_FAIL, "libqrnn_ort: onnxruntime is older than the headers it was built "
                                           "with; rebuild it: bash scripts/build_plugins.sh")
              : nullptr;
  }
  Ort::InitApi(api);
  return qrnn::ort::Guard(*api, [&]() -> OrtStatusPtr {
    // One domain object per registration: onnxruntime keeps it for the sessions created from
    // these options, so it lives as long as the library (function-local static list).
    static std::vector<Ort::CustomOpDomain> domains;
    std::lock_guard<std::mutex> lock(g_mutex);
    Ort::CustomOpDomain domain(qrnn::ort::kDomain);
    qrnn::ort::AddCpuFoPoolOps(domain);
#ifdef QRNN_WITH_CUDA
    qrnn::ort::AddCudaFoPoolOps(domain);
#endif
    Ort::UnownedSessionOptions(options).Add(domain);
    domains.push_back(std::move(domain));
    return nullptr;
  });
}
