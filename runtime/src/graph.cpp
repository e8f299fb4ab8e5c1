#include "qrnn/graph.hpp"

#include <algorithm>
#include <set>

#include "qrnn/errors.hpp"

namespace qrnn {

States stack_states(const std::vector<const States*>& parts) {
  if (parts.empty()) throw StreamError("stack_states: no streams to stack");
  States out;
  for (std::size_t i = 0; i < parts[0]->tensors.size(); ++i) {
    std::vector<const Tensor*> col;
    for (const States* p : parts) {
      if (p->tensors.size() != parts[0]->tensors.size())
        throw StreamError("stack_states: streams of different graphs cannot be batched together");
      col.push_back(&p->tensors[i]);
    }
    out.tensors.push_back(concat_rows(col));
  }
  return out;
}

States select_states(const States& s, const std::vector<int64_t>& rows) {
  States out;
  for (const Tensor& t : s.tensors) out.tensors.push_back(take_rows(t, rows));
  return out;
}

std::vector<States> split_states(const States& s) {
  std::vector<States> out;
  for (int64_t b = 0; b < s.batch(); ++b) out.push_back(select_states(s, {b}));
  return out;
}

static std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return "[" + s + "]";
}

StreamingGraph::StreamingGraph(const std::string& bundle_dir, const Manifest& manifest, const std::string& role,
                               const Options& options)
    : role_(role), spec_(manifest.graph(role)), backend_(make_backend(bundle_dir, manifest, role, options)) {
  // The graph file must declare exactly the tensors the manifest promises, so a stale or
  // mismatched file fails here, with both lists, and not at the first run.
  std::vector<std::string> want_in, want_out;
  for (const auto& t : spec_.inputs) want_in.push_back(t.name);
  for (const auto& s : spec_.states) want_in.push_back(s.name);
  for (const auto& t : spec_.outputs) want_out.push_back(t.name);
  for (const auto& s : spec_.states) want_out.push_back(s.output);
  auto sorted = [](std::vector<std::string> v) { std::sort(v.begin(), v.end()); return v; };
  const auto have_in = backend_->input_names(), have_out = backend_->output_names();
  if (sorted(have_in) != sorted(want_in))
    throw BundleError("graph " + role + " (" + spec_.file + ") has inputs " + join(have_in) + " but the manifest lists " +
                      join(want_in) + "; re-export the bundle");
  std::set<std::string> outs(have_out.begin(), have_out.end());
  for (const auto& n : want_out)
    if (!outs.count(n))
      throw BundleError("graph " + role + " (" + spec_.file + ") has no output " + n + " (it has " + join(have_out) +
                        "); re-export the bundle");
  output_names_ = want_out;
}

States StreamingGraph::zero_states(int64_t batch) const {
  if (batch < 1) throw StreamError("a batch needs at least one stream, got " + std::to_string(batch));
  States s;
  for (const auto& spec : spec_.states) s.tensors.push_back(zero_state(spec, batch, role_));
  return s;
}

Named StreamingGraph::run(const Named& inputs, States& states) {
  Refs refs;
  for (const auto& [name, t] : inputs) refs.emplace(name, &t);
  return run(refs, states);
}

Named StreamingGraph::run(const Refs& inputs, States& states) {
  if (states.tensors.size() != spec_.states.size())
    throw StreamError("graph " + role_ + " carries " + std::to_string(spec_.states.size()) + " states, got " +
                      std::to_string(states.tensors.size()));
  std::vector<std::string> names;
  std::vector<const Tensor*> values;
  for (const auto& t : spec_.inputs) {
    auto it = inputs.find(t.name);
    if (it == inputs.end()) throw StreamError("graph " + role_ + ": input " + t.name + " was not given");
    names.push_back(t.name);
    values.push_back(it->second);
  }
  for (std::size_t i = 0; i < spec_.states.size(); ++i) {
    names.push_back(spec_.states[i].name);
    values.push_back(&states.tensors[i]);
  }
  std::vector<Tensor> outs = backend_->run(names, values, output_names_);
  Named result;
  const std::size_t n_plain = spec_.outputs.size();
  for (std::size_t i = 0; i < n_plain; ++i) result.emplace(spec_.outputs[i].name, std::move(outs[i]));
  for (std::size_t i = 0; i < spec_.states.size(); ++i) states.tensors[i] = std::move(outs[n_plain + i]);
  return result;
}

}  // namespace qrnn

namespace qrnn {

std::vector<Named> feed_batch(const std::vector<Stream*>& streams, const std::vector<Named>& inputs) {
  if (streams.empty()) return {};
  if (inputs.size() != streams.size()) throw StreamError("feed_batch: one input set per stream is needed");
  StreamingGraph& g = streams[0]->graph();
  std::vector<const States*> parts;
  for (Stream* s : streams) {
    if (&s->graph() != &g) throw StreamError("feed_batch: streams of different graphs cannot be batched together");
    parts.push_back(&s->states());
  }
  States states = stack_states(parts);
  Named stacked;
  for (const auto& spec : g.spec().inputs) {
    std::vector<const Tensor*> col;
    for (const Named& in : inputs) {
      auto it = in.find(spec.name);
      if (it == in.end()) throw StreamError("graph " + g.role() + ": input " + spec.name + " was not given");
      col.push_back(&it->second);
    }
    stacked.emplace(spec.name, concat_rows(col));
  }
  Named outs = g.run(stacked, states);
  std::vector<Named> result(streams.size());
  int64_t row = 0;
  for (std::size_t i = 0; i < streams.size(); ++i) {
    const int64_t b = streams[i]->states().batch();
    std::vector<int64_t> rows(static_cast<std::size_t>(b));
    for (int64_t j = 0; j < b; ++j) rows[j] = row + j;
    for (const auto& [name, t] : outs) result[i].emplace(name, take_rows(t, rows));
    streams[i]->states() = select_states(states, rows);
    row += b;
  }
  return result;
}

}  // namespace qrnn
