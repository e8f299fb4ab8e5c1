"""The floors: what this machine can do at best, measured in the same run as the contenders.

- GEMM rate: GFLOP/s of one large float32 matrix product (numpy and onnxruntime's MatMul).
- Copy bandwidth: GB/s of a large array copy (bytes read + bytes written).
- Matrix-product time of a graph: a graph holding only the MatMul (+ bias Add) nodes of an
  exported graph, with the same weights and input shapes, run by the same onnxruntime settings.
  A QRNN's time minus that is what its pooling, windows and graph overhead cost.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qrnn_deploy.benchmark.timing import interleaved


def numpy_gemm_gflops(n: int = 1024, repeat: int = 5) -> float:
    """Best GFLOP/s of an n x n x n float32 numpy matmul (2 n^3 flops)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    out = np.empty((n, n), np.float32)
    (t,) = interleaved([lambda: np.matmul(a, b, out=out)], rounds=repeat)
    return 2 * n ** 3 / t.best / 1e9


def ort_gemm_gflops(make_session, n: int = 1024, repeat: int = 5) -> float:
    """Best GFLOP/s of onnxruntime's MatMul, [n, n] input times an [n, n] weight."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, n), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])], [w])
    sess = make_session(_model(g))
    a = rng.standard_normal((n, n), np.float32)
    (t,) = interleaved([lambda: sess.run(None, {"a": a})], rounds=repeat)
    return 2 * n ** 3 / t.best / 1e9


def copy_bandwidth_gbs(mbytes: int = 64, repeat: int = 5) -> float:
    """Best GB/s of copying a `mbytes` MB float32 array (counts bytes read plus bytes written)."""
    n = mbytes * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    (t,) = interleaved([lambda: np.copyto(dst, src)], rounds=repeat)
    return 2 * src.nbytes / t.best / 1e9


def _model(graph) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="qrnn-deploy-bench")
    m.ir_version = helper.find_min_ir_version_for(list(m.opset_import))
    return m


def matmul_weights(model: onnx.ModelProto) -> list:
    """[(weight [K, N] float32, bias [N] or None)] of every MatMul / Gemm with a constant weight,
    in graph order (the projections whose time is the floor of a QRNN graph)."""
    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            bias = None
            nxt = consumers.get(node.output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Add":
                other = [n for n in nxt[0].input if n != node.output[0]]
                if other and other[0] in inits:
                    bias = numpy_helper.to_array(inits[other[0]])
            if w.ndim == 2:
                out.append((w, bias))
        elif node.op_type == "Gemm" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            w = w.T if trans_b else w
            bias = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
            out.append((w, bias))
    return out


def matmul_only_graph(weights: list) -> onnx.ModelProto:
    """A graph with one input x_i [B, T, K_i] per weight and only `MatMul(x_i, W_i) (+ b_i)` nodes."""
    nodes, inits, inputs, outputs = [], [], [], []
    for i, (w, b) in enumerate(weights):
        K, N = w.shape
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"w_{i}"))
        inputs.append(helper.make_tensor_value_info(f"x_{i}", TensorProto.FLOAT, ["B", "T", K]))
        outputs.append(helper.make_tensor_value_info(f"y_{i}", TensorProto.FLOAT, ["B", "T", N]))
        if b is None:
            nodes.append(helper.make_node("MatMul", [f"x_{i}", f"w_{i}"], [f"y_{i}"]))
        else:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"b_{i}"))
            nodes.append(helper.make_node("MatMul", [f"x_{i}", f"w_{i}"], [f"p_{i}"]))
            nodes.append(helper.make_node("Add", [f"p_{i}", f"b_{i}"], [f"y_{i}"]))
    return _model(helper.make_graph(nodes, "matmuls_only", inputs, outputs, inits))


def matmul_only_feeds(weights: list, batch: int, steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {f"x_{i}": rng.standard_normal((batch, steps, w.shape[0]), np.float32) for i, (w, _) in enumerate(weights)}


def host_load() -> float:
    """The 1-minute load average (how busy the machine was), or NaN where unknown."""
    try:
        import os
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
