// The bundle manifest (DESIGN.md section 4; the schema is qrnn_deploy/bundle.py): what `export`
// writes and every runtime reads. load_manifest validates exactly what bundle.py validates, so a
// bundle the Python runtime rejects is rejected here with the same kind of message.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qrnn/tensor.hpp"

namespace qrnn {

constexpr const char* kBundleFormat = "qrnn-deploy-bundle";
constexpr int kBundleVersion = 1;
constexpr const char* kManifestName = "manifest.json";

// One dimension of a manifest shape: a size, or a symbol ("B", "T", "S") bound at run time.
struct Dim {
  int64_t size = -1;   // >= 0 when fixed
  std::string symbol;  // non-empty when symbolic
  bool is_symbol() const { return !symbol.empty(); }
};

struct TensorSpec {
  std::string name;
  std::vector<Dim> shape;
  std::string dtype = "float32";
};

// A carried state: graph input `name`; its next value is graph output `output`.
struct StateSpec {
  std::string name;
  std::string output;
  std::vector<Dim> shape;
  std::string dtype = "float32";
};

struct GraphSpec {
  std::string file;
  std::vector<TensorSpec> inputs;   // non-state inputs
  std::vector<TensorSpec> outputs;  // non-state outputs
  std::vector<StateSpec> states;
  const TensorSpec* find_input(const std::string& name) const;
  const TensorSpec* find_output(const std::string& name) const;
};

// A TensorRT engine built from one graph (sits beside the ONNX file).
struct EngineSpec {
  std::string file;
  std::string precision = "fp32";
  std::string plugin = "library";  // "aot" (kernel embedded) or "library" (needs the plugin .so)
  std::optional<std::string> tensorrt_version;
};

struct SpecialTokens {
  int64_t pad = 0, unk = 1, bos = 2, eos = 3;
};

struct Manifest {
  std::string model_type;  // language_model | classifier | seq2seq
  std::string fo_pool;     // custom | portable
  std::map<std::string, GraphSpec> graphs;   // role -> graph
  std::map<std::string, EngineSpec> engines; // role -> engine
  // Character vocabularies: one shared {"type": "char", ...} entry, or a seq2seq pair
  // {"src": {...}, "tgt": {...}}; both lists are empty when the bundle has no vocabulary.
  std::vector<std::string> src_vocab_symbols;  // the input side (the only one of an lm / classifier)
  std::vector<std::string> tgt_vocab_symbols;  // the output side (== src for a shared vocabulary)
  SpecialTokens special;
  std::string config_json;  // the model config, as JSON text (informational)
  std::string custom_op_domain, custom_op_type;

  const GraphSpec& graph(const std::string& role) const;  // throws BundleError when absent
};

// Reads and validates `bundle_dir/manifest.json`. With check_files, every graph file must exist.
// Throws BundleError with a message that says what to do.
Manifest load_manifest(const std::string& bundle_dir, bool check_files = true);
// Parses manifest JSON text (`where` names it in messages).
Manifest parse_manifest(const std::string& json_text, const std::string& where);

// Zero-filled tensor of a state spec with the symbol "B" bound to `batch`; other symbols are
// an error (a state's shape is fixed apart from the batch).
Tensor zero_state(const StateSpec& spec, int64_t batch, const std::string& role);

}  // namespace qrnn
