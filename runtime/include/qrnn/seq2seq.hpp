// Translation with a seq2seq bundle (graphs "encoder" and "decoder", qrnn_deploy/bundle.py):
// incremental encoding of a source that arrives in chunks, then greedy or beam decoding that
// hands out each token as soon as it is final. Mirrors qrnn_deploy.runtime and gives the same
// tokens as QRNNSeq2Seq.greedy_decode / beam_search.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qrnn/backend.hpp"
#include "qrnn/graph.hpp"
#include "qrnn/manifest.hpp"
#include "qrnn/vocab.hpp"

namespace qrnn {

// An encoded source: memory [1, S, H] (the encoder's top-layer states) and cond_l [1, P*H]
// (the projected last hidden state of encoder layer l), what the decoder attends to.
struct Encoded {
  Tensor memory;
  std::vector<Tensor> cond;
  int64_t length() const { return memory.empty() ? 0 : memory.dim(1); }
};

// Called with each token id as soon as it is final (it is then part of the result).
using TokenCallback = std::function<void(int64_t)>;

class Translator;

// A source that arrives in chunks: each chunk advances the encoder at once (nothing seen
// is encoded again), so when the source ends only decoding is left. Uses its Translator, which
// must outlive it.
class SourceStream {
 public:
  explicit SourceStream(Translator& t);
  void feed(const std::vector<int64_t>& ids);  // a chunk of >= 1 ids
  void feed_text(const std::string& text);     // its characters, through the bundle's vocabulary
  int64_t length() const { return length_; }
  Encoded encoded() const;  // the memory so far and the cond of the last chunk; needs length() >= 1
  const States& states() const { return states_; }

 private:
  Translator* t_;
  States states_;
  std::vector<Tensor> memory_chunks_;
  std::vector<Tensor> cond_;
  int64_t length_ = 0;
};

class Translator {
 public:
  // Opens the bundle at `bundle_dir` (a seq2seq bundle); throws BundleError / BuildError /
  // BackendError with what to do.
  explicit Translator(const std::string& bundle_dir, const Options& options = {});
  // Streams and decoders point at their Translator: it stays where it was made.
  Translator(const Translator&) = delete;
  Translator& operator=(const Translator&) = delete;

  const Manifest& manifest() const { return manifest_; }
  // Source (text -> ids) and target (ids -> text) vocabularies; BundleError when absent.
  const CharVocab& src_vocab() const;
  const CharVocab& tgt_vocab() const;
  StreamingGraph& encoder() { return *encoder_; }
  StreamingGraph& decoder() { return *decoder_; }
  int num_layers() const { return static_cast<int>(cond_names_.size()); }

  SourceStream source() { return SourceStream(*this); }
  Encoded encode(const std::vector<int64_t>& ids);  // the whole source in one chunk

  // Greedy decoding: the argmax symbol each step until </s> (not included) or max_len steps.
  std::vector<int64_t> greedy(const Encoded& src, int max_len, const TokenCallback& on_token = {});
  // Beam search (decoding.beam_step rule, score / (len + 1) ** length_penalty). Tokens are handed
  // out as they settle: the common prefix of every live and finished hypothesis, then the rest
  // of the best one at the end.
  std::vector<int64_t> beam_search(const Encoded& src, int beam, int max_len, double length_penalty = 1.0,
                                   const TokenCallback& on_token = {});
  // Greedy decoding of several sources in one batch: memories are padded to the longest source
  // (memory_mask 0 on padding), states stacked along axis 0, finished rows dropped each step.
  std::vector<std::vector<int64_t>> greedy_batch(const std::vector<Encoded>& srcs, int max_len);

  // One decoder run for a batch: tgt [B, Tc] ids; memory [B, S, H]; mask [B, S]; cond_l [B, P*H].
  // Returns logits [B, Tc, V] and advances `states`.
  Tensor decode_step(const Tensor& tgt, const Tensor& memory, const Tensor& mask, const std::vector<Tensor>& cond,
                     States& states);
  // memory_mask of the decoder's dtype: [rows, S_max] with 1 for the first lengths[i] positions.
  Tensor memory_mask(const std::vector<int64_t>& lengths, int64_t s_max) const;

 private:
  friend class SourceStream;
  std::string bundle_dir_;
  Manifest manifest_;
  std::unique_ptr<CharVocab> src_vocab_, tgt_vocab_;
  std::unique_ptr<StreamingGraph> encoder_, decoder_;
  std::vector<std::string> cond_names_;  // cond_0 .. cond_{L-1}
  DType mask_dtype_ = DType::Float32;
};

// Helpers shared by the decoders: ConfigError for an empty source, StreamError unless `src` is
// one encoded source of `layers` layers; the float32 logits of row `row`'s last step of logits [B, Tc, V].
void check_encoded(const Encoded& src, std::size_t layers);
const float* last_step_logits(const Tensor& logits, int64_t row, std::vector<float>& scratch);

}  // namespace qrnn
