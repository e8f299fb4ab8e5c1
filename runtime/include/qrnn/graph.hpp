// One graph of a bundle with its carried states (DESIGN.md section 3): a chunk of Tc >= 1 steps
// plus the states in, outputs plus the next states out. States are batch-first, so streams
// batch by stacking their states along axis 0 and split back by taking rows.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qrnn/backend.hpp"
#include "qrnn/manifest.hpp"
#include "qrnn/tensor.hpp"

namespace qrnn {

// The states of one graph for a batch of B streams, in the order of GraphSpec::states.
struct States {
  std::vector<Tensor> tensors;
  int64_t batch() const { return tensors.empty() ? -1 : tensors[0].dim(0); }
};

// Stacks the states of several streams (batches b_i) into one batch of sum b_i streams.
States stack_states(const std::vector<const States*>& parts);
// Rows `rows` of every state (beam reordering, dropping finished streams, splitting).
States select_states(const States& s, const std::vector<int64_t>& rows);
// One States per stream (row) of a batch.
std::vector<States> split_states(const States& s);

using Named = std::map<std::string, Tensor>;
// Inputs by reference, so large tensors (an encoder memory) are not copied on every step.
using Refs = std::map<std::string, const Tensor*>;

class StreamingGraph {
 public:
  StreamingGraph(const std::string& bundle_dir, const Manifest& manifest, const std::string& role,
                 const Options& options);

  const std::string& role() const { return role_; }
  const GraphSpec& spec() const { return spec_; }
  Backend& backend() { return *backend_; }

  // Zero states for `batch` streams: the start of a sequence.
  States zero_states(int64_t batch) const;

  // Advances `states` (batch B) by one chunk: `inputs` holds every non-state input of the graph;
  // returns the non-state outputs (all of them, by name) and replaces `states` with the next ones.
  Named run(const Refs& inputs, States& states);
  Named run(const Named& inputs, States& states);

 private:
  std::string role_;
  GraphSpec spec_;
  std::unique_ptr<Backend> backend_;
  std::vector<std::string> output_names_;  // non-state outputs, then state outputs
};

}  // namespace qrnn

namespace qrnn {

// One stream of a graph: its own states (batch 1), advanced chunk by chunk.
class Stream {
 public:
  explicit Stream(StreamingGraph& graph) : graph_(&graph), states_(graph.zero_states(1)) {}
  // Advances the stream by one chunk (every non-state input, batch 1); returns the outputs.
  Named feed(const Named& inputs) { return graph_->run(inputs, states_); }
  void reset() { states_ = graph_->zero_states(1); }
  const States& states() const { return states_; }
  States& states() { return states_; }
  StreamingGraph& graph() { return *graph_; }

 private:
  StreamingGraph* graph_;
  States states_;
};

// Advances several streams of the same graph in one run: their states and inputs are stacked
// along axis 0 (the inputs of all streams must have the same shapes apart from the batch, e.g.
// the same chunk length), and outputs and states split back. Returns one Named per stream.
std::vector<Named> feed_batch(const std::vector<Stream*>& streams, const std::vector<Named>& inputs);

}  // namespace qrnn
