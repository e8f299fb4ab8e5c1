#include "qrnn/vocab.hpp"

#include "qrnn/errors.hpp"

namespace qrnn {

namespace {

// Length of the well-formed UTF-8 sequence at s[i] (Unicode table 3-7: no overlong forms, no
// surrogates, nothing above U+10FFFF), or 0 when the byte there starts none.
std::size_t utf8_length(const unsigned char* s, std::size_t n, std::size_t i) {
  const unsigned char c = s[i];
  if (c < 0x80) return 1;
  std::size_t len;
  unsigned char lo = 0x80, hi = 0xbf;  // the allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    if (c == 0xe0) lo = 0xa0;  // overlong
    if (c == 0xed) hi = 0x9f;  // surrogates
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    if (c == 0xf0) lo = 0x90;  // overlong
    if (c == 0xf4) hi = 0x8f;  // above U+10FFFF
  } else {
    return 0;  // a continuation byte, C0/C1 (overlong) or F5..FF
  }
  if (i + len > n || s[i + 1] < lo || s[i + 1] > hi) return 0;
  for (std::size_t j = 2; j < len; ++j)
    if ((s[i + j] & 0xc0) != 0x80) return 0;
  return len;
}

}  // namespace

std::vector<std::string> utf8_chars(const std::string& text) {
  std::vector<std::string> out;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    std::size_t len = utf8_length(s, n, i);
    if (len == 0) len = 1;  // malformed: keep the byte alone (as Python's surrogateescape does)
    out.emplace_back(text, i, len);
    i += len;
  }
  return out;
}

std::size_t utf8_invalid_at(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const std::size_t len = utf8_length(s, n, i);
    if (len == 0) return i;
    i += len;
  }
  return std::string::npos;
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
