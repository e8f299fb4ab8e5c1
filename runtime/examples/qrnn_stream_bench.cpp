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
    "usage: qrnn_stream_bench BUNDLE [--threads N] [--tokens N] [--warmup N] [--beam K] [--src TEXT]\n"
    "                         [--backend onnxruntime|tensorrt] [--custom-op-library PATH] [--json]\n"
    "Encodes TEXT, then decodes it step by step (greedy, or beam K) with the runtime's decoders,\n"
    "timing each step: one decoder graph call plus the host work (argmax / beam bookkeeping). The\n"
    "source is decoded again until N steps are timed (after --warmup untimed steps). Prints the\n"
    "latency per step: p50, p90, p99, mean (ms), and the p50 of the decoder graph call alone.\n";

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
  Args args(argc, argv, {"--threads", "--tokens", "--warmup", "--beam", "--src", "--backend", "--custom-op-library"},
            {"--json"});
  if (args.help) {
    std::cout << kUsage;
    return 0;
  }
  if (args.positional.size() != 1) throw UsageError("expected one BUNDLE argument (see --help)");
  const long tokens = args.integer("--tokens", 200, 1, 10000000);
  const long warmup = args.integer("--warmup", 20, 0, 10000000);
  const int beam = static_cast<int>(args.integer("--beam", 1, 1, 1000));
  const std::string text = args.str("--src", "Guten Morgen, wie geht es dir heute?");
  qrnn::Options opt;
  opt.threads = static_cast<int>(args.integer("--threads", 1, 1, 256));
  opt.backend = args.str("--backend", "onnxruntime");
  opt.custom_op_library = args.str("--custom-op-library", "");

  using clock = std::chrono::steady_clock;
  qrnn::Translator t(args.positional[0], opt);
  const std::vector<int64_t> ids = t.src_vocab().encode(text);
  if (ids.empty()) throw UsageError("--src must not be empty");
  const auto e0 = clock::now();
  const qrnn::Encoded src = t.encode(ids);
  const double encode_ms = std::chrono::duration<double, std::milli>(clock::now() - e0).count();
  const int64_t S = src.length();

  std::vector<double> lat;
  long step = 0, sentences = 0;
  const int max_len = static_cast<int>(std::min<long>(warmup + tokens, 1000000));
  while (step < warmup + tokens) {
    qrnn::GreedyDecoder greedy(t, src, max_len);
    qrnn::BeamDecoder beamd(t, src, beam, max_len, 1.0);
    ++sentences;
    while (step < warmup + tokens && !(beam == 1 ? greedy.done() : beamd.done())) {
      const auto t0 = clock::now();
      if (beam == 1)
        greedy.step();
      else
        beamd.step();
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (step++ >= warmup) lat.push_back(ms);
    }
  }
  // The floor: the decoder graph call alone (the backend's run on fixed inputs, greedy shapes),
  // so the runtime's own per-step cost shows as the difference.
  std::vector<double> floor;
  {
    const qrnn::Tensor mask = t.memory_mask({S}, S);
    qrnn::States st = t.decoder().zero_states(1);
    const qrnn::Tensor tgt = qrnn::Tensor::from_ids({t.manifest().special.bos}, {1, 1});
    std::vector<std::string> names = {"tgt", "memory", "memory_mask"}, outs = {"logits"};
    std::vector<const qrnn::Tensor*> vals = {&tgt, &src.memory, &mask};
    for (int l = 0; l < t.num_layers(); ++l) {
      names.push_back("cond_" + std::to_string(l));
      vals.push_back(&src.cond[static_cast<std::size_t>(l)]);
    }
    for (std::size_t i = 0; i < t.decoder().spec().states.size(); ++i) {
      names.push_back(t.decoder().spec().states[i].name);
      vals.push_back(&st.tensors[i]);
      outs.push_back(t.decoder().spec().states[i].output);
    }
    for (long i = 0; i < warmup + tokens; ++i) {
      const auto t0 = clock::now();
      t.decoder().backend().run(names, vals, outs);
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (i >= warmup) floor.push_back(ms);
    }
  }
  const double floor_p50 = percentile(floor, 50);
  double mean = 0;
  for (double x : lat) mean += x;
  mean /= static_cast<double>(lat.size());
  const double p50 = percentile(lat, 50), p90 = percentile(lat, 90), p99 = percentile(lat, 99);
  if (args.has("--json")) {
    std::printf("{\"runtime\": \"cpp\", \"backend\": \"%s\", \"threads\": %d, \"beam\": %d, \"tokens\": %zu, "
                "\"source_length\": %lld, \"encode_ms\": %.4f, \"p50_ms\": %.4f, \"p90_ms\": %.4f, \"p99_ms\": %.4f, "
                "\"mean_ms\": %.4f, \"sentences\": %ld, \"graph_call_p50_ms\": %.4f}\n",
                opt.backend.c_str(), opt.threads, beam, lat.size(), static_cast<long long>(S), encode_ms, p50, p90, p99,
                mean, sentences, floor_p50);
  } else {
    std::printf("%s, %d thread(s), %s, source %lld symbols (encoded in %.3f ms), %ld sentence(s)\n",
                opt.backend.c_str(), opt.threads, beam == 1 ? "greedy" : ("beam " + std::to_string(beam)).c_str(),
                static_cast<long long>(S), encode_ms, sentences);
    std::printf("per-step latency over %zu steps: p50 %.4f ms  p90 %.4f ms  p99 %.4f ms  mean %.4f ms\n", lat.size(),
                p50, p90, p99, mean);
    std::printf("decoder graph call alone (greedy shapes): p50 %.4f ms\n", floor_p50);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return qrnn_examples::main_guard<qrnn::Error>("qrnn_stream_bench", run, argc, argv);
}
