#include "qrnn/vocab.hpp"

#include "qrnn/errors.hpp"

namespace qrnn {

std::vector<std::string> utf8_chars(const std::string& text) {
  std::vector<std::string> out;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    bool ok = len > 0 && i + len <= n;
    for (std::size_t j = 1; ok && j < len; ++j) ok = (s[i + j] & 0xc0) == 0x80;
    if (!ok) len = 1;  // malformed: keep the byte alone
    out.emplace_back(text, i, len);
    i += len;
  }
  return out;
}

CharVocab::CharVocab(std::vector<std::string> symbols, SpecialTokens special)
    : symbols_(std::move(symbols)), special_(special) {
  static const char* specials[] = {"<pad>", "<unk>", "<s>", "</s>"};
  if (symbols_.size() < 4) throw BundleError("vocabulary: needs at least the 4 special symbols");
  for (int i = 0; i < 4; ++i)
    if (symbols_[i] != specials[i])
      throw BundleError("vocabulary: the first four symbols must be <pad> <unk> <s> </s>, got '" + symbols_[i] + "'");
  for (std::size_t i = 4; i < symbols_.size(); ++i)
    if (utf8_chars(symbols_[i]).size() != 1)
      throw BundleError("vocabulary: every symbol after the specials must be one character, got '" + symbols_[i] + "'");
  for (std::size_t i = 0; i < symbols_.size(); ++i)
    if (!index_.emplace(symbols_[i], static_cast<int64_t>(i)).second)
      throw BundleError("vocabulary: symbols are not unique ('" + symbols_[i] + "' repeats)");
}

CharVocab CharVocab::source_of(const Manifest& m) {
  if (m.src_vocab_symbols.empty()) throw BundleError("the bundle has no vocabulary; feed token ids instead of text");
  return CharVocab(m.src_vocab_symbols, m.special);
}

CharVocab CharVocab::target_of(const Manifest& m) {
  if (m.tgt_vocab_symbols.empty()) throw BundleError("the bundle has no vocabulary; token ids cannot be shown as text");
  return CharVocab(m.tgt_vocab_symbols, m.special);
}

std::vector<int64_t> CharVocab::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  for (const std::string& ch : utf8_chars(text)) {
    auto it = index_.find(ch);
    // Only ids past the specials are characters: the symbol "<s>" is never a piece of text.
    ids.push_back(it != index_.end() && it->second >= 4 ? it->second : special_.unk);
  }
  return ids;
}

std::string CharVocab::token_text(int64_t id) const {
  return id >= 4 && id < static_cast<int64_t>(symbols_.size()) ? symbols_[static_cast<std::size_t>(id)] : std::string();
}

std::string CharVocab::decode(const std::vector<int64_t>& ids) const {
  std::string s;
  for (int64_t id : ids) s += token_text(id);
  return s;
}

}  // namespace qrnn
