"""The one place where FoPool is written into a graph: as the custom op, or with standard ops.

`emit_fo_pool` is what every layer calls. The custom variant is a single `qrnn::FoPool` node (plus
any extra attributes a backend wants, e.g. TensorRT plugin fields: `node_attrs`). The portable
variant spells the same recurrence with standard ONNX operators:

    z, f, o, i = Split(gates);  z = Tanh, f/o/i = Sigmoid;  a = (1 - f) z  (or i z for 'ifo')
    If (Tc == 1):  c_1 = f c0 + a                          (no loop: one token costs a few ops)
    else:          Scan over t of c = f_t c + a_t
    h = o c  ('fo', 'ifo')   or  h = c  ('f')

Both run on stock onnxruntime and on onnx.reference.ReferenceEvaluator.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from qrnn_deploy.errors import ExportError
from qrnn_deploy.export.builder import GraphBuilder
from qrnn_deploy.export.schema import FO_POOL_DOMAIN, FO_POOL_OP, POOLING_GATES

VARIANTS = ("custom", "portable")


def emit_fo_pool(b: GraphBuilder, gates: str, c0: str, pooling: str, hidden: int, variant: str,
                 h_out: Optional[str] = None, c_out: Optional[str] = None, output_gate: bool = True,
                 node_attrs: Optional[dict] = None) -> tuple[str, str]:
    """Writes FoPool over batch-first pre-activation `gates` [B, Tc, P*H] with `c0` [B, H].

    Returns the names of h [B, Tc, H] and c_last [B, H] (`h_out` / `c_out` when given).
    `output_gate=False` (portable only) reads 'ifo' gates packed [Z | F | I] and returns the cell
    states themselves (h = c): the attention layer's query. The custom variant gets the same
    effect from its caller (an O block of +30, see graphs.py), so its node stays the plain op.
    """
    if pooling not in POOLING_GATES:
        raise ExportError(f"unknown pooling {pooling!r}: use one of {sorted(POOLING_GATES)}")
    h_out = h_out or b.fresh("h")
    c_out = c_out or b.fresh("c_last")
    if variant == "custom":
        if not output_gate:
            raise ExportError("emit_fo_pool: the custom FoPool node always applies its output gate")
        b.node(FO_POOL_OP, [gates, c0], [h_out, c_out], domain=FO_POOL_DOMAIN, pooling=pooling,
               batch_first=1, reverse=0, **(node_attrs or {}))
        return h_out, c_out
    if variant == "portable":
        return _portable(b, gates, c0, pooling, hidden, h_out, c_out, output_gate)
    raise ExportError(f"fo_pool variant must be one of {VARIANTS}, got {variant!r}")


def _portable(b: GraphBuilder, gates: str, c0: str, pooling: str, H: int, h_out: str, c_out: str,
              output_gate: bool) -> tuple[str, str]:
    blocks = ["z", "f"] + (["o"] if pooling != "f" and output_gate else []) + (["i"] if pooling == "ifo" else [])
    parts = b.node("Split", [gates, b.const([H] * len(blocks))], len(blocks), axis=2)
    parts = dict(zip(blocks, parts if isinstance(parts, list) else [parts]))
    z = b.node("Tanh", [parts["z"]])
    f = b.node("Sigmoid", [parts["f"]])
    if pooling == "ifo":
        a = b.node("Mul", [b.node("Sigmoid", [parts["i"]]), z])
    else:
        a = b.node("Mul", [b.node("Sub", [b.const(1.0, np.float32), f]), z])

    # Tc == 1 (token-by-token decoding) takes the loop-free branch.
    steps = b.node("Gather", [b.node("Shape", [gates]), b.const(1)], axis=0)
    one_step = b.node("Equal", [steps, b.const(1)])
    cs, c_last = b.fresh("cells"), c_out

    then = b.sub("fo_pool_one_step")
    c1 = then.node("Add", [then.node("Mul", [f, then.node("Unsqueeze", [c0, then.const([1])])]), a])
    then.node("Squeeze", [c1, then.const([1])], [then.fresh("c_last")])
    then_c_last = then.nodes[-1].output[0]
    then.outputs = [_float(c1, [None, None, H]), _float(then_c_last, [None, H])]

    body = b.sub("fo_pool_step")
    c_prev, f_t, a_t = body.fresh("c_prev"), body.fresh("f_t"), body.fresh("a_t")
    c_next = body.node("Add", [body.node("Mul", [f_t, c_prev]), a_t])
    c_scan = body.node("Identity", [c_next])
    body.inputs = [_float(n, [None, H]) for n in (c_prev, f_t, a_t)]
    body.outputs = [_float(n, [None, H]) for n in (c_next, c_scan)]
    loop = b.sub("fo_pool_scan")
    # Scan over axis 0 of time-first copies: the reference evaluator only scans axis 0, and
    # onnxruntime transposes internally for other axes anyway.
    f_tm, a_tm = (loop.node("Transpose", [v], perm=[1, 0, 2]) for v in (f, a))
    loop_c_last, cs_tm = loop.node("Scan", [c0, f_tm, a_tm], 2, num_scan_inputs=2, body=body.graph())
    loop_cs = loop.node("Transpose", [cs_tm], perm=[1, 0, 2])
    loop.outputs = [_float(loop_cs, [None, None, H]), _float(loop_c_last, [None, H])]

    if pooling == "f" or not output_gate:
        cs = h_out
    b.node("If", [one_step], [cs, c_last], then_branch=then.graph(), else_branch=loop.graph())
    if pooling != "f" and output_gate:
        b.node("Mul", [b.node("Sigmoid", [parts["o"]]), cs], [h_out])
    return h_out, c_last


def _float(name: str, shape) -> onnx.ValueInfoProto:
    # Subgraph values need a rank for the checker; unknown dims stay unnamed.
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
