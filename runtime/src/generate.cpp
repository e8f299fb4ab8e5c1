#include "qrnn/generate.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "qrnn/decoding.hpp"
#include "qrnn/errors.hpp"

namespace qrnn {

namespace {

std::vector<double> softmax(const std::vector<double>& z) {
  double mx = -std::numeric_limits<double>::infinity();
  for (double v : z) mx = std::max(mx, v);
  std::vector<double> p(z.size());
  double sum = 0;
  for (std::size_t i = 0; i < z.size(); ++i) sum += (p[i] = std::exp(z[i] - mx));
  for (double& v : p) v /= sum;
  return p;
}

}  // namespace

int64_t pick_token(const float* logits, int64_t V, double temperature, int top_k, std::mt19937_64& rng) {
  if (!(temperature >= 0 && std::isfinite(temperature)))  // NaN fails this too
    throw ConfigError("temperature must be a finite number >= 0, got " + std::to_string(temperature));
  if (top_k < 0) throw ConfigError("top_k must be >= 1 (or 0 for all), got " + std::to_string(top_k));
  if (temperature == 0) return argmax(logits, V);
  // Shifted by the largest logit first (as the Python runtime does): a tiny temperature must not
  // overflow it to inf, which would make every weight NaN.
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < V; ++i) top = std::max(top, static_cast<double>(logits[i]));
  if (std::isnan(top) || std::isinf(top)) return argmax(logits, V);  // no finite largest logit to sample around
  std::vector<double> z(static_cast<std::size_t>(V));
  for (int64_t i = 0; i < V; ++i) z[i] = (static_cast<double>(logits[i]) - top) / temperature;
  if (top_k > 0 && top_k < V) {
    std::vector<double> sorted = z;
    std::nth_element(sorted.begin(), sorted.begin() + (top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[top_k - 1];
    for (double& v : z)
      if (!(v >= kth)) v = -std::numeric_limits<double>::infinity();
  }
  const std::vector<double> p = softmax(z);
  std::discrete_distribution<int64_t> pick(p.begin(), p.end());
  return pick(rng);
}

SingleGraphModel::SingleGraphModel(const std::string& bundle_dir, const std::string& model_type, const Options& options)
    : dir_(bundle_dir), manifest_(load_manifest(bundle_dir)) {
  if (manifest_.model_type != model_type)
    throw BundleError(bundle_dir + " is a " + manifest_.model_type + " bundle; expected a " + model_type + " bundle");
  const std::string role = model_type == "language_model" ? "lm" : "classifier";
  const GraphSpec& g = manifest_.graph(role);
  if (g.inputs.size() != 1 || g.inputs[0].dtype != "int64")
    throw BundleError(bundle_dir + ": graph " + role + " must take one int64 token input [B, T]");
  if (!g.find_output("logits")) throw BundleError(bundle_dir + ": graph " + role + " must output logits");
  token_input_ = g.inputs[0].name;
  if (!manifest_.src_vocab_symbols.empty()) vocab_ = std::make_unique<CharVocab>(CharVocab::source_of(manifest_));
  graph_ = std::make_unique<StreamingGraph>(bundle_dir, manifest_, role, options);
}

const CharVocab& SingleGraphModel::vocab() const {
  if (!vocab_) throw BundleError(dir_ + ": the bundle has no vocabulary; feed token ids instead of text");
  return *vocab_;
}

LanguageModelStream::LanguageModelStream(SingleGraphModel& model) : model_(&model), stream_(model.graph()) {
  if (model.manifest().model_type != "language_model") throw BundleError("LanguageModelStream needs a language_model bundle");
}

void LanguageModelStream::reset() {
  stream_.reset();
  pending_.clear();
  last_.reset();
}

std::optional<std::vector<float>> LanguageModelStream::feed(const std::vector<int64_t>& chunk) {
  std::vector<int64_t> ids = pending_;
  ids.insert(ids.end(), chunk.begin(), chunk.end());
  pending_.clear();
  if (ids.empty()) return std::nullopt;
  const Tensor x = Tensor::from_ids(ids, {1, static_cast<int64_t>(ids.size())});
  Named out = stream_.graph().run(Refs{{model_->token_input(), &x}}, stream_.states());
  const Tensor& logits = out.at("logits");  // [1, Tc, V]
  std::vector<float> scratch;
  const int64_t V = logits.dim(logits.rank() - 1);
  const float* last = logits.dtype() == DType::Float32
                          ? logits.data<float>() + (logits.numel() - V)
                          : (scratch = logits.to_floats(), scratch.data() + (scratch.size() - V));
  last_ = std::vector<float>(last, last + V);
  return last_;
}

std::vector<int64_t> LanguageModelStream::generate(const std::vector<int64_t>& prompt, int max_new_tokens,
                                                   double temperature, int top_k, uint64_t seed, bool stop_at_eos,
                                                   const std::function<void(int64_t)>& on_token) {
  std::mt19937_64 rng(seed);
  std::optional<std::vector<float>> logits = feed(prompt);
  if (!logits) logits = last_ ? last_ : feed({model_->manifest().special.bos});
  std::vector<int64_t> out;
  for (int i = 0; i < max_new_tokens; ++i) {
    if (i > 0) logits = feed({});
    const int64_t tok = pick_token(logits->data(), static_cast<int64_t>(logits->size()), temperature, top_k, rng);
    if (stop_at_eos && tok == model_->manifest().special.eos) break;
    pending_.push_back(tok);
    out.push_back(tok);
    if (on_token) on_token(tok);
  }
  return out;
}

ClassifierStream::ClassifierStream(SingleGraphModel& model) : model_(&model), stream_(model.graph()) {
  if (model.manifest().model_type != "classifier") throw BundleError("ClassifierStream needs a classifier bundle");
}

void ClassifierStream::reset() {
  stream_.reset();
  logits_.clear();
}

std::optional<std::vector<double>> ClassifierStream::feed(const std::vector<int64_t>& ids) {
  if (!ids.empty()) {
    const Tensor x = Tensor::from_ids(ids, {1, static_cast<int64_t>(ids.size())});
    Named out = stream_.graph().run(Refs{{model_->token_input(), &x}}, stream_.states());
    logits_ = out.at("logits").to_floats();  // [1, C]
  }
  if (logits_.empty()) return std::nullopt;
  return softmax(std::vector<double>(logits_.begin(), logits_.end()));
}

int64_t ClassifierStream::prediction() const {
  return logits_.empty() ? -1 : argmax(logits_.data(), static_cast<int64_t>(logits_.size()));
}

}  // namespace qrnn
