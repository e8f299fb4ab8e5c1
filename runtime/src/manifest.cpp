#include "qrnn/manifest.hpp"

#include <fstream>
#include <sstream>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "qrnn/errors.hpp"

namespace qrnn {

using nlohmann::json;

namespace {

const std::map<std::string, std::vector<std::string>>& model_roles() {
  static const std::map<std::string, std::vector<std::string>> roles = {
      {"language_model", {"lm"}}, {"classifier", {"classifier"}}, {"seq2seq", {"encoder", "decoder"}}};
  return roles;
}

bool is_dir(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Throws a json::exception-free BundleError naming the missing / mistyped key.
const json& member(const json& obj, const char* key, const std::string& where) {
  if (!obj.is_object()) throw BundleError(where + ": malformed manifest (expected an object holding '" + key + "')");
  auto it = obj.find(key);
  if (it == obj.end()) throw BundleError(where + ": malformed manifest (missing '" + key + "')");
  return *it;
}

std::string string_of(const json& obj, const char* key, const std::string& where) {
  const json& v = member(obj, key, where);
  if (!v.is_string()) throw BundleError(where + ": malformed manifest ('" + key + "' must be a string)");
  return v.get<std::string>();
}

std::vector<Dim> shape_of(const json& obj, const std::string& where, const std::string& what) {
  const json& s = member(obj, "shape", where);
  if (!s.is_array()) throw BundleError(where + ": " + what + " has a malformed shape " + s.dump());
  std::vector<Dim> dims;
  for (const json& d : s) {
    Dim dim;
    if (d.is_number_integer()) {
      dim.size = d.get<int64_t>();
      if (dim.size < 0) throw BundleError(where + ": " + what + " has a malformed shape " + s.dump());
    } else if (d.is_string() && !d.get<std::string>().empty()) {
      dim.symbol = d.get<std::string>();
    } else {
      throw BundleError(where + ": " + what + " has a malformed shape " + s.dump());
    }
    dims.push_back(dim);
  }
  return dims;
}

std::string dtype_of(const json& obj, const std::string& where, const std::string& what) {
  std::string dt = "float32";
  auto it = obj.find("dtype");
  if (it != obj.end()) {
    if (!it->is_string()) throw BundleError(where + ": " + what + " has a malformed dtype");
    dt = it->get<std::string>();
  }
  try {
    dtype_from_name(dt);
  } catch (const BundleError&) {
    throw BundleError(where + ": " + what + " has unknown dtype '" + dt + "'");
  }
  return dt;
}

TensorSpec tensor_of(const json& t, const std::string& where, const std::string& role) {
  TensorSpec spec;
  spec.name = string_of(t, "name", where);
  const std::string what = "graph " + role + ": tensor " + spec.name;
  spec.shape = shape_of(t, where, what);
  spec.dtype = dtype_of(t, where, what);
  return spec;
}

// A file of the bundle: a relative name inside its directory (bundle.py's _check_file).
std::string file_of(const json& obj, const std::string& where, const std::string& what) {
  std::string f = string_of(obj, "file", where);
  bool bad = f.empty() || f[0] == '/' || f.find('\\') != std::string::npos;
  std::size_t a = 0;
  while (!bad && a <= f.size()) {  // no ".." component
    std::size_t b = f.find('/', a);
    if (b == std::string::npos) b = f.size();
    bad = f.compare(a, b - a, "..") == 0 && b - a == 2;
    a = b + 1;
  }
  if (bad)
    throw BundleError(where + ": " + what + " file '" + f +
                      "' must be a relative file name inside the bundle (no absolute path, no '..')");
  return f;
}

GraphSpec graph_of(const json& g, const std::string& where, const std::string& role) {
  GraphSpec spec;
  spec.file = file_of(g, where, "graph '" + role + "'");
  for (const char* key : {"inputs", "outputs"}) {
    const json& list = member(g, key, where);
    if (!list.is_array()) throw BundleError(where + ": graph " + role + ": '" + key + "' must be a list");
    for (const json& t : list) (key[0] == 'i' ? spec.inputs : spec.outputs).push_back(tensor_of(t, where, role));
  }
  auto st = g.find("states");
  if (st != g.end() && !st->is_null()) {
    if (!st->is_array()) throw BundleError(where + ": graph " + role + ": 'states' must be a list");
    for (const json& s : *st) {
      StateSpec ss;
      ss.name = string_of(s, "name", where);
      ss.output = string_of(s, "output", where);
      const std::string what = "graph " + role + ": tensor " + ss.name;
      ss.shape = shape_of(s, where, what);
      ss.dtype = dtype_of(s, where, what);
      spec.states.push_back(ss);
    }
  }
  return spec;
}

std::vector<std::string> char_symbols(const json& v, const std::string& what) {
  if (!v.is_object() || v.value("type", "") != "char" || !v.contains("symbols") || !v["symbols"].is_array())
    throw BundleError(what + ": expected {\"type\": \"char\", \"symbols\": [...]}");
  std::vector<std::string> out;
  for (const json& s : v["symbols"]) {
    if (!s.is_string()) throw BundleError(what + ": symbols must be strings");
    out.push_back(s.get<std::string>());
  }
  if (out.empty()) throw BundleError(what + ": no symbols");
  return out;
}

Manifest manifest_of(const json& d, const std::string& where) {
  if (!d.is_object()) throw BundleError(where + ": not a JSON object");
  auto fmt = d.find("format");
  if (fmt == d.end() || !fmt->is_string() || fmt->get<std::string>() != kBundleFormat)
    throw BundleError(where + ": not a qrnn-deploy bundle manifest (format " +
                      (fmt == d.end() ? std::string("missing") : fmt->dump()) + ")");
  auto ver = d.find("format_version");
  if (ver == d.end() || !ver->is_number_integer() || ver->get<int64_t>() != kBundleVersion)
    throw BundleError(where + ": bundle format version " + (ver == d.end() ? std::string("missing") : ver->dump()) +
                      " is not supported (this runtime reads version " + std::to_string(kBundleVersion) +
                      "); re-export the bundle");
  Manifest m;
  m.model_type = string_of(d, "model_type", where);
  m.fo_pool = string_of(d, "fo_pool", where);
  const json& graphs = member(d, "graphs", where);
  if (!graphs.is_object()) throw BundleError(where + ": malformed manifest ('graphs' must be an object)");
  for (auto it = graphs.begin(); it != graphs.end(); ++it) m.graphs[it.key()] = graph_of(it.value(), where, it.key());
  auto eng = d.find("engines");
  if (eng != d.end() && !eng->is_null()) {
    if (!eng->is_object()) throw BundleError(where + ": malformed manifest ('engines' must be an object)");
    for (auto it = eng->begin(); it != eng->end(); ++it) {
      EngineSpec e;
      e.file = file_of(it.value(), where, "engine '" + it.key() + "'");
      if (it.value().contains("precision") && it.value()["precision"].is_string()) e.precision = it.value()["precision"];
      if (it.value().contains("plugin") && it.value()["plugin"].is_string()) e.plugin = it.value()["plugin"];
      if (it.value().contains("tensorrt_version") && it.value()["tensorrt_version"].is_string())
        e.tensorrt_version = it.value()["tensorrt_version"].get<std::string>();
      m.engines[it.key()] = e;
    }
  }
  auto voc = d.find("vocab");
  if (voc != d.end() && !voc->is_null()) {
    if (voc->is_object() && voc->contains("src")) {
      if (!voc->contains("tgt")) throw BundleError(where + ": a vocabulary pair needs both \"src\" and \"tgt\"");
      m.src_vocab_symbols = char_symbols((*voc)["src"], where + ": source vocabulary");
      m.tgt_vocab_symbols = char_symbols((*voc)["tgt"], where + ": target vocabulary");
    } else {
      m.src_vocab_symbols = m.tgt_vocab_symbols = char_symbols(*voc, where + ": vocabulary");
    }
  }
  auto sp = d.find("special_tokens");
  if (sp != d.end() && !sp->is_null() && !sp->is_object())
    throw BundleError(where + ": special_tokens must be an object (name -> token id)");
  if (sp != d.end() && sp->is_object()) {
    auto read = [&](const char* k, int64_t& out) {
      auto v = sp->find(k);
      if (v != sp->end()) {
        if (!v->is_number_integer() || v->get<int64_t>() < 0)
          throw BundleError(where + ": special_tokens." + k + " must be a token id (an integer >= 0)");
        out = v->get<int64_t>();
      }
    };
    read("pad", m.special.pad);
    read("unk", m.special.unk);
    read("bos", m.special.bos);
    read("eos", m.special.eos);
  }
  auto cfg = d.find("config");
  if (cfg != d.end()) m.config_json = cfg->dump();
  auto op = d.find("custom_op");
  if (op != d.end() && op->is_object()) {
    m.custom_op_domain = op->value("domain", "");
    m.custom_op_type = op->value("op_type", "");
  }
  // The checks of bundle.py's Manifest.validate, in the same order.
  auto roles = model_roles().find(m.model_type);
  if (roles == model_roles().end()) throw BundleError(where + ": unknown model_type '" + m.model_type + "'");
  if (m.fo_pool != "custom" && m.fo_pool != "portable")
    throw BundleError(where + ": fo_pool must be one of ('custom', 'portable'), got '" + m.fo_pool + "'");
  for (const std::string& r : roles->second)
    if (!m.graphs.count(r)) throw BundleError(where + ": a " + m.model_type + " bundle needs graph '" + r + "'");
  if (m.fo_pool == "custom" && (op == d.end() || op->is_null() || (op->is_object() && op->empty())))
    throw BundleError(where + ": fo_pool 'custom' needs the custom_op entry");
  return m;
}

}  // namespace

const TensorSpec* GraphSpec::find_input(const std::string& name) const {
  for (const auto& t : inputs)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorSpec* GraphSpec::find_output(const std::string& name) const {
  for (const auto& t : outputs)
    if (t.name == name) return &t;
  return nullptr;
}

const GraphSpec& Manifest::graph(const std::string& role) const {
  auto it = graphs.find(role);
  if (it == graphs.end()) throw BundleError("the bundle has no graph '" + role + "' (model_type " + model_type + ")");
  return it->second;
}

Manifest parse_manifest(const std::string& text, const std::string& where) {
  // Nesting is bounded while parsing: printing a value (error messages, config_json) recurses,
  // and a manifest nested thousands deep would overflow the stack there.
  constexpr int kMaxDepth = 64;
  bool too_deep = false;
  json d;
  try {
    d = json::parse(text, [&](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth) too_deep = true;
      return !too_deep;  // once too deep, keep nothing more
    });
  } catch (const json::exception& e) {
    throw BundleError(where + ": not valid JSON (" + e.what() + ")");
  }
  if (too_deep) throw BundleError(where + ": not a manifest (JSON nested too deeply)");
  try {
    return manifest_of(d, where);
  } catch (const json::exception& e) {  // a value of an unexpected type somewhere
    throw BundleError(where + ": malformed manifest (" + e.what() + ")");
  }
}

Manifest load_manifest(const std::string& bundle_dir, bool check_files) {
  if (!is_dir(bundle_dir))
    throw BundleError("bundle not found: " + bundle_dir + " is not a directory (export one with `qrnn-deploy export`)");
  const std::string path = bundle_dir + "/" + kManifestName;
  if (!is_file(path)) throw BundleError(bundle_dir + " is not a bundle: " + kManifestName + " is missing");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw BundleError(path + ": cannot be read");
  std::stringstream buf;
  buf << in.rdbuf();
  Manifest m = parse_manifest(buf.str(), path);
  if (check_files)
    for (const auto& [role, g] : m.graphs)
      if (!is_file(bundle_dir + "/" + g.file))
        throw BundleError(bundle_dir + ": graph '" + role + "' file " + g.file + " is missing");
  return m;
}

Tensor zero_state(const StateSpec& spec, int64_t batch, const std::string& role) {
  std::vector<int64_t> shape;
  for (const Dim& d : spec.shape) {
    if (!d.is_symbol()) {
      shape.push_back(d.size);
    } else if (d.symbol == "B") {
      shape.push_back(batch);
    } else {
      throw BundleError("graph " + role + ": state " + spec.name + " has symbolic dimension '" + d.symbol +
                        "' other than B; a state's shape must be fixed apart from the batch");
    }
  }
  return Tensor(dtype_from_name(spec.dtype), shape);
}

}  // namespace qrnn
