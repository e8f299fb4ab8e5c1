// qrnn_translate: translate lines of stdin with a seq2seq bundle, writing each token as soon as
// it is decoded (greedy: every step; beam: as the hypotheses agree on it).
#include <climits>
#include <iostream>
#include <string>
#include <vector>

#include "args.hpp"
#include "qrnn/runtime.hpp"

namespace {

const char* kUsage =
    "usage: qrnn_translate BUNDLE [--beam K] [--max-len N] [--threads N] [--length-penalty A]\n"
    "                      [--ids] [--src-chunk N] [--batch N] [--backend onnxruntime|tensorrt]\n"
    "                      [--max-source-chars N] [--custom-op-library PATH]\n"
    "Reads source lines on stdin and writes one translation line per source line, token by token.\n"
    "  --beam K            beam size (1: greedy; default 1)\n"
    "  --max-len N         at most N target tokens (1..1000000; default 200)\n"
    "  --threads N         onnxruntime intra-op threads (default 1)\n"
    "  --length-penalty A  beam score / (len + 1) ** A (0..10; default 1.0)\n"
    "  --ids               write token ids (space separated) instead of text\n"
    "  --src-chunk N       feed each source to the encoder N characters at a time (default: whole line)\n"
    "  --batch N           greedy-decode N lines at a time in one batch (written when the batch ends)\n"
    "  --max-source-chars N  longest source line accepted, in characters (default 2000); a longer one\n"
    "                      stops with an error after the lines before it\n"
    "  --custom-op-library PATH  the FoPool custom-op library (default: $QRNN_ORT_LIBRARY or the built one)\n";

struct Writer {
  const qrnn::Translator& t;
  bool ids;
  bool first = true;
  void token(int64_t id) {
    if (ids) {
      std::cout << (first ? "" : " ") << id;
    } else {
      std::cout << t.tgt_vocab().token_text(id);
    }
    first = false;
    std::cout.flush();
  }
  void end() {
    std::cout << '\n';
    std::cout.flush();
    first = true;
  }
};

// Characters (code points) of a valid UTF-8 string: its bytes that do not continue a sequence.
std::size_t utf8_length(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xc0) != 0x80;
  return n;
}

// 2001 -> "2,001", as Python's f"{n:,}" (the message of `qrnn-deploy translate`).
std::string with_commas(std::size_t n) {
  std::string digits = std::to_string(n), out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

qrnn::Encoded encode_line(qrnn::Translator& t, const std::string& line, long chunk) {
  const std::vector<int64_t> ids = t.src_vocab().encode(line);
  qrnn::SourceStream src = t.source();
  const std::size_t step = chunk > 0 ? static_cast<std::size_t>(chunk) : ids.size();
  for (std::size_t i = 0; i < ids.size(); i += step)
    src.feed(std::vector<int64_t>(ids.begin() + i, ids.begin() + std::min(ids.size(), i + step)));
  return src.encoded();
}

int run(int argc, char** argv) {
  using qrnn_examples::Args;
  using qrnn_examples::UsageError;
  Args args(argc, argv,
            {"--beam", "--max-len", "--threads", "--length-penalty", "--src-chunk", "--batch", "--backend",
             "--custom-op-library", "--max-source-chars"},
            {"--ids"});
  if (args.help) {
    std::cout << kUsage;
    return 0;
  }
  if (args.positional.size() != 1) throw UsageError("expected one BUNDLE argument (see --help)");
  const int beam = static_cast<int>(args.integer("--beam", 1, 1, 1000));
  // The bounds of `qrnn-deploy translate` (--max-len >= 1, --length-penalty in [0, 10] whatever the
  // beam, --max-source-chars), checked before any line is read, as it does.
  const int max_len = static_cast<int>(args.integer("--max-len", 200, 1, 1000000));
  const long chunk = args.integer("--src-chunk", 0, 0, 1000000);
  const long batch = args.integer("--batch", 1, 1, 100000);
  const double lp = args.real("--length-penalty", 1.0);
  if (!(lp >= 0.0 && lp <= 10.0))  // also false for nan
    throw UsageError("--length-penalty must be a number in [0, 10], got " + args.str("--length-penalty", ""));
  const long max_chars = args.integer("--max-source-chars", 2000, 1, LONG_MAX);
  if (batch > 1 && beam > 1) throw UsageError("--batch is for greedy decoding (--beam 1)");
  qrnn::Options opt;
  opt.threads = static_cast<int>(args.integer("--threads", 1, 1, 256));
  opt.backend = args.str("--backend", "onnxruntime");
  opt.custom_op_library = args.str("--custom-op-library", "");

  qrnn::Translator t(args.positional[0], opt);
  t.src_vocab();  // fail now, not at the first line, when the bundle has no vocabulary
  Writer out{t, args.has("--ids")};
  std::string line;
  std::vector<std::string> pending;
  auto flush_batch = [&]() {
    std::vector<qrnn::Encoded> srcs;
    std::vector<std::size_t> where;  // which pending lines are not empty
    for (std::size_t i = 0; i < pending.size(); ++i)
      if (!t.src_vocab().encode(pending[i]).empty()) {
        srcs.push_back(encode_line(t, pending[i], chunk));
        where.push_back(i);
      }
    std::vector<std::vector<int64_t>> res = t.greedy_batch(srcs, max_len);
    std::vector<std::vector<int64_t>> lines(pending.size());
    for (std::size_t j = 0; j < where.size(); ++j) lines[where[j]] = res[j];
    for (const auto& toks : lines) {
      for (int64_t id : toks) out.token(id);
      out.end();
    }
    pending.clear();
  };
  long line_no = 0;
  while (std::getline(std::cin, line)) {
    ++line_no;
    while (!line.empty() && line.back() == '\r') line.pop_back();  // as Python's rstrip("\r\n")
    const std::size_t bad = qrnn::utf8_invalid_at(line);
    if (bad != std::string::npos) {  // as `qrnn-deploy translate`: the lines before it were translated
      if (!pending.empty()) flush_batch();
      throw qrnn::ConfigError("stdin line " + std::to_string(line_no) + " is not valid UTF-8 (an undecodable byte at " +
                              "byte " + std::to_string(bad) + "); give UTF-8 text");
    }
    const std::size_t chars = utf8_length(line);
    if (chars > static_cast<std::size_t>(max_chars)) {
      if (!pending.empty()) flush_batch();
      throw qrnn::ConfigError("stdin line " + std::to_string(line_no) + " has " + with_commas(chars) +
                              " characters, more than --max-source-chars " + std::to_string(max_chars) +
                              "; split it into sentences");
    }
    if (batch > 1) {
      pending.push_back(line);
      if (static_cast<long>(pending.size()) == batch) flush_batch();
      continue;
    }
    if (line.empty()) {  // nothing to translate
      out.end();
      continue;
    }
    const qrnn::Encoded src = encode_line(t, line, chunk);
    auto cb = [&](int64_t id) { out.token(id); };
    if (beam == 1)
      t.greedy(src, max_len, cb);
    else
      t.beam_search(src, beam, max_len, lp, cb);
    out.end();
  }
  if (!pending.empty()) flush_batch();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return qrnn_examples::main_guard<qrnn::Error>("qrnn_translate", run, argc, argv);
}
