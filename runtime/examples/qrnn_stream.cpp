// qrnn_stream: stream stdin lines through a language-model bundle (each line is a prompt; its
// continuation is written token by token) or a classifier bundle (each line is fed in chunks;
// the running prediction is written after each chunk).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "args.hpp"
#include "qrnn/runtime.hpp"

namespace {

const char* kUsage =
    "usage: qrnn_stream BUNDLE [--max-new N] [--temperature T] [--top-k K] [--seed S] [--ids]\n"
    "                          [--chunk N] [--threads N] [--custom-op-library PATH]\n"
    "language_model bundle: each stdin line is a prompt (an empty one starts from <s>); writes its\n"
    "  continuation, token by token, up to --max-new tokens (default 50) or </s>. --temperature 0\n"
    "  (default) is greedy; otherwise a seeded sample, of the --top-k best when given.\n"
    "classifier bundle: each stdin line is fed --chunk characters at a time (default: whole); after\n"
    "  each chunk writes 'CLASS p_0 ... p_{C-1}' (the prediction for the prefix so far), then an\n"
    "  empty line when the line ends.\n";

int run(int argc, char** argv) {
  using qrnn_examples::Args;
  using qrnn_examples::UsageError;
  Args args(argc, argv,
            {"--max-new", "--temperature", "--top-k", "--seed", "--chunk", "--threads", "--custom-op-library"},
            {"--ids"});
  if (args.help) {
    std::cout << kUsage;
    return 0;
  }
  if (args.positional.size() != 1) throw UsageError("expected one BUNDLE argument (see --help)");
  const int max_new = static_cast<int>(args.integer("--max-new", 50, 0, 1000000));
  const double temperature = args.real("--temperature", 0.0);
  if (!(temperature >= 0 && std::isfinite(temperature))) throw UsageError("--temperature must be a finite number >= 0");
  const int top_k = static_cast<int>(args.integer("--top-k", 0, 0, 1000000));
  const uint64_t seed = static_cast<uint64_t>(args.integer("--seed", 0, 0, 1L << 62));
  const long chunk = args.integer("--chunk", 0, 0, 1000000);
  qrnn::Options opt;
  opt.threads = static_cast<int>(args.integer("--threads", 1, 1, 256));
  opt.custom_op_library = args.str("--custom-op-library", "");

  const std::string dir = args.positional[0];
  const qrnn::Manifest m = qrnn::load_manifest(dir);
  std::string line;
  if (m.model_type == "language_model") {
    qrnn::SingleGraphModel model(dir, "language_model", opt);
    model.vocab();
    qrnn::LanguageModelStream lm(model);
    const bool ids = args.has("--ids");
    while (std::getline(std::cin, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lm.reset();
      bool first = true;
      lm.generate(model.vocab().encode(line), max_new, temperature, top_k, seed, true, [&](int64_t tok) {
        if (ids)
          std::cout << (first ? "" : " ") << tok;
        else
          std::cout << model.vocab().token_text(tok);
        first = false;
        std::cout.flush();
      });
      std::cout << '\n' << std::flush;
    }
  } else if (m.model_type == "classifier") {
    qrnn::SingleGraphModel model(dir, "classifier", opt);
    qrnn::ClassifierStream cls(model);
    while (std::getline(std::cin, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      cls.reset();
      const std::vector<int64_t> all = model.vocab().encode(line);
      const std::size_t step = chunk > 0 ? static_cast<std::size_t>(chunk) : std::max<std::size_t>(all.size(), 1);
      for (std::size_t i = 0; i < all.size(); i += step) {
        const auto p = cls.feed(std::vector<int64_t>(all.begin() + i, all.begin() + std::min(all.size(), i + step)));
        std::printf("%lld", static_cast<long long>(cls.prediction()));
        for (double v : *p) std::printf(" %.9g", v);
        std::printf("\n");
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  } else {
    throw qrnn::BundleError(dir + " is a " + m.model_type + " bundle; qrnn_stream takes a language_model or a "
                            "classifier bundle (qrnn_translate takes seq2seq)");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return qrnn_examples::main_guard<qrnn::Error>("qrnn_stream", run, argc, argv);
}
