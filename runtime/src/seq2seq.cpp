#include "qrnn/seq2seq.hpp"

#include <algorithm>
#include <cstring>

#include "qrnn/decoders.hpp"
#include "qrnn/decoding.hpp"
#include "qrnn/errors.hpp"

namespace qrnn {

namespace {

// cond_0 .. cond_{L-1} among `names`, in layer order; BundleError when they are not contiguous.
std::vector<std::string> cond_names_of(const std::vector<std::string>& names, const std::string& where) {
  std::vector<int> layers;
  for (const auto& n : names) {
    if (n.rfind("cond_", 0) != 0) continue;
    const std::string num = n.substr(5);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    if (num.size() > 6) throw BundleError(where + ": " + n + " is not a layer's cond tensor (too many layers)");
    layers.push_back(std::stoi(num));
  }
  std::sort(layers.begin(), layers.end());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] != static_cast<int>(i))
      throw BundleError(where + ": cond tensors must be cond_0 .. cond_{L-1}, cond_" + std::to_string(i) + " is missing");
    out.push_back("cond_" + std::to_string(i));
  }
  if (out.empty()) throw BundleError(where + " has no cond_{l} tensors; re-export the bundle");
  return out;
}

void require(bool ok, const std::string& msg) {
  if (!ok) throw BundleError(msg);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

SourceStream::SourceStream(Translator& t) : t_(&t), states_(t.encoder().zero_states(1)) {}

void SourceStream::feed(const std::vector<int64_t>& ids) {
  if (ids.empty()) throw ConfigError("a source chunk needs at least one token");
  const Tensor src = Tensor::from_ids(ids, {1, static_cast<int64_t>(ids.size())});
  Named outs = t_->encoder().run(Refs{{"src", &src}}, states_);
  memory_chunks_.push_back(std::move(outs.at("memory")));
  cond_.clear();
  for (const auto& n : t_->cond_names_) cond_.push_back(std::move(outs.at(n)));
  length_ += static_cast<int64_t>(ids.size());
}

void SourceStream::feed_text(const std::string& text) { feed(t_->src_vocab().encode(text)); }

Encoded SourceStream::encoded() const {
  if (length_ == 0) throw StreamError("no source was fed: feed at least one token before decoding");
  std::vector<const Tensor*> parts;
  for (const Tensor& m : memory_chunks_) parts.push_back(&m);
  return Encoded{parts.size() == 1 ? memory_chunks_[0] : concat_time(parts), cond_};
}

// ---------------------------------------------------------------------------------------------

Translator::Translator(const std::string& bundle_dir, const Options& options)
    : bundle_dir_(bundle_dir), manifest_(load_manifest(bundle_dir)) {
  if (manifest_.model_type != "seq2seq")
    throw BundleError(bundle_dir + " is a " + manifest_.model_type + " bundle; translation needs a seq2seq bundle");
  const GraphSpec& enc = manifest_.graph("encoder");
  const GraphSpec& dec = manifest_.graph("decoder");
  const std::string we = bundle_dir + ": graph encoder", wd = bundle_dir + ": graph decoder";
  require(enc.find_input("src") && enc.inputs.size() == 1, we + " must take exactly one input, src [B, T] int64");
  require(enc.find_input("src")->dtype == "int64", we + ": src must be int64");
  require(enc.find_output("memory") != nullptr, we + " must output memory [B, T, H]");
  for (const char* n : {"tgt", "memory", "memory_mask"})
    require(dec.find_input(n) != nullptr, wd + " must take input " + n);
  require(dec.find_input("tgt")->dtype == "int64", wd + ": tgt must be int64");
  require(dec.find_output("logits") != nullptr, wd + " must output logits [B, T, V]");
  std::vector<std::string> enc_out, dec_in;
  for (const auto& t : enc.outputs) enc_out.push_back(t.name);
  for (const auto& t : dec.inputs) dec_in.push_back(t.name);
  cond_names_ = cond_names_of(enc_out, we);
  if (cond_names_of(dec_in, wd) != cond_names_)
    throw BundleError(bundle_dir + ": the encoder and decoder disagree on the number of layers (cond_{l})");
  mask_dtype_ = dtype_from_name(dec.find_input("memory_mask")->dtype);
  if (!manifest_.src_vocab_symbols.empty()) {
    src_vocab_ = std::make_unique<CharVocab>(CharVocab::source_of(manifest_));
    tgt_vocab_ = std::make_unique<CharVocab>(CharVocab::target_of(manifest_));
  }
  encoder_ = std::make_unique<StreamingGraph>(bundle_dir, manifest_, "encoder", options);
  decoder_ = std::make_unique<StreamingGraph>(bundle_dir, manifest_, "decoder", options);
}

const CharVocab& Translator::src_vocab() const {
  if (!src_vocab_) throw BundleError(bundle_dir_ + ": the bundle has no vocabulary; feed token ids instead of text");
  return *src_vocab_;
}

const CharVocab& Translator::tgt_vocab() const {
  if (!tgt_vocab_) throw BundleError(bundle_dir_ + ": the bundle has no vocabulary; token ids cannot be shown as text");
  return *tgt_vocab_;
}

Encoded Translator::encode(const std::vector<int64_t>& ids) {
  SourceStream s(*this);
  s.feed(ids);
  return s.encoded();
}

Tensor Translator::memory_mask(const std::vector<int64_t>& lengths, int64_t s_max) const {
  Tensor m(mask_dtype_, {static_cast<int64_t>(lengths.size()), s_max});
  auto* p = static_cast<unsigned char*>(m.raw());
  const std::size_t es = dtype_size(mask_dtype_);
  unsigned char one[8] = {0};
  switch (mask_dtype_) {
    case DType::Float32: { const float f = 1.0f; std::memcpy(one, &f, 4); break; }
    case DType::Float16: { const uint16_t h = 0x3c00; std::memcpy(one, &h, 2); break; }
    case DType::BFloat16: { const uint16_t h = 0x3f80; std::memcpy(one, &h, 2); break; }
    case DType::Int64: { const int64_t i = 1; std::memcpy(one, &i, 8); break; }
    case DType::Int32: { const int32_t i = 1; std::memcpy(one, &i, 4); break; }
    case DType::Bool: one[0] = 1; break;
  }
  for (std::size_t b = 0; b < lengths.size(); ++b)
    for (int64_t s = 0; s < lengths[b]; ++s) std::memcpy(p + (b * s_max + s) * es, one, es);
  return m;
}

Tensor Translator::decode_step(const Tensor& tgt, const Tensor& memory, const Tensor& mask,
                               const std::vector<Tensor>& cond, States& states) {
  Refs in{{"tgt", &tgt}, {"memory", &memory}, {"memory_mask", &mask}};
  for (std::size_t l = 0; l < cond_names_.size(); ++l) in.emplace(cond_names_[l], &cond.at(l));
  Named out = decoder_->run(in, states);
  Tensor logits = std::move(out.at("logits"));
  if (logits.rank() != 3 || logits.dim(0) != tgt.dim(0) || logits.dim(1) != tgt.dim(1))
    throw BackendError("graph decoder returned logits " + logits.describe() + " for tgt " + tgt.describe());
  return logits;
}

void check_encoded(const Encoded& src, std::size_t layers) {
  if (src.length() < 1) throw ConfigError("the source is empty: nothing to translate");
  if (src.memory.dim(0) != 1 || src.cond.size() != layers)
    throw StreamError("an Encoded source must hold one stream (memory [1, S, H]) and one cond per layer");
}

const float* last_step_logits(const Tensor& logits, int64_t row, std::vector<float>& scratch) {
  // logits [B, Tc, V]: the row's last step.
  const int64_t Tc = logits.dim(1), V = logits.dim(2);
  const int64_t offset = (row * Tc + Tc - 1) * V;
  if (logits.dtype() == DType::Float32) return logits.data<float>() + offset;
  scratch = take_rows(logits, {row}).to_floats();
  return scratch.data() + (Tc - 1) * V;
}

std::vector<int64_t> Translator::greedy(const Encoded& src, int max_len, const TokenCallback& on_token) {
  GreedyDecoder d(*this, src, max_len);
  while (!d.done())
    for (int64_t tok : d.step())
      if (on_token) on_token(tok);
  return d.result();
}

std::vector<int64_t> Translator::beam_search(const Encoded& src, int beam, int max_len, double length_penalty,
                                             const TokenCallback& on_token) {
  BeamDecoder d(*this, src, beam, max_len, length_penalty);
  while (!d.done())
    for (int64_t tok : d.step())
      if (on_token) on_token(tok);
  return d.result();
}

std::vector<std::vector<int64_t>> Translator::greedy_batch(const std::vector<Encoded>& srcs, int max_len) {
  std::vector<std::vector<int64_t>> out(srcs.size());
  if (srcs.empty()) return out;
  int64_t s_max = 0;
  std::vector<int64_t> lengths;
  for (const Encoded& e : srcs) {
    check_encoded(e, cond_names_.size());
    s_max = std::max(s_max, e.length());
    lengths.push_back(e.length());
  }
  std::vector<Tensor> padded;
  for (const Encoded& e : srcs) padded.push_back(pad_time(e.memory, s_max));
  std::vector<const Tensor*> ptrs;
  for (const Tensor& p : padded) ptrs.push_back(&p);
  Tensor memory = concat_rows(ptrs);
  Tensor mask = memory_mask(lengths, s_max);
  std::vector<Tensor> cond;
  for (std::size_t l = 0; l < cond_names_.size(); ++l) {
    std::vector<const Tensor*> col;
    for (const Encoded& e : srcs) col.push_back(&e.cond[l]);
    cond.push_back(concat_rows(col));
  }
  States states = decoder_->zero_states(static_cast<int64_t>(srcs.size()));
  std::vector<int64_t> active(srcs.size());  // row -> source index
  for (std::size_t i = 0; i < srcs.size(); ++i) active[i] = static_cast<int64_t>(i);
  std::vector<int64_t> toks(srcs.size(), manifest_.special.bos);
  std::vector<float> scratch;
  for (int step = 0; step < max_len && !active.empty(); ++step) {
    const int64_t A = static_cast<int64_t>(active.size());
    const Tensor logits = decode_step(Tensor::from_ids(toks, {A, 1}), memory, mask, cond, states);
    std::vector<int64_t> keep, next;
    for (int64_t r = 0; r < A; ++r) {
      const int64_t tok = argmax(last_step_logits(logits, r, scratch), logits.dim(2));
      if (tok == manifest_.special.eos) continue;
      out[active[r]].push_back(tok);
      keep.push_back(r);
      next.push_back(tok);
    }
    if (static_cast<int64_t>(keep.size()) != A) {  // drop finished streams from the batch
      states = select_states(states, keep);
      memory = take_rows(memory, keep);
      mask = take_rows(mask, keep);
      for (Tensor& c : cond) c = take_rows(c, keep);
      std::vector<int64_t> still;
      for (int64_t r : keep) still.push_back(active[r]);
      active = std::move(still);
    }
    toks = std::move(next);
  }
  return out;
}

}  // namespace qrnn
