"""Streaming ONNX graphs of the qrnn_deploy.nn models, written from their weights.

Each function mirrors the PyTorch forward pass of a chunk with carried states (DESIGN.md
section 3) and returns the ONNX model plus its manifest entry (qrnn_deploy.bundle.GraphSpec with
`file` left empty). Names and shapes are the bundle contract of qrnn_deploy/bundle.py; layer
indices l count from 0.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import torch

from qrnn_deploy.bundle import GraphSpec, StateSpec, TensorSpec
from qrnn_deploy.errors import ExportError
from qrnn_deploy.export.builder import INT64_MAX, GraphBuilder, make_model
from qrnn_deploy.export.nodes import emit_fo_pool
from qrnn_deploy.export.schema import FO_POOL_DOMAIN, FO_POOL_VERSION, register_fo_pool_schema

# sigmoid(30) rounds to exactly 1.0f (1 - 9.4e-14), so an O block of constant +30 makes FoPool's
# h_t = o_t * c_t return c_t bit for bit: the attention layer's query is the pre-output-gate cell.
OPEN_GATE = 30.0


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


class _Graph:
    """A GraphBuilder plus the manifest view of its inputs, outputs and states."""

    def __init__(self, role: str, variant: str, node_attrs: Optional[dict] = None):
        self.b = GraphBuilder(role)
        self.variant = variant
        self.node_attrs = node_attrs
        self.spec = GraphSpec(file="", inputs=[], outputs=[], states=[])
        self._state_outputs: list = []  # (name, shape), added after the regular outputs

    def input(self, name: str, dtype: str, shape: list) -> str:
        self.spec.inputs.append(TensorSpec(name, list(shape), dtype))
        return self.b.add_input(name, dtype, shape)

    def output(self, name: str, dtype: str, shape: list) -> None:
        self.spec.outputs.append(TensorSpec(name, list(shape), dtype))
        self.b.add_output(name, dtype, shape)

    def state(self, name: str, shape: list) -> tuple[str, str]:
        """A carried state: graph input `name`, graph output `name_out`. Returns both names."""
        out = f"{name}_out"
        self.spec.states.append(StateSpec(name, out, list(shape), "float32"))
        self.b.add_input(name, "float32", shape)
        self._state_outputs.append((out, shape))
        return name, out

    def finish(self, opset: int, doc: str) -> tuple[onnx.ModelProto, GraphSpec]:
        for name, shape in self._state_outputs:
            self.b.add_output(name, "float32", shape)
        domains = [(FO_POOL_DOMAIN, FO_POOL_VERSION)] if self.variant == "custom" else []
        if self.variant == "custom":
            register_fo_pool_schema()
        return make_model(self.b.graph(), opset, domains, doc), self.spec


# ----------------------------------------------------------------------------------------------
# One QRNN layer.


def _window(g: _Graph, x: str, layer, l: int) -> str:
    """The causal window [x_{t-k+1}; ...; x_t] (oldest first) [B, Tc, k*d]; adds conv_state_l."""
    k, d = layer.window, layer.input_size
    if k == 1:
        return x
    conv_in, conv_out = g.state(f"conv_state_{l}", ["B", k - 1, d])
    b = g.b
    xp = b.node("Concat", [conv_in, x], axis=1)  # [B, k-1+Tc, d]
    axis = b.const([1])
    # Slice j covers xp[:, j : j+Tc]; its end counted from the back avoids reading Tc. The
    # newest tap (j = k-1) is x itself: no Slice (each small node costs a few us per step).
    slices = [b.node("Slice", [xp, b.const([j]), b.const([j - (k - 1)]), axis]) for j in range(k - 1)] + [x]
    b.node("Slice", [xp, b.const([-(k - 1)]), b.const([INT64_MAX]), axis], [conv_out])
    return b.node("Concat", slices, axis=2)


def _projection(g: _Graph, win: str, weight: np.ndarray, bias: np.ndarray, cond: Optional[str],
                hint: str) -> str:
    """gates = win @ weight^T + bias (+ cond [B, rows] broadcast over time): MatMul + one Add."""
    b = g.b
    mm = b.node("MatMul", [win, b.weight(f"{hint}_weight_t", weight.T)])
    bias_name = b.weight(f"{hint}_bias", bias)
    if cond is not None:
        # Folding the bias into cond first keeps a single [B, Tc, P*H] Add before FoPool.
        bias_name = b.node("Unsqueeze", [b.node("Add", [cond, bias_name]), b.const([1])])
    return b.node("Add", [mm, bias_name])


def _cond_rows(g: _Graph, cond: Optional[str], rows: np.ndarray, total: int) -> Optional[str]:
    if cond is None or (len(rows) == total and np.array_equal(rows, np.arange(total))):
        return cond
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        # A contiguous block: Slice is a copy, where onnxruntime's Gather on axis 1 walks
        # element by element (40 us of a 0.7 ms decoder step at B=32, measured).
        return g.b.node("Slice", [cond, g.b.const([int(rows[0])]), g.b.const([int(rows[0]) + len(rows)]),
                                  g.b.const([1])])
    return g.b.node("Gather", [cond, g.b.const(rows)], axis=1)


def qrnn_layer(g: _Graph, x: str, layer, l: int, cond: Optional[str] = None,
               y_name: Optional[str] = None) -> str:
    """One causal QRNNLayer on x [B, Tc, d]: window, projection (+ cond), FoPool. Returns y [B, Tc, H]."""
    if getattr(layer, "reverse", False):
        raise ExportError("a reverse (backward-direction) QRNN layer cannot stream, so it cannot be exported")
    win = _window(g, x, layer, l)
    c_in, c_out = g.state(f"c_state_{l}", ["B", layer.hidden_size])
    gates = _projection(g, win, _np(layer.conv.weight), _np(layer.conv.bias), cond, f"layer{l}")
    h, _ = emit_fo_pool(g.b, gates, c_in, layer.pooling, layer.hidden_size, g.variant, h_out=y_name,
                        c_out=c_out, node_attrs=g.node_attrs)
    return h


def attention_layer(g: _Graph, x: str, layer, l: int, cond: Optional[str], memory: str, memory_mask: str,
                    y_name: Optional[str] = None) -> str:
    """The seq2seq AttentionQRNNLayer: c_t from FoPool BEFORE the output gate, masked softmax
    attention over memory with c_t as the query, h_t = o_t * (W_k k_t + b_k + W_c c_t)."""
    b, H, P = g.b, layer.hidden_size, layer.num_gates
    win = _window(g, x, layer, l)
    c_in, c_out = g.state(f"c_state_{l}", ["B", H])
    W, bias = _np(layer.conv.weight), _np(layer.conv.bias)
    rows = np.arange(P * H)
    zf, o_rows, i_rows = rows[:2 * H], rows[2 * H:3 * H], rows[3 * H:]
    output_gate = True
    if layer.pooling == "f":
        sel, pooling = rows, "f"
    elif layer.pooling == "fo":
        sel, pooling = zf, "f"
    elif g.variant == "custom":
        # 'ifo': the node's O block is a constant +30 (weights and cond zeroed) so h == c exactly.
        sel, pooling = rows, "ifo"
        W, bias = W.copy(), bias.copy()
        W[o_rows] = 0.0
        bias[o_rows] = OPEN_GATE
        if cond is not None:
            keep = np.ones(P * H, np.float32)
            keep[o_rows] = 0.0
            cond_open = b.node("Mul", [cond, b.const(keep, np.float32)])
    else:
        sel, pooling, output_gate = np.concatenate([zf, i_rows]), "ifo", False
    if layer.pooling == "ifo" and g.variant == "custom":
        cell_cond = cond_open if cond is not None else None
    else:
        cell_cond = _cond_rows(g, cond, sel, P * H)
    gates = _projection(g, win, W[sel], bias[sel], cell_cond, f"layer{l}")
    c, _ = emit_fo_pool(b, gates, c_in, pooling, H, g.variant, c_out=c_out, output_gate=output_gate,
                        node_attrs=g.node_attrs)

    mem_t = b.node("Transpose", [memory], perm=[0, 2, 1])  # [B, H, S]
    scores = b.node("MatMul", [c, mem_t])  # [B, Tc, S]
    real = b.node("Unsqueeze", [b.node("Cast", [memory_mask], to=onnx.TensorProto.BOOL), b.const([1])])
    scores = b.node("Where", [real, scores, b.const(-np.inf, np.float32)])
    alpha = b.node("Softmax", [scores], axis=-1)
    k = b.node("MatMul", [alpha, memory])  # [B, Tc, H]
    hk = b.node("Add", [b.node("MatMul", [k, b.weight(f"layer{l}_attn_k_t", _np(layer.attn_k.weight).T)]),
                        b.weight(f"layer{l}_attn_k_bias", _np(layer.attn_k.bias))])
    h = [hk, b.node("MatMul", [c, b.weight(f"layer{l}_attn_c_t", _np(layer.attn_c.weight).T)])]
    if layer.pooling == "f":
        return b.node("Add", h, [y_name] if y_name else 1)
    o_pre = _projection(g, win, _np(layer.conv.weight)[o_rows], _np(layer.conv.bias)[o_rows],
                        _cond_rows(g, cond, o_rows, P * H), f"layer{l}_o")
    return b.node("Mul", [b.node("Sigmoid", [o_pre]), b.node("Add", h)], [y_name] if y_name else 1)


def _linear(g: _Graph, x: str, linear: torch.nn.Linear, hint: str, out: Optional[str] = None,
            tied: Optional[str] = None) -> str:
    """x @ W^T + b. `tied`: W is that [V, E] initializer (stored once; Transpose folds at load)."""
    b = g.b
    w_t = b.node("Transpose", [tied], perm=[1, 0]) if tied else b.weight(f"{hint}_weight_t", _np(linear.weight).T)
    return b.node("Add", [b.node("MatMul", [x, w_t]), b.weight(f"{hint}_bias", _np(linear.bias))],
                  [out] if out else 1)


def _stack(g: _Graph, x: str, qrnn) -> str:
    """The QRNN stack of an LM / classifier (dense: each layer's input concatenated to its output)."""
    if qrnn.bidirectional:
        raise ExportError("a bidirectional QRNN stack cannot stream (its backward direction needs the "
                          "whole sequence), so it cannot be exported as a streaming graph; retrain with "
                          "bidirectional=False")
    inp = x
    for l, layer in enumerate(qrnn.layers):
        y = qrnn_layer(g, inp, layer, l)
        inp = g.b.node("Concat", [inp, y], axis=2) if qrnn.dense else y
    return inp


# ----------------------------------------------------------------------------------------------
# Whole models.


def lm_graph(model, variant: str, opset: int, node_attrs: Optional[dict] = None):
    """QRNNLanguageModel -> graph "lm": tokens [B, T] -> logits [B, T, V] (+ states)."""
    g = _Graph("lm", variant, node_attrs)
    cfg = model.config
    tokens = g.input("tokens", "int64", ["B", "T"])
    embed = g.b.weight("embed_weight", _np(model.embed.weight))
    x = g.b.node("Gather", [embed, tokens], axis=0)
    y = _stack(g, x, model.qrnn)
    _linear(g, y, model.out, "out", "logits", tied=embed if cfg.tie_weights else None)
    g.output("logits", "float32", ["B", "T", cfg.vocab_size])
    return g.finish(opset, "qrnn-deploy language model (streaming)")


def classifier_graph(model, variant: str, opset: int, node_attrs: Optional[dict] = None):
    """QRNNClassifier -> graph "classifier": tokens [B, T] -> logits [B, C] of the chunk's last step."""
    g = _Graph("classifier", variant, node_attrs)
    cfg = model.config
    tokens = g.input("tokens", "int64", ["B", "T"])
    x = g.b.node("Gather", [g.b.weight("embed_weight", _np(model.embed.weight)), tokens], axis=0)
    y = _stack(g, x, model.qrnn)
    last = g.b.node("Gather", [y, g.b.const(-1)], axis=1)  # [B, D]
    _linear(g, last, model.out, "out", "logits")
    g.output("logits", "float32", ["B", cfg.num_classes])
    return g.finish(opset, "qrnn-deploy classifier (streaming; logits after the chunk's last step)")


def encoder_graph(model, variant: str, opset: int, node_attrs: Optional[dict] = None):
    """QRNNSeq2Seq encoder -> graph "encoder": src [B, T] -> memory [B, T, H], cond_{l} [B, P*H]."""
    g = _Graph("encoder", variant, node_attrs)
    cfg = model.config
    H, L = cfg.hidden_size, cfg.num_layers
    PH = model.cond_proj[0].out_features
    src = g.input("src", "int64", ["B", "T"])
    x = g.b.node("Gather", [g.b.weight("src_embed_weight", _np(model.src_embed.weight)), src], axis=0)
    g.output("memory", "float32", ["B", "T", H])
    for l, layer in enumerate(model.encoder):
        x = qrnn_layer(g, x, layer, l, y_name="memory" if l == L - 1 else None)
        last = g.b.node("Gather", [x, g.b.const(-1)], axis=1)
        g.b.node("MatMul", [last, g.b.weight(f"cond_proj{l}_weight_t", _np(model.cond_proj[l].weight).T)],
                 [f"cond_{l}"])
        g.output(f"cond_{l}", "float32", ["B", PH])
    return g.finish(opset, "qrnn-deploy seq2seq encoder (streaming)")


def decoder_graph(model, variant: str, opset: int, node_attrs: Optional[dict] = None):
    """QRNNSeq2Seq decoder -> graph "decoder": tgt [B, T], memory [B, S, H], memory_mask [B, S],
    cond_{l} [B, P*H] -> logits [B, T, V]."""
    g = _Graph("decoder", variant, node_attrs)
    cfg = model.config
    H, L = cfg.hidden_size, cfg.num_layers
    PH = model.cond_proj[0].out_features
    tgt = g.input("tgt", "int64", ["B", "T"])
    memory = g.input("memory", "float32", ["B", "S", H])
    mask = g.input("memory_mask", "float32", ["B", "S"])
    conds = [g.input(f"cond_{l}", "float32", ["B", PH]) for l in range(L)]
    x = g.b.node("Gather", [g.b.weight("tgt_embed_weight", _np(model.tgt_embed.weight)), tgt], axis=0)
    for l, layer in enumerate(model.decoder):
        if l < L - 1:
            x = qrnn_layer(g, x, layer, l, conds[l])
        else:
            x = attention_layer(g, x, layer, l, conds[l], memory, mask)
    _linear(g, x, model.out, "out", "logits")
    g.output("logits", "float32", ["B", "T", cfg.tgt_vocab_size])
    return g.finish(opset, "qrnn-deploy seq2seq decoder (streaming, attention over the encoder memory)")


def model_graphs(model, variant: str, opset: int, node_attrs: Optional[dict] = None) -> dict:
    """role -> (onnx.ModelProto, GraphSpec) for any qrnn_deploy.nn model (bundle.MODEL_ROLES)."""
    kind = getattr(model, "model_type", None)
    if kind == "language_model":
        return {"lm": lm_graph(model, variant, opset, node_attrs)}
    if kind == "classifier":
        return {"classifier": classifier_graph(model, variant, opset, node_attrs)}
    if kind == "seq2seq":
        return {"encoder": encoder_graph(model, variant, opset, node_attrs),
                "decoder": decoder_graph(model, variant, opset, node_attrs)}
    raise ExportError(f"cannot export {type(model).__name__}: not a qrnn_deploy.nn model "
                      "(QRNNLanguageModel, QRNNClassifier or QRNNSeq2Seq)")
