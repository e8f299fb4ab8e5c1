"""The LSTM baselines: a PyTorch LSTM language model and the same weights as an ONNX graph that runs
onnxruntime's native `LSTM` operator (its fused CPU kernel: the recurrent matrix product and the
gate math of one step in one call per time step, inside the operator).

The graph is written with `onnx.helper` from the torch weights rather than by torch.onnx.export:
the result is the same single LSTM node per layer (the legacy exporter emits exactly that), but
names, state inputs and dynamic axes are ours, and no exporter version can change what we measure.
`check_parity` compares it with torch once per run.

Graph I/O (batch-first, like the QRNN bundle graphs):
    tokens [B, T] int64, h_state_{l} [1, B, H], c_state_{l} [1, B, H]
    -> logits [B, T, V], h_state_{l}_out [1, B, H], c_state_{l}_out [1, B, H]
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from qrnn_deploy.errors import VerificationError

LSTM_OPSET = 17


class LSTMLanguageModel(nn.Module):
    """tokens [B, T] -> logits [B, T, V]: embedding -> nn.LSTM stack (batch-first) -> linear.

    `forward(tokens, state)` with state = (h [L, B, H], c [L, B, H]) or None; returns (logits, state).
    """

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.out = nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor, state=None):
        y, state = self.lstm(self.embed(tokens), state)
        return self.out(y), state


def _reorder_gates(w: np.ndarray, H: int) -> np.ndarray:
    # torch packs the 4H gate rows as [i, f, g, o]; ONNX LSTM wants [i, o, f, c].
    i, f, g, o = (w[k * H:(k + 1) * H] for k in range(4))
    return np.concatenate([i, o, f, g], 0)


def lstm_to_onnx(model: LSTMLanguageModel) -> onnx.ModelProto:
    """The ONNX graph of `model` (see the module docstring for its inputs and outputs)."""
    lstm = model.lstm
    H, L = lstm.hidden_size, lstm.num_layers
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    inits = [numpy_helper.from_array(sd["embed.weight"], "embed_weight"),
             numpy_helper.from_array(np.ascontiguousarray(sd["out.weight"].T), "out_weight_t"),
             numpy_helper.from_array(sd["out.bias"], "out_bias")]
    nodes = [helper.make_node("Transpose", ["tokens"], ["tokens_tb"], perm=[1, 0]),
             helper.make_node("Gather", ["embed_weight", "tokens_tb"], ["x_0"], axis=0)]
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["B", "T"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", "T", sd["out.bias"].shape[0]])]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis_1"))
    for l in range(L):
        W = _reorder_gates(sd[f"lstm.weight_ih_l{l}"], H)[None]
        R = _reorder_gates(sd[f"lstm.weight_hh_l{l}"], H)[None]
        Bias = np.concatenate([_reorder_gates(sd[f"lstm.bias_ih_l{l}"], H),
                               _reorder_gates(sd[f"lstm.bias_hh_l{l}"], H)])[None]
        inits += [numpy_helper.from_array(W, f"W_{l}"), numpy_helper.from_array(R, f"R_{l}"),
                  numpy_helper.from_array(Bias, f"B_{l}")]
        for s in ("h", "c"):
            inputs.append(helper.make_tensor_value_info(f"{s}_state_{l}", TensorProto.FLOAT, [1, "B", H]))
            outputs.append(helper.make_tensor_value_info(f"{s}_state_{l}_out", TensorProto.FLOAT, [1, "B", H]))
        # X [T, B, d] (layout 0: onnxruntime's CPU kernel does not take batch-first LSTM input).
        nodes.append(helper.make_node("LSTM", [f"x_{l}", f"W_{l}", f"R_{l}", f"B_{l}", "", f"h_state_{l}",
                                               f"c_state_{l}"],
                                      [f"y_{l}", f"h_state_{l}_out", f"c_state_{l}_out"], hidden_size=H))
        nodes.append(helper.make_node("Squeeze", [f"y_{l}", "axis_1"], [f"x_{l + 1}"]))
    nodes += [helper.make_node("Transpose", [f"x_{L}"], ["y_bt"], perm=[1, 0, 2]),
              helper.make_node("MatMul", ["y_bt", "out_weight_t"], ["logits_nobias"]),
              helper.make_node("Add", ["logits_nobias", "out_bias"], ["logits"])]
    graph = helper.make_graph(nodes, "lstm_lm", inputs, outputs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", LSTM_OPSET)], producer_name="qrnn-deploy-bench")
    m.ir_version = helper.find_min_ir_version_for(list(m.opset_import))
    onnx.checker.check_model(m)
    return m


def zero_state_feeds(num_layers: int, batch: int, hidden: int) -> dict:
    """The LSTM graph's zero state inputs for a batch of `batch` streams."""
    z = np.zeros((1, batch, hidden), np.float32)
    return {f"{s}_state_{l}": z for l in range(num_layers) for s in ("h", "c")}


def check_parity(model: LSTMLanguageModel, session, tokens: np.ndarray, atol: float = 1e-4) -> float:
    """Runs the ONNX LSTM graph and torch on `tokens` [B, T], whole and as two chunks with the carried
    state; returns the max abs difference; raises VerificationError beyond `atol`."""
    L, H = model.lstm.num_layers, model.lstm.hidden_size
    B, T = tokens.shape
    with torch.inference_mode():
        ref, _ = model(torch.from_numpy(tokens))
    ref = ref.numpy()
    names = [o.name for o in session.get_outputs()]
    whole = session.run(["logits"], {"tokens": tokens, **zero_state_feeds(L, B, H)})[0]
    cut = max(1, T // 2)
    outs = dict(zip(names, session.run(None, {"tokens": tokens[:, :cut], **zero_state_feeds(L, B, H)})))
    feeds = {k[:-4]: v for k, v in outs.items() if k.endswith("_out")}
    second = session.run(["logits"], {"tokens": tokens[:, cut:], **feeds})[0] if cut < T else ref[:, :0]
    chunked = np.concatenate([outs["logits"], second], 1)
    diff = max(float(np.abs(whole - ref).max()), float(np.abs(chunked - ref).max()))
    if not diff <= atol:
        raise VerificationError(f"the ONNX LSTM baseline disagrees with torch.nn.LSTM by {diff:.2e} "
                                f"(> {atol:.0e}); the benchmark's baseline would be wrong")
    return diff
