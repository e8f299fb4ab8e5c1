// qrnn_stream_bench: per-token decode latency of a seq2seq bundle (p50 / p90 / p99), the way an
// app sees it: one decoder step for the next token, the argmax on the host, the token fed back.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "args.hpp"
#include "qrnn/runtime.hpp"

namespace {

const char* kUsage =
    "usage: qrnn_stream_bench BUNDLE [--threads N] [--tokens N] [--warmup N] [--batch B] [--src TEXT]\n"
    "                         [--backend onnxruntime|tensorrt] [--custom-op-library PATH] [--json]\n"
    "Encodes TEXT once, then times N greedy decoder steps (fed their own argmax; </s> does not stop\n"
    "the run) for a batch of B streams. Prints the latency per step: p50, p90, p99, mean (ms).\n";

// numpy.percentile's default (linear interpolation between closest ranks), so figures compare
// one to one with the Python benchmark.
double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  if (v.empty()) return 0.0;
  const double pos = q / 100.0 * static_cast<double>(v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

int run(int argc, char** argv) {
  using qrnn_examples::Args;
  using qrnn_examples::UsageError;
  Args args(argc, argv, {"--threads", "--tokens", "--warmup", "--batch", "--src", "--backend", "--custom-op-library"},
            {"--json"});
  if (args.help) {
    std::cout << kUsage;
    return 0;
  }
  if (args.positional.size() != 1) throw UsageError("expected one BUNDLE argument (see --help)");
  const long tokens = args.integer("--tokens", 200, 1, 10000000);
  const long warmup = args.integer("--warmup", 20, 0, 10000000);
  const long batch = args.integer("--batch", 1, 1, 4096);
  const std::string text = args.str("--src", "Guten Morgen, wie geht es dir heute?");
  qrnn::Options opt;
  opt.threads = static_cast<int>(args.integer("--threads", 1, 1, 1024));
  opt.backend = args.str("--backend", "onnxruntime");
  opt.custom_op_library = args.str("--custom-op-library", "");

  using clock = std::chrono::steady_clock;
  qrnn::Translator t(args.positional[0], opt);
  const std::vector<int64_t> ids = t.src_vocab().encode(text);
  if (ids.empty()) throw UsageError("--src must not be empty");
  const auto e0 = clock::now();
  const qrnn::Encoded src = t.encode(ids);
  const double encode_ms = std::chrono::duration<double, std::milli>(clock::now() - e0).count();

  const int64_t B = batch, S = src.length();
  const qrnn::Tensor memory = qrnn::repeat_row(src.memory, 0, B);
  const qrnn::Tensor mask = t.memory_mask(std::vector<int64_t>(static_cast<std::size_t>(B), S), S);
  std::vector<qrnn::Tensor> cond;
  for (const qrnn::Tensor& c : src.cond) cond.push_back(qrnn::repeat_row(c, 0, B));
  std::vector<double> lat;
  qrnn::States states = t.decoder().zero_states(B);
  std::vector<int64_t> toks(static_cast<std::size_t>(B), t.manifest().special.bos);
  for (long step = 0; step < warmup + tokens; ++step) {
    const auto t0 = clock::now();
    const qrnn::Tensor logits = t.decode_step(qrnn::Tensor::from_ids(toks, {B, 1}), memory, mask, cond, states);
    const std::vector<float> v = logits.to_floats();
    const int64_t V = logits.dim(2);
    for (int64_t b = 0; b < B; ++b) toks[b] = qrnn::argmax(v.data() + b * V, V);
    const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
    if (step >= warmup) lat.push_back(ms);
  }
  double mean = 0;
  for (double x : lat) mean += x;
  mean /= static_cast<double>(lat.size());
  const double p50 = percentile(lat, 50), p90 = percentile(lat, 90), p99 = percentile(lat, 99);
  if (args.has("--json")) {
    std::printf("{\"runtime\": \"cpp\", \"backend\": \"%s\", \"threads\": %d, \"batch\": %ld, \"tokens\": %ld, "
                "\"source_length\": %lld, \"encode_ms\": %.4f, \"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, "
                "\"mean_ms\": %.4f}\n",
                opt.backend.c_str(), opt.threads, batch, tokens, static_cast<long long>(S), encode_ms, p50, p90, p99,
                mean);
  } else {
    std::printf("%s, %d thread(s), batch %ld, source %lld symbols (encoded in %.3f ms)\n", opt.backend.c_str(),
                opt.threads, batch, static_cast<long long>(S), encode_ms);
    std::printf("per-token latency over %ld steps: p50 %.4f ms  p90 %.4f ms  p99 %.4f ms  mean %.4f ms\n", tokens, p50,
                p90, p99, mean);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const qrnn_examples::UsageError& e) {
    std::cerr << "qrnn_stream_bench: " << e.what() << "\n";
    return 2;
  } catch (const qrnn::Error& e) {
    std::cerr << "qrnn_stream_bench: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "qrnn_stream_bench: internal error: " << e.what() << "\n";
    return 1;
  }
}
