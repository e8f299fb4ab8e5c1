// Language-model generation and running classification on streams (qrnn_deploy.runtime.generate).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "qrnn/backend.hpp"
#include "qrnn/graph.hpp"
#include "qrnn/manifest.hpp"
#include "qrnn/vocab.hpp"

namespace qrnn {

// Next id from logits [V]: argmax when temperature == 0 (ties to the lowest id), else a sample of
// softmax(logits / temperature) restricted to the top_k largest (ties at the k-th kept; 0 = all).
// Sampling uses `rng`, so it is reproducible per seed but not the same draws as numpy's.
int64_t pick_token(const float* logits, int64_t V, double temperature, int top_k, std::mt19937_64& rng);

// A bundle with one token-in graph ("lm" or "classifier"): opens it and keeps its vocabulary.
class SingleGraphModel {
 public:
  SingleGraphModel(const std::string& bundle_dir, const std::string& model_type, const Options& options);
  SingleGraphModel(const SingleGraphModel&) = delete;
  SingleGraphModel& operator=(const SingleGraphModel&) = delete;
  const Manifest& manifest() const { return manifest_; }
  StreamingGraph& graph() { return *graph_; }
  const CharVocab& vocab() const;  // BundleError when the bundle has no vocabulary
  const std::string& token_input() const { return token_input_; }

 private:
  std::string dir_;
  Manifest manifest_;
  std::unique_ptr<StreamingGraph> graph_;
  std::unique_ptr<CharVocab> vocab_;
  std::string token_input_;
};

// A language-model bundle as a stream: feed ids or text -> logits of the chunk's last step;
// generate continues the stream token by token. A generated token is fed back lazily (when the
// next one is asked for, or at the next feed), so stopping early leaves the stream consistent.
class LanguageModelStream {
 public:
  explicit LanguageModelStream(SingleGraphModel& model);
  // Advances by `ids` (after any generated token not yet fed); returns logits [V] of the last
  // step, or nothing when there was nothing to feed.
  std::optional<std::vector<float>> feed(const std::vector<int64_t>& ids);
  std::optional<std::vector<float>> feed_text(const std::string& text) { return feed(model_->vocab().encode(text)); }
  // Up to max_new_tokens ids after `prompt` (a fresh stream with an empty prompt starts from <s>);
  // on_token gets each as it is chosen; stops at </s> (not included) when stop_at_eos.
  std::vector<int64_t> generate(const std::vector<int64_t>& prompt, int max_new_tokens, double temperature = 0.0,
                                int top_k = 0, uint64_t seed = 0, bool stop_at_eos = true,
                                const std::function<void(int64_t)>& on_token = {});
  void reset();

 private:
  SingleGraphModel* model_;
  Stream stream_;
  std::vector<int64_t> pending_;
  std::optional<std::vector<float>> last_;
};

// A classifier bundle as a stream: after each chunk, class probabilities of the prefix so far.
class ClassifierStream {
 public:
  explicit ClassifierStream(SingleGraphModel& model);
  // Advances by `ids` -> probabilities [C] (nothing before the first symbol).
  std::optional<std::vector<double>> feed(const std::vector<int64_t>& ids);
  std::optional<std::vector<double>> feed_text(const std::string& text) { return feed(model_->vocab().encode(text)); }
  // argmax of the latest logits; -1 before the first symbol.
  int64_t prediction() const;
  void reset();

 private:
  SingleGraphModel* model_;
  Stream stream_;
  std::vector<float> logits_;
};

}  // namespace qrnn
