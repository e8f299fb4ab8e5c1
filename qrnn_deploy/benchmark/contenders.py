"""The contenders: one small object per implementation, each able to encode a token batch and to
decode token by token with carried states.

- `OrtContender`: an onnxruntime session with token + state inputs. The QRNN bundles (custom op,
  portable) and the ONNX LSTM baseline are all timed through `session.run` with pre-built feeds, so
  they pay the same Python and binding cost per call.
- `TorchContender`: a PyTorch eager model `model(tokens, state) -> (logits, state)` under
  `torch.inference_mode()`: QRNNLanguageModel (qrnn_deploy.nn) and the nn.LSTM baseline.
- `RuntimeStreamContender`: the QRNN custom-op bundle through the project's runtime
  (`Stream.feed`), to show what the runtime's bookkeeping adds per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch


def ort_session(model_or_path, threads: int, custom_ops: bool = False):
    """An onnxruntime CPU session with the benchmark's settings, the same for every ONNX contender,
    made by the project's one session factory (qrnn_deploy._native.ort_session): intra-op threads
    = `threads`, inter-op 1, all graph optimizations, no spin-waiting; `custom_ops` registers the
    FoPool library (BuildError when it is not built).

    Spinning is off because the suite interleaves onnxruntime and PyTorch calls on the same cores;
    an idle pool that spins steals the CPU from the other library's next call (the CLI likewise
    sets OMP_WAIT_POLICY=PASSIVE for PyTorch's OpenMP threads before torch is imported).
    """
    import onnxruntime as ort

    from qrnn_deploy._native import ort_session as make_session

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    return make_session(src, threads=int(threads), custom_ops=custom_ops, session_options=so)


class BenchRunner:
    """A `qrnn_deploy.runtime` GraphRunner whose session has the benchmark's settings
    (`ort_session`), registered as backend "bench-onnxruntime": bundles are loaded by the
    project's own loader (manifest checks, Graph, Stream) but run in sessions configured alike
    with the LSTM baseline's."""

    def __init__(self, bundle_dir, manifest, role: str, providers=None, threads: Optional[int] = None):
        from pathlib import Path

        self.role = role
        self.session = ort_session(Path(bundle_dir) / manifest.graphs[role].file, threads or 1,
                                   custom_ops=manifest.fo_pool == "custom")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


BENCH_BACKEND = "bench-onnxruntime"


def register_bench_backend() -> str:
    """Registers `BenchRunner` with the runtime (idempotent); returns the backend name."""
    from qrnn_deploy.runtime import available_backends, register_backend

    if BENCH_BACKEND not in available_backends():
        register_backend(BENCH_BACKEND, BenchRunner)
    return BENCH_BACKEND


@dataclass
class Contender:
    """What the suite needs from an implementation.

    encode(tokens [B, T] int64) -> a no-argument callable that runs the whole sequence from zero
    states; stepper(batch, tokens [N] int64) -> a no-argument callable that feeds the next token of
    `tokens` (cycling) to `batch` streams with carried states, one decoding step per call.
    """

    name: str
    family: str  # "qrnn" or "lstm"
    encode: Callable
    stepper: Callable


def ort_contender(name: str, family: str, session, state_feeds: Callable[[int], dict],
                  state_outputs: dict) -> Contender:
    """`state_feeds(B)` -> zero state inputs; `state_outputs`: output name -> state input name."""
    out_names = [o.name for o in session.get_outputs()]
    carry = [(i, state_outputs[n]) for i, n in enumerate(out_names) if n in state_outputs]

    def encode(tokens: np.ndarray):
        feeds = {"tokens": np.ascontiguousarray(tokens, np.int64), **state_feeds(tokens.shape[0])}
        return lambda: session.run(None, feeds)

    def stepper(batch: int, tokens: np.ndarray):
        feeds = state_feeds(batch)
        col = [np.full((batch, 1), t, np.int64) for t in tokens]
        pos = [0]

        def step():
            feeds["tokens"] = col[pos[0] % len(col)]
            pos[0] += 1
            outs = session.run(None, feeds)
            for i, name in carry:
                feeds[name] = outs[i]
            return outs[0]
        return step

    return Contender(name, family, encode, stepper)


def torch_contender(name: str, family: str, model: torch.nn.Module) -> Contender:
    """`model(tokens [B, T], state) -> (logits, state)` in eval mode, no autograd."""
    model.eval()

    def encode(tokens: np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(tokens, np.int64))

        def run():
            with torch.inference_mode():
                return model(t)[0]
        return run

    def stepper(batch: int, tokens: np.ndarray):
        col = [torch.full((batch, 1), int(t), dtype=torch.int64) for t in tokens]
        state: list = [None]
        pos = [0]

        def step():
            with torch.inference_mode():
                logits, state[0] = model(col[pos[0] % len(col)], state[0])
            pos[0] += 1
            return logits
        return step

    return Contender(name, family, encode, stepper)


def runtime_stream_contender(name: str, bundle) -> Contender:
    """The bundle's language-model graph through `qrnn_deploy.runtime.Stream.feed` (batch 1 only)."""

    def encode(tokens: np.ndarray):
        raise NotImplementedError("the runtime-stream contender only decodes")

    def stepper(batch: int, tokens: np.ndarray):
        if batch != 1:
            raise ValueError("Stream.feed drives one stream; use batch 1")
        stream = bundle.stream("lm")
        ids = [np.array([t], np.int64) for t in tokens]
        pos = [0]

        def step():
            out = stream.feed(ids[pos[0] % len(ids)])
            pos[0] += 1
            return out
        return step

    return Contender(name, "qrnn", encode, stepper)


def macs_per_token_qrnn(embed: int, hidden: int, layers: int, windows: list, vocab: int,
                        pooling_gates: int = 3) -> int:
    """Multiply-adds per token of the QRNN LM: per layer P*H*k*d_in, plus the output layer."""
    total, d = 0, embed
    for k in windows:
        total += pooling_gates * hidden * k * d
        d = hidden
    return total + hidden * vocab


def macs_per_token_lstm(embed: int, hidden: int, layers: int, vocab: int) -> int:
    """Multiply-adds per token of the LSTM LM: per layer 4H * (d_in + H), plus the output layer."""
    total, d = 0, embed
    for _ in range(layers):
        total += 4 * hidden * (d + hidden)
        d = hidden
    return total + hidden * vocab


def bundle_state_io(graph) -> tuple[Callable[[int], dict], dict]:
    """(zero-state feeds for batch B, output name -> input name) of a runtime Graph."""
    return graph.zero_states, {s.output: s.name for s in graph.states}
