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


# -- quantized bundles -------------------------------------------------------------------------------

from qrnn_deploy.export import export_bundle  # noqa: E402
from qrnn_deploy.runtime import load_bundle  # noqa: E402
from qrnn_deploy.vocab import CharVocab  # noqa: E402

VOCAB = CharVocab.build(["abcdefghijklmnop "])
SOURCES = ["abc def gh", "hello", "a", "pop mop", "ijkl mnop abc", "dead beef"]
MAX_LEN = 25


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """(model, float32 bundle, int8 bundle, int8 manifest) of one small random translator."""
    from translators import random_translator

    model = random_translator(len(VOCAB), len(VOCAB), 0)
    root = tmp_path_factory.mktemp("quant")
    export_bundle(model, root / "f32", fo_pool="custom", verify=False, vocab=VOCAB)
    man = export_bundle(model, root / "int8", fo_pool="custom", vocab=VOCAB, quantize="int8", quantize_block=32)
    return model, root / "f32", root / "int8", man


def test_quantized_bundle_manifest_and_graphs(bundles):
    _, f32, q8, man = bundles
    q = man.metadata["quantization"]
    assert q["scheme"] == "int8-block" and q["block_size"] == 32 and q["accuracy_level"] == 4
    for role in ("encoder", "decoder"):
        done, total = q["graphs"][role]["matmuls"]
        assert done >= 2 and total >= done
        proto = onnx.load(str(q8 / f"{role}.onnx"))
        ops = [n.op_type for n in proto.graph.node]
        assert ops.count("MatMulNBits") == done
        inits = {t.name for t in proto.graph.initializer}
        for n in proto.graph.node:  # no float weight matrix is left behind a MatMul
            if n.op_type == "MatMul":
                assert n.input[1] not in inits or min(
                    next(t for t in proto.graph.initializer if t.name == n.input[1]).dims) < 16
        assert (q8 / f"{role}.onnx").stat().st_size < (f32 / f"{role}.onnx").stat().st_size
    v = man.metadata["verification_quantized"]
    assert v["engine"] == "onnxruntime" and v["stream_tolerance"] == v["tolerance"]  # int8: one-row calls round apart
    assert v["max_chunked_vs_whole"] <= 1e-4 * 50
    assert man.metadata["verification"]["tolerance"] == 1e-4  # the float graphs were checked first


def test_quantized_bundle_is_close_to_float_and_streams(bundles):
    _, f32, q8, _ = bundles
    tf, tq = (load_bundle(b, threads=1).translator() for b in (f32, q8))
    for s in SOURCES:
        a, b = tf.stream(), tq.stream()
        a.feed(s)
        b.feed(s)
        ma, mb = a.memory, b.memory
        assert np.abs(ma - mb).max() <= 0.05 * max(1.0, np.abs(ma).max())
        # Fed in pieces, the quantized encoder gives the same memory and the same translation.
        c = tq.stream()
        for i in range(0, len(s), 3):
            c.feed(s[i:i + 3])
        np.testing.assert_allclose(c.memory, mb, rtol=0, atol=1e-4 * max(1.0, np.abs(mb).max()))
        d = c.decoder(max_len=MAX_LEN)
        toks = [t for _ in range(MAX_LEN) if not d.done for t in tq.decode_batch().step([d])[0]]
        assert toks == tq.translate_ids(s, max_len=MAX_LEN)


def test_quantized_batches_of_two_or_more_give_the_same_tokens(bundles):
    """int8 rows are independent for batches of two rows or more (onnxruntime's one-row kernel
    rounds differently in the last bits), so any batch of >= 2 decoders gives the same tokens."""
    tq = load_bundle(bundles[2], threads=1).translator()

    def decoders():
        out = []
        for s in SOURCES:
            st = tq.stream()
            st.feed(s)
            out.append(st.decoder(max_len=MAX_LEN))
        return out

    def run_all(groups):
        got = {}
        for group in groups:
            ds = decoders()
            batch = tq.decode_batch()
            picked = [ds[i] for i in group]
            toks = {i: [] for i in group}
            while not all(d.done for d in picked):
                for i, new in zip(group, batch.step(picked)):
                    toks[i] += new
            got.update(toks)
        return [got[i] for i in range(len(SOURCES))]

    together = run_all([list(range(len(SOURCES)))])
    assert run_all([[0, 1], [2, 3], [4, 5]]) == together
    assert run_all([[5, 3, 1], [0, 2, 4]]) == together
    assert len({tuple(t) for t in together}) >= 3  # the model's outputs vary


def test_cli_export_quantize_and_info(tmp_path, capsys):
    from qrnn_deploy.cli import main
    from qrnn_deploy.nn import save_checkpoint
    from translators import random_translator

    ckpt = save_checkpoint(random_translator(len(VOCAB), len(VOCAB), 4), tmp_path / "t.safetensors",
                           extra={"vocab": VOCAB.to_json()})

    def cli(*args):
        with pytest.raises(SystemExit) as e:
            main([str(a) for a in args])
        out = capsys.readouterr()
        return e.value.code, out.out, out.err

    code, out, err = cli("export", ckpt, "-o", tmp_path / "b", "--quantize", "int8", "--quantize-block", 32)
    assert code == 0, err
    assert "quantized: int8-block, blocks of 32" in out and "quantized graphs verified" in out
    code, out, _ = cli("info", tmp_path / "b")
    assert code == 0 and "weights     int8-block, blocks of 32" in out
    assert "matrix products int8: weights" in out and "int8 check  " in out and "{" not in out, out
    code, out, err = cli("translate", tmp_path / "b", "abc def")
    assert code == 0 and out.count("\n") == 1, err
    for args, needle in [(("--quantize", "int4"), "--quantize must be 'int8'"),
                         (("--quantize", "int8", "--quantize-block", 48), "power of two"),
                         (("--quantize", "int8", "--tensorrt"), "do not go together")]:
        code, _, err = cli("export", ckpt, "-o", tmp_path / "c", *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "c").exists()  # refused before anything was written
    code, _, err = cli("build-engine", tmp_path / "b")
    assert code == 2 and "quantized" in err and err.count("\n") == 1


def test_unnamed_matmuls_sharing_a_weight_get_distinct_names():
    """Both replacements of two unnamed MatMuls reading one weight were named `w_q8`: onnxruntime
    refused the model (two nodes with the same name). Bundles name every node, other graphs may not."""
    w = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y1"]), helper.make_node("MatMul", ["x", "w"], ["y2"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 32])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 16]) for n in ("y1", "y2")],
                          [numpy_helper.from_array(w, "w")])
    q, _ = quantize_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), block_size=16)
    assert len({n.name for n in q.graph.node}) == 2
    x = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    y1, y2 = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(y1, x @ w, atol=0.05 * np.abs(x @ w).max())
