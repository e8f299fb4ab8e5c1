"""int8 weight quantization of exported graphs (qrnn_deploy.export.quantize): packing against
onnxruntime's MatMulNBits, what is and is not quantized, and quantized bundles end to end."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qrnn_deploy.errors import ExportError
from qrnn_deploy.export.quantize import dequantize_weight, quantize_graph, quantize_weight


def _session(proto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _matmul_model(w: np.ndarray, extra_rhs: bool = False) -> onnx.ModelProto:
    K, N = w.shape
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", K])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", N])]
    if extra_rhs:  # a MatMul of two activations: nothing to quantize
        nodes.append(helper.make_node("MatMul", ["x", "v"], ["z"]))
        inputs.append(helper.make_tensor_value_info("v", TensorProto.FLOAT, [K, 3]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", "T", 3]))
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("K,N,bs", [(256, 96, 128), (100, 40, 32), (17, 16, 16), (384, 768, 64)])
def test_packing_round_trip(K, N, bs):
    rng = np.random.default_rng(K)
    w = (rng.standard_normal((K, N)) * rng.uniform(0.01, 3, (1, N))).astype(np.float32)
    w[:, 0] = 0.0  # an all-zero column keeps a usable scale
    q, s = quantize_weight(w, bs)
    nb = -(-K // bs)
    assert q.dtype == np.uint8 and q.shape == (N, nb, bs) and s.shape == (N, nb) and np.all(s > 0)
    back = dequantize_weight(q, s, K)
    assert back.shape == (K, N)
    # Round to nearest: every weight within half a step of its block's scale.
    step = np.repeat(s.T, bs, axis=0)[:K]
    assert np.all(np.abs(back - w) <= 0.5 * step + 1e-7)
    np.testing.assert_array_equal(back[:, 0], 0.0)


def test_matmulnbits_reads_our_layout():
    """accuracy_level 0 computes in float with the dequantized weights: it must equal numpy's
    product with dequantize_weight's matrix, so the layout and the zero point are right."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((200, 48)).astype(np.float32)
    q_model, rep = quantize_graph(_matmul_model(w), block_size=64, accuracy_level=0)
    assert [n.op_type for n in q_model.graph.node] == ["MatMulNBits"]
    assert [i.name for i in q_model.graph.initializer] == ["W@int8", "W@int8_scale"]  # the float copy is gone
    assert rep["matmuls"] == [1, 1] and rep["weight_bytes"][1] < rep["weight_bytes"][0] / 2.5
    x = rng.standard_normal((3, 5, 200)).astype(np.float32)
    y = _session(q_model).run(None, {"x": x})[0]
    ref = x @ dequantize_weight(*quantize_weight(w, 64), 200)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_int8_compute_is_close_and_rows_are_independent():
    """accuracy_level 4 (int8 activations per row and block): close to float, and a row's result
    does not depend on the other rows of a batch of two or more, nor on chunking along T."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((384, 256)).astype(np.float32)
    sess = _session(quantize_graph(_matmul_model(w))[0])
    x = (rng.standard_normal((8, 6, 384)) * rng.uniform(0.1, 10, (8, 1, 1))).astype(np.float32)
    y = sess.run(None, {"x": x})[0]
    ref = x @ w
    assert np.abs(y - ref).max() <= 0.02 * np.abs(ref).max()
    pairs = np.concatenate([sess.run(None, {"x": x[i:i + 2]})[0] for i in range(0, 8, 2)])
    np.testing.assert_array_equal(y, pairs)
    steps = np.concatenate([sess.run(None, {"x": x[:, t:t + 1]})[0] for t in range(6)], axis=1)
    np.testing.assert_array_equal(y, steps)


def test_only_weight_matmuls_are_quantized():
    rng = np.random.default_rng(2)
    model = _matmul_model(rng.standard_normal((64, 32)).astype(np.float32), extra_rhs=True)
    q_model, rep = quantize_graph(model)
    assert [n.op_type for n in q_model.graph.node] == ["MatMulNBits", "MatMul"] and rep["matmuls"] == [1, 2]
    small = _matmul_model(rng.standard_normal((8, 32)).astype(np.float32))  # K < 16: left float
    q_small, rep = quantize_graph(small)
    assert [n.op_type for n in q_small.graph.node] == ["MatMul"] and rep["matmuls"] == [0, 1]
    assert all(o.domain != "com.microsoft" for o in q_small.opset_import)
    with pytest.raises(ExportError, match="power of two"):
        quantize_graph(model, block_size=100)
    with pytest.raises(ExportError, match="accuracy_level"):
        quantize_graph(model, accuracy_level=7)
