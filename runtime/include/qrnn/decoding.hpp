// The decoding rules of qrnn_deploy/decoding.py, re-implemented exactly so the C++ decoders give
// the same token sequences as the Python runtime and the PyTorch reference decoders.
#pragma once

#include <cstdint>
#include <vector>

namespace qrnn {

// log_softmax of float32 logits in float64 (max-shifted), like torch.log_softmax(x.double()).
std::vector<double> log_softmax(const float* logits, int64_t n);
// Index of the largest value; ties go to the lowest index (torch.argmax / numpy.argmax).
int64_t argmax(const float* values, int64_t n);

struct Candidate {
  double score;    // summed log-probability
  int64_t parent;  // index of the live hypothesis it extends
  int64_t symbol;
};

// One beam-search expansion (decoding.beam_step). scores: [K] summed log-probs of the live
// hypotheses; logp: [K * V] row-major float64 log-probs of the next symbol. Candidates are
// ranked best first, ties to the lower flat index k*V + v; walking the best 2*beam in order, an
// `eos` candidate ranked within the first `beam` finishes (while fewer than `beam` are finished
// in all), any other becomes live while fewer than `beam` are live. On the last step live
// candidates finish instead. Once `beam` hypotheses are finished nothing stays live.
void beam_step(const std::vector<double>& scores, const std::vector<double>& logp, int64_t V, int beam,
               int64_t n_finished, bool last_step, int64_t eos, std::vector<Candidate>& live,
               std::vector<Candidate>& finished);

struct Hypothesis {
  double score;
  std::vector<int64_t> tokens;
};

// The finished hypothesis with the best score / (len + 1) ** length_penalty; ties go to the one
// finished first (decoding.best_hypothesis). Empty when nothing finished.
std::vector<int64_t> best_hypothesis(const std::vector<Hypothesis>& finished, double length_penalty);

}  // namespace qrnn
