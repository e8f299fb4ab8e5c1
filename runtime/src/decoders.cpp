#include "qrnn/decoders.hpp"

#include <algorithm>
#include <string>

#include "qrnn/errors.hpp"

namespace qrnn {

GreedyDecoder::GreedyDecoder(Translator& t, const Encoded& src, int max_len)
    : t_(&t), src_(&src), max_len_(max_len), last_(t.manifest().special.bos), done_(max_len <= 0) {
  check_encoded(src, static_cast<std::size_t>(t.num_layers()));
  mask_ = t.memory_mask({src.length()}, src.length());
  states_ = t.decoder().zero_states(1);
}

std::vector<int64_t> GreedyDecoder::step() {
  if (done_) throw StreamError("this decoder is done; start a new one for the next source");
  std::vector<float> scratch;
  const Tensor logits = t_->decode_step(Tensor::from_ids({last_}, {1, 1}), src_->memory, mask_, src_->cond, states_);
  ++steps_;
  const int64_t tok = argmax(last_step_logits(logits, 0, scratch), logits.dim(2));
  if (tok == t_->manifest().special.eos) {
    done_ = true;
    return {};
  }
  last_ = tok;
  out_.push_back(tok);
  done_ = steps_ >= max_len_;
  return {tok};
}

BeamDecoder::BeamDecoder(Translator& t, const Encoded& src, int beam, int max_len, double length_penalty)
    : t_(&t), src_(&src), beam_(beam), max_len_(max_len), length_penalty_(length_penalty), done_(max_len <= 0) {
  if (beam < 1) throw ConfigError("beam must be >= 1, got " + std::to_string(beam));
  // The Python runtime's bound (qrnn_deploy.limits.LENGTH_PENALTY_RANGE): (len + 1) ** length_penalty
  // must neither overflow nor vanish, and NaN would rank nothing.
  if (!(length_penalty >= 0.0 && length_penalty <= 10.0))
    throw ConfigError("length_penalty must be a number in [0, 10], got " + std::to_string(length_penalty));
  check_encoded(src, static_cast<std::size_t>(t.num_layers()));
  states_ = t.decoder().zero_states(1);
}

std::vector<int64_t> BeamDecoder::step() {
  if (done_) throw StreamError("this decoder is done; start a new one for the next source");
  const SpecialTokens& sp = t_->manifest().special;
  const int64_t K = static_cast<int64_t>(live_.size());
  if (K != rows_) {  // every hypothesis attends to the same source: repeat it K times
    memory_ = repeat_row(src_->memory, 0, K);
    mask_ = t_->memory_mask(std::vector<int64_t>(static_cast<std::size_t>(K), src_->length()), src_->length());
    cond_.clear();
    for (const Tensor& c : src_->cond) cond_.push_back(repeat_row(c, 0, K));
    rows_ = K;
  }
  std::vector<int64_t> toks;
  std::vector<double> scores;
  for (const Hypothesis& h : live_) {
    toks.push_back(h.tokens.empty() ? sp.bos : h.tokens.back());
    scores.push_back(h.score);
  }
  const Tensor logits = t_->decode_step(Tensor::from_ids(toks, {K, 1}), memory_, mask_, cond_, states_);
  ++steps_;
  const int64_t V = logits.dim(2);
  std::vector<double> logp(static_cast<std::size_t>(K * V));
  std::vector<float> scratch;
  for (int64_t k = 0; k < K; ++k) {
    const std::vector<double> row = log_softmax(last_step_logits(logits, k, scratch), V);
    std::copy(row.begin(), row.end(), logp.begin() + k * V);
  }
  std::vector<Candidate> live_next, fin;
  beam_step(scores, logp, V, beam_, static_cast<int64_t>(finished_.size()), steps_ == max_len_, sp.eos, live_next, fin);
  for (const Candidate& c : fin) {
    Hypothesis h{c.score, live_[c.parent].tokens};
    if (c.symbol != sp.eos) h.tokens.push_back(c.symbol);
    finished_.push_back(std::move(h));
  }
  std::vector<int64_t> fresh;
  if (live_next.empty()) {
    done_ = true;
    result_ = best_hypothesis(finished_, length_penalty_);
    fresh.assign(result_.begin() + static_cast<std::ptrdiff_t>(std::min(emitted_, result_.size())), result_.end());
    emitted_ = result_.size();
    return fresh;
  }
  std::vector<Hypothesis> next;
  std::vector<int64_t> parents;
  for (const Candidate& c : live_next) {
    Hypothesis h{c.score, live_[c.parent].tokens};
    h.tokens.push_back(c.symbol);
    next.push_back(std::move(h));
    parents.push_back(c.parent);
  }
  live_ = std::move(next);
  states_ = select_states(states_, parents);
  // The common prefix of every live and finished hypothesis is final.
  const std::vector<int64_t>& first = live_[0].tokens;
  std::size_t common = first.size();
  auto agree = [&](const std::vector<int64_t>& t) {
    std::size_t i = 0;
    while (i < common && i < t.size() && t[i] == first[i]) ++i;
    common = i;
  };
  for (const Hypothesis& h : live_) agree(h.tokens);
  for (const Hypothesis& h : finished_) agree(h.tokens);
  for (; emitted_ < common; ++emitted_) fresh.push_back(first[emitted_]);
  return fresh;
}

}  // namespace qrnn
