// Inference backends behind one small interface: a Backend runs one graph of a bundle on named
// host tensors. The onnxruntime backend is always built; the TensorRT backend only when CMake
// finds TensorRT (QRNN_HAVE_TENSORRT).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "qrnn/manifest.hpp"
#include "qrnn/tensor.hpp"

namespace qrnn {

struct Options {
  std::string backend = "onnxruntime";  // "onnxruntime" or "tensorrt"
  int threads = 0;                      // onnxruntime intra-op threads (0: onnxruntime's default)
  // The FoPool custom-op library (libqrnn_ort.so), needed by bundles exported with fo_pool
  // "custom". Empty: $QRNN_ORT_LIBRARY, then $QRNN_PLUGIN_DIR/libqrnn_ort.so, then the library
  // built by scripts/build_plugins.sh (as qrnn_deploy._native.ort_library_path).
  std::string custom_op_library;
  // The TensorRT FoPool plugin library for engines with plugin "library". Empty:
  // $QRNN_TRT_PLUGIN_LIBRARY, then the built default.
  std::string trt_plugin_library;
  int device = 0;  // CUDA device of the TensorRT backend
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs the graph: inputs[i] is fed as input_names[i]; returns the outputs named `output_names`
  // in that order. Throws BackendError naming the graph on failure. May be called from several
  // threads at once (onnxruntime sessions run concurrently; the TensorRT backend serializes).
  virtual std::vector<Tensor> run(const std::vector<std::string>& input_names,
                                  const std::vector<const Tensor*>& inputs,
                                  const std::vector<std::string>& output_names) = 0;
  // The names the loaded graph / engine declares (checked against the manifest at load).
  virtual std::vector<std::string> input_names() const = 0;
  virtual std::vector<std::string> output_names() const = 0;
  virtual std::string name() const = 0;  // "onnxruntime" / "tensorrt"
};

// Opens graph `role` of the bundle at `bundle_dir` with the backend named in `options`.
std::unique_ptr<Backend> make_backend(const std::string& bundle_dir, const Manifest& manifest,
                                      const std::string& role, const Options& options);

// The custom-op library to register for this process: `options.custom_op_library`, else
// $QRNN_ORT_LIBRARY, $QRNN_PLUGIN_DIR/libqrnn_ort.so, the default path compiled in by CMake when
// it exists; "" when none.
std::string resolve_custom_op_library(const Options& options);

std::unique_ptr<Backend> make_ort_backend(const std::string& path, const std::string& role, const Manifest& manifest,
                                          const Options& options);
#ifdef QRNN_HAVE_TENSORRT
std::unique_ptr<Backend> make_trt_backend(const std::string& engine_path, const std::string& role,
                                          const EngineSpec& engine, const Options& options);
#endif

}  // namespace qrnn
