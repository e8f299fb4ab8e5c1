// Character vocabulary of a bundle (qrnn_deploy/vocab.py): ids 0..3 are <pad> <unk> <s> </s>,
// every other id is one character (one Unicode code point, UTF-8 encoded here). Unknown
// characters map to <unk>, never to an error.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "qrnn/manifest.hpp"

namespace qrnn {

// Splits UTF-8 text into code points (each a UTF-8 string). A malformed byte becomes a
// one-byte piece of its own (it then maps to <unk>), so no input is an error.
std::vector<std::string> utf8_chars(const std::string& text);

// Byte offset of the first byte of `text` that is not part of well-formed UTF-8 (an overlong
// form, a surrogate, a stray continuation byte, ...), or std::string::npos when it is all valid.
std::size_t utf8_invalid_at(const std::string& text);

class CharVocab {
 public:
  CharVocab() = default;
  CharVocab(std::vector<std::string> symbols, SpecialTokens special);
  // The bundle's source-side (input) or target-side (output) vocabulary; BundleError without one.
  static CharVocab source_of(const Manifest& m);
  static CharVocab target_of(const Manifest& m);

  std::size_t size() const { return symbols_.size(); }
  const SpecialTokens& special() const { return special_; }
  // Ids of the characters of `text` (no <s> / </s> added).
  std::vector<int64_t> encode(const std::string& text) const;
  // The text of one id: its character, or "" for special / out-of-range ids.
  std::string token_text(int64_t id) const;
  std::string decode(const std::vector<int64_t>& ids) const;

 private:
  std::vector<std::string> symbols_;
  std::unordered_map<std::string, int64_t> index_;
  SpecialTokens special_;
};

}  // namespace qrnn
