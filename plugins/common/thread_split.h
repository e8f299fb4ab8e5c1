// A minimal fork-join over work items for plugins without a host thread pool (the C ABI library
// used from PyTorch). Threads are started per call: FoPool calls are few and long (one per layer
// per step), so a persistent pool would save microseconds against milliseconds of work.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

namespace qrnn {

// Calls fn(begin, end) on disjoint ranges covering [0, n), on up to `threads` threads (the
// calling thread included). Ranges are handed out dynamically in small blocks so that a slow
// (preempted) thread does not hold the others back on a shared machine.
template <typename Fn>
void split_items(int64_t n, int threads, Fn fn) {
  if (n <= 0) return;
  threads = std::max(1, std::min<int>(threads, static_cast<int>(std::min<int64_t>(n, 256))));
  if (threads == 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t block = std::max<int64_t>(1, n / (static_cast<int64_t>(threads) * 8));
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (;;) {
      int64_t b = next.fetch_add(block);
      if (b >= n) break;
      fn(b, std::min(n, b + block));
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int i = 1; i < threads; ++i) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace qrnn
