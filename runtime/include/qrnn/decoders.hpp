// Step-by-step decoders of one encoded source (mirroring qrnn_deploy.runtime.decoders): each
// step() is one decoder graph call and returns the tokens that became final in it, so an app
// can interleave decoding with other work, and time or cancel it per token. A decoder keeps
// pointers to its Translator and to `src`: both must outlive it.
#pragma once

#include <cstdint>
#include <vector>

#include "qrnn/decoding.hpp"
#include "qrnn/graph.hpp"
#include "qrnn/seq2seq.hpp"

namespace qrnn {

// The argmax symbol each step until </s> (not included) or max_len symbols.
class GreedyDecoder {
 public:
  GreedyDecoder(Translator& t, const Encoded& src, int max_len);
  bool done() const { return done_; }
  std::vector<int64_t> step();  // [] at </s>, else [the new token]
  const std::vector<int64_t>& result() const { return out_; }

 private:
  Translator* t_;
  const Encoded* src_;
  Tensor mask_;
  States states_;
  int max_len_, steps_ = 0;
  int64_t last_;
  bool done_;
  std::vector<int64_t> out_;
};

// Beam search (decoding.beam_step): K <= beam live hypotheses in one batch, decoder states
// reordered by parent each step. Final tokens: the common prefix of every live and finished
// hypothesis (the answer is a finished one or extends a live one) as it grows, then the rest of
// the best hypothesis when the search ends.
class BeamDecoder {
 public:
  BeamDecoder(Translator& t, const Encoded& src, int beam, int max_len, double length_penalty);
  bool done() const { return done_; }
  std::vector<int64_t> step();
  const std::vector<int64_t>& result() const { return result_; }  // the best tokens once done()

 private:
  Translator* t_;
  const Encoded* src_;
  int beam_, max_len_, steps_ = 0;
  double length_penalty_;
  bool done_;
  std::vector<Hypothesis> live_{{0.0, {}}}, finished_;
  States states_;
  Tensor memory_, mask_;
  std::vector<Tensor> cond_;
  int64_t rows_ = 0;  // the batch memory_, mask_ and cond_ are expanded to
  std::size_t emitted_ = 0;
  std::vector<int64_t> result_;
};

}  // namespace qrnn
