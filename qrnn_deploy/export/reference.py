"""qrnn::FoPool for `onnx.reference.ReferenceEvaluator`: the DESIGN.md section 2 loop in numpy.

This lets custom-op graphs run without the native onnxruntime library (checks, tests, and
`verify` when the library is not built). It is the plain specification, not a fast path.
"""

from __future__ import annotations

import numpy as np
from onnx.reference.op_run import OpRun

from qrnn_deploy.export.schema import FO_POOL_DOMAIN, POOLING_GATES


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # Two-sided form: never overflows exp for large |x|.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def fo_pool_numpy(gates: np.ndarray, c0=None, pooling: str = "fo", batch_first: int = 0, reverse: int = 0):
    """gates [T, B, P*H] ([B, T, P*H] if batch_first), c0 [B, H] or None -> (h, c_last)."""
    P = POOLING_GATES[pooling]
    g = gates.astype(np.float32)
    if batch_first:
        g = g.transpose(1, 0, 2)
    T, B, PH = g.shape
    H = PH // P
    z = np.tanh(g[..., :H])
    f = _sigmoid(g[..., H:2 * H])
    c = np.zeros((B, H), np.float32) if c0 is None or c0.size == 0 and B > 0 else c0.astype(np.float32)
    h = np.empty((T, B, H), np.float32)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if pooling == "ifo":
            c = f[t] * c + _sigmoid(g[t, :, 3 * H:]) * z[t]
        else:
            c = f[t] * c + (1 - f[t]) * z[t]
        h[t] = c if pooling == "f" else _sigmoid(g[t, :, 2 * H:3 * H]) * c
    if batch_first:
        h = h.transpose(1, 0, 2)
    return h.astype(gates.dtype), c.astype(gates.dtype)


class FoPool(OpRun):
    op_domain = FO_POOL_DOMAIN

    # plugin_version / plugin_namespace (TensorRT's) change nothing here; the evaluator passes
    # every attribute the registered schema declares, so they must be accepted.
    def _run(self, gates, c0=None, pooling="fo", batch_first=0, reverse=0, plugin_version=None,
             plugin_namespace=None):
        pooling = pooling.decode() if isinstance(pooling, bytes) else pooling
        return fo_pool_numpy(gates, c0, pooling, batch_first, reverse)


def reference_evaluator(model):
    """A ReferenceEvaluator for `model` (ModelProto or path) that knows qrnn::FoPool."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model, new_ops=[FoPool])
