#include "qrnn/decoding.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace qrnn {

std::vector<double> log_softmax(const float* logits, int64_t n) {
  std::vector<double> out(static_cast<std::size_t>(n));
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(logits[i]));
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  const double lse = std::log(sum);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<double>(logits[i]) - mx - lse;
  return out;
}

int64_t argmax(const float* values, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (values[i] > values[best] || (std::isnan(values[i]) && !std::isnan(values[best]))) best = i;
  return best;
}

void beam_step(const std::vector<double>& scores, const std::vector<double>& logp, int64_t V, int beam,
               int64_t n_finished, bool last_step, int64_t eos, std::vector<Candidate>& live,
               std::vector<Candidate>& finished) {
  live.clear();
  finished.clear();
  const int64_t K = static_cast<int64_t>(scores.size());
  std::vector<double> total(static_cast<std::size_t>(K * V));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t v = 0; v < V; ++v) total[k * V + v] = scores[k] + logp[k * V + v];
  // numpy's stable argsort of -total: larger first, equal values by lower index, NaN last.
  auto better = [&](int64_t a, int64_t b) {
    const double x = total[a], y = total[b];
    const bool nx = std::isnan(x), ny = std::isnan(y);
    if (nx || ny) return nx == ny ? a < b : ny;
    return x > y || (x == y && a < b);
  };
  std::vector<int64_t> order(total.size());
  std::iota(order.begin(), order.end(), 0);
  const std::size_t top = std::min<std::size_t>(order.size(), 2 * static_cast<std::size_t>(beam));
  std::partial_sort(order.begin(), order.begin() + top, order.end(), better);
  for (std::size_t rank = 0; rank < top; ++rank) {
    const int64_t flat = order[rank];
    const Candidate c{total[flat], flat / V, flat % V};
    if (c.symbol == eos) {
      if (static_cast<int64_t>(rank) < beam && n_finished + static_cast<int64_t>(finished.size()) < beam)
        finished.push_back(c);
    } else if (static_cast<int64_t>(live.size()) < beam) {
      live.push_back(c);
    }
  }
  if (last_step) {
    const int64_t room = std::max<int64_t>(0, beam - n_finished - static_cast<int64_t>(finished.size()));
    for (int64_t i = 0; i < room && i < static_cast<int64_t>(live.size()); ++i) finished.push_back(live[i]);
    live.clear();
  }
  if (n_finished + static_cast<int64_t>(finished.size()) >= beam) live.clear();
}

std::vector<int64_t> best_hypothesis(const std::vector<Hypothesis>& finished, double length_penalty) {
  std::vector<int64_t> best;
  double best_score = -std::numeric_limits<double>::infinity();
  for (const Hypothesis& h : finished) {
    const double norm = h.score / std::pow(static_cast<double>(h.tokens.size() + 1), length_penalty);
    if (norm > best_score) {
      best = h.tokens;
      best_score = norm;
    }
  }
  return best;
}

}  // namespace qrnn
