"""ONNX export: every model type x {custom, portable} x windows {1, 2, 6} x poolings x dense.

Parity with PyTorch (<= 1e-5) and chunked == whole go through qrnn_deploy.export.verify on
onnxruntime (custom-op graphs need the FoPool library; without it they run on the reference
evaluator with the numpy FoPool, and the onnxruntime half is skipped). Portable graphs also run on
onnx.reference.ReferenceEvaluator.
"""

import json

import numpy as np
import onnx
import pytest
import torch

from qrnn_deploy.bundle import load_manifest
from qrnn_deploy.errors import BundleError, ExportError, VerificationError
from qrnn_deploy.export import export_bundle, model_graphs, verify_graphs
from qrnn_deploy.export.reference import fo_pool_numpy
from qrnn_deploy.export.schema import register_fo_pool_schema
from qrnn_deploy.nn import QRNNClassifier, QRNNLanguageModel, QRNNSeq2Seq, fo_pool_ref
from qrnn_deploy.vocab import CharVocab

TOL = 1e-5
POOLINGS = ["f", "fo", "ifo"]
VARIANTS = ["custom", "portable"]


def _custom_ort_available() -> bool:
    try:
        from qrnn_deploy._native import ort_library_path

        return ort_library_path() is not None
    except Exception:
        return False


HAVE_LIB = _custom_ort_available()


def lm(pooling, dense, seed=0, **kw):
    torch.manual_seed(seed)
    return QRNNLanguageModel(13, 6, 5, 3, window=[1, 2, 6], pooling=pooling, dense=dense, **kw).eval()


def classifier(pooling, dense, seed=0):
    torch.manual_seed(seed)
    return QRNNClassifier(13, 6, 5, 3, 3, window=[6, 1, 2], pooling=pooling, dense=dense).eval()


def seq2seq(pooling, attn_window, seed=0):
    torch.manual_seed(seed)
    return QRNNSeq2Seq(11, 13, embed_size=6, hidden_size=5, num_layers=3, encoder_window=[6, 2, 1],
                       decoder_window=[2, 1, attn_window], pooling=pooling).eval()


def _check_figures(v):
    assert v["max_abs_error"] <= TOL and v["max_chunked_vs_whole"] <= TOL, v
    assert v["cases"] >= 5


def _roundtrip(model, variant, tmp_path):
    """Export with verification; check the graphs and the onnxruntime/reference figures."""
    engine = "onnxruntime" if variant == "portable" or HAVE_LIB else "reference"
    man = export_bundle(model, tmp_path, fo_pool=variant, tol=TOL, verify_engine=engine)
    _check_figures(man.metadata["verification"])
    got = man.metadata["verification"]["engine"]
    assert got == "onnxruntime" if engine == "onnxruntime" else got.startswith("onnx.reference")
    if variant == "custom":
        register_fo_pool_schema()
    for role, g in man.graphs.items():
        proto = onnx.load(str(tmp_path / g.file))
        onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        domains = {n.domain for n in proto.graph.node}
        assert domains == ({"", "qrnn"} if variant == "custom" else {""})
    return man


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dense", [False, True])
def test_language_model(variant, pooling, dense, tmp_path):
    man = _roundtrip(lm(pooling, dense), variant, tmp_path)
    g = man.graphs["lm"]
    assert [t.name for t in g.inputs] == ["tokens"] and [t.name for t in g.outputs] == ["logits"]
    assert [s.name for s in g.states] == ["c_state_0", "conv_state_1", "c_state_1", "conv_state_2", "c_state_2"]
    d1 = 6 + 5 if dense else 5
    assert next(s for s in g.states if s.name == "conv_state_2").shape == ["B", 5, d1 + (5 if dense else 0)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("dense", [False, True])
def test_classifier(variant, pooling, dense, tmp_path):
    man = _roundtrip(classifier(pooling, dense), variant, tmp_path)
    assert man.graphs["classifier"].outputs[0].shape == ["B", 3]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("attn_window", [1, 6])
def test_seq2seq(variant, pooling, attn_window, tmp_path):
    man = _roundtrip(seq2seq(pooling, attn_window), variant, tmp_path)
    enc, dec = man.graphs["encoder"], man.graphs["decoder"]
    assert [t.name for t in enc.outputs] == ["memory", "cond_0", "cond_1", "cond_2"]
    assert [t.name for t in dec.inputs] == ["tgt", "memory", "memory_mask", "cond_0", "cond_1", "cond_2"]
    assert dec.inputs[1].shape == ["B", "S", 5]


def test_ifo_attention_query_ignores_the_conditioning_of_the_output_gate(tmp_path):
    """Custom 'ifo': the attention query is c_t, so the FoPool node's O block must be +30 with
    its conditioning zeroed too. A large cond on the O rows (V_l's scaled up) would otherwise
    close it."""
    m = seq2seq("ifo", 2)
    H = m.config.hidden_size
    with torch.no_grad():
        m.cond_proj[-1].weight[2 * H:3 * H].mul_(4000)  # rows of o: [Z | F | O | I]
    # cond ~1e3 costs float32 digits in the o projection: 3e-5 here; an O gate fed the cond: 0.1.
    man = export_bundle(m, tmp_path, fo_pool="custom", tol=1e-3,
                        verify_engine="onnxruntime" if HAVE_LIB else "reference")
    assert man.metadata["verification"]["max_abs_error"] <= 1e-3


def test_tied_weights_stored_once(tmp_path):
    torch.manual_seed(0)
    m = QRNNLanguageModel(13, 5, 5, 2, window=[2, 1], tie_weights=True).eval()
    man = _roundtrip(m, "portable", tmp_path)
    proto = onnx.load(str(tmp_path / man.graphs["lm"].file))
    big = [i for i in proto.graph.initializer if np.prod(i.dims) == 13 * 5]
    assert len(big) == 1


@pytest.mark.parametrize("pooling", POOLINGS)
def test_portable_on_reference_evaluator(pooling, tmp_path):
    for model in (lm(pooling, True), classifier(pooling, False), seq2seq(pooling, 2)):
        out = tmp_path / model.model_type
        man = export_bundle(model, out, fo_pool="portable", verify=False)
        paths = {r: out / g.file for r, g in man.graphs.items()}
        v = verify_graphs(model, paths, man.graphs, "portable", tol=TOL, engine="reference")
        assert v["engine"].startswith("onnx.reference")
        _check_figures(v)


def test_custom_graphs_on_reference_evaluator(tmp_path):
    """The numpy FoPool lets custom-op graphs run without the native library (verify's fallback)."""
    model = seq2seq("ifo", 6)
    man = export_bundle(model, tmp_path, fo_pool="custom", verify=False)
    paths = {r: tmp_path / g.file for r, g in man.graphs.items()}
    _check_figures(verify_graphs(model, paths, man.graphs, "custom", tol=TOL, engine="reference"))


def test_failed_verification_leaves_the_old_bundle_untouched(tmp_path, monkeypatch):
    from qrnn_deploy.export import exporter

    model = lm("fo", False)
    export_bundle(model, tmp_path, fo_pool="portable", verify=False)
    assert (tmp_path / "manifest.json").exists()

    def broken(*args, **kw):
        graphs = model_graphs(*args, **kw)
        proto, _ = graphs["lm"]
        w = next(i for i in proto.graph.initializer if i.name.startswith("out_bias"))
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) + 0.01, w.name))
        return graphs

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(exporter, "model_graphs", broken)
    with pytest.raises(VerificationError):
        export_bundle(model, tmp_path, fo_pool="portable")
    # The failed export changed nothing: the old bundle is whole (its manifest still describes
    # its own graphs) and no staging directory is left beside it.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert [p.name for p in tmp_path.parent.iterdir() if p.name.startswith(f".{tmp_path.name}.")] == []


def test_custom_graph_structure():
    """One FoPool per layer, fed straight from MatMul + Add, no Split / activations around it."""
    m = lm("ifo", False)
    proto, _ = model_graphs(m, "custom", 17)["lm"]
    nodes = list(proto.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    pools = [n for n in nodes if n.op_type == "FoPool"]
    assert len(pools) == 3
    for n in pools:
        assert n.domain == "qrnn"
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"pooling": b"ifo", "batch_first": 1, "reverse": 0}
        add = producer[n.input[0]]
        assert add.op_type == "Add" and producer[add.input[0]].op_type == "MatMul"
    assert not {"Split", "Sigmoid", "Tanh", "Scan", "Loop", "If"} & {n.op_type for n in nodes}

    dec, _ = model_graphs(seq2seq("fo", 2), "custom", 17)["decoder"]
    attn_pool = [n for n in dec.graph.node if n.op_type == "FoPool"][-1]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attn_pool.attribute}
    assert attrs["pooling"] == b"f"  # 'fo' attention pools [Z|F]; o comes from its own MatMul


def test_portable_one_step_needs_no_loop():
    proto, _ = model_graphs(lm("fo", False), "portable", 17)["lm"]
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    assert len(ifs) == 3
    for n in ifs:
        then = onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "then_branch"))
        assert not {"Scan", "Loop"} & {m.op_type for m in then.node}
        els = onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "else_branch"))
        assert "Scan" in {m.op_type for m in els.node}


def test_shape_inference_on_custom_graph():
    register_fo_pool_schema()
    proto, _ = model_graphs(lm("fo", True), "custom", 17)["lm"]
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    h = [n for n in proto.graph.node if n.op_type == "FoPool"][0].output[0]
    assert shapes[h] == ["B", "T", 5]
    assert shapes["c_state_0_out"] == ["B", 5]

    bad = onnx.ModelProto()
    bad.CopyFrom(proto)
    pool = next(n for n in bad.graph.node if n.op_type == "FoPool")
    next(a for a in pool.attribute if a.name == "pooling").s = b"xo"
    with pytest.raises(Exception, match="pooling"):
        onnx.shape_inference.infer_shapes(bad, strict_mode=True)


def test_numpy_fo_pool_matches_reference():
    torch.manual_seed(0)
    for pooling, P in (("f", 2), ("fo", 3), ("ifo", 4)):
        g = torch.randn(4, 2, P * 3) * 3
        c0 = torch.randn(2, 3)
        for reverse in (0, 1):
            h, c = fo_pool_ref(g, c0, pooling, reverse=bool(reverse))
            h2, c2 = fo_pool_numpy(g.numpy(), c0.numpy(), pooling, 0, reverse)
            np.testing.assert_allclose(h2, h.numpy(), atol=1e-6)
            np.testing.assert_allclose(c2, c.numpy(), atol=1e-6)


def test_verification_catches_a_wrong_graph(tmp_path):
    m = lm("fo", False)
    man = export_bundle(m, tmp_path, fo_pool="portable", verify=False)
    path = tmp_path / man.graphs["lm"].file
    proto = onnx.load(str(path))
    w = next(i for i in proto.graph.initializer if i.name.startswith("layer1_bias"))
    arr = onnx.numpy_helper.to_array(w).copy()
    arr[0] += 1e-3
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save_model(proto, str(path))
    with pytest.raises(VerificationError, match="exceeds the tolerance"):
        verify_graphs(m, {"lm": path}, man.graphs, "portable")


def test_manifest_contents_and_vocab(tmp_path):
    vocab = CharVocab.build(["hello world"])
    m = lm("fo", False)
    export_bundle(m, tmp_path, fo_pool="custom", vocab=vocab, verify=False)
    man = load_manifest(tmp_path)
    assert man.model_type == "language_model" and man.fo_pool == "custom" and man.opset == 17
    assert man.custom_op == {"domain": "qrnn", "op_type": "FoPool", "version": 1}
    assert man.vocab["symbols"] == vocab.symbols
    assert man.special_tokens == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert man.config["window"] == [1, 2, 6] and "verification" not in man.metadata
    assert man.metadata["sizes"]["lm"] == (tmp_path / "lm.onnx").stat().st_size

    # From model.extra, and a src/tgt pair for seq2seq.
    s = seq2seq("fo", 1)
    s.extra = {"src_vocab": CharVocab.build(["abc"]).to_json(), "tgt_vocab": vocab.to_json()}
    man = export_bundle(s, tmp_path / "s", fo_pool="portable", verify=False)
    assert man.vocab["tgt"]["symbols"] == vocab.symbols and len(man.vocab["src"]["symbols"]) == 7

    with pytest.raises(ExportError, match="symbols"):
        export_bundle(m, tmp_path / "v", vocab=CharVocab.build(["abcdefghijklmnop"]), verify=False)


def test_manifest_version_is_checked(tmp_path):
    export_bundle(lm("f", False), tmp_path, fo_pool="portable", verify=False)
    path = tmp_path / "manifest.json"
    d = json.loads(path.read_text())
    d["format_version"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(BundleError, match="version 99 is not supported"):
        load_manifest(tmp_path)
    d["format_version"] = 1
    del d["graphs"]["lm"]["inputs"]
    path.write_text(json.dumps(d))
    with pytest.raises(BundleError, match="malformed"):
        load_manifest(tmp_path)


def test_unsupported_configurations(tmp_path):
    torch.manual_seed(0)
    bi = QRNNClassifier(13, 4, 4, 1, 2, bidirectional=True)
    with pytest.raises(ExportError, match="bidirectional"):
        export_bundle(bi, tmp_path / "bi")
    assert not (tmp_path / "bi" / "manifest.json").exists()
    with pytest.raises(ExportError, match="fo_pool"):
        export_bundle(lm("fo", False), tmp_path / "x", fo_pool="fast")
    with pytest.raises(ExportError, match="opset"):
        export_bundle(lm("fo", False), tmp_path / "x", opset=7)
    with pytest.raises(ExportError, match="not a qrnn_deploy.nn model"):
        export_bundle(torch.nn.Linear(2, 2), tmp_path / "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ExportError, match="not a directory"):
        export_bundle(lm("fo", False), tmp_path / "file")


@pytest.mark.parametrize("opset", [13, 20])
def test_other_opsets(opset, tmp_path):
    man = export_bundle(lm("ifo", True), tmp_path, fo_pool="portable", opset=opset, tol=TOL)
    _check_figures(man.metadata["verification"])
    assert onnx.load(str(tmp_path / "lm.onnx")).opset_import[0].version == opset


def test_half_precision_model_is_left_alone(tmp_path):
    m = classifier("fo", True).half()
    man = export_bundle(m, tmp_path, fo_pool="portable", verify=False)
    assert next(m.parameters()).dtype == torch.float16
    proto = onnx.load(str(tmp_path / man.graphs["classifier"].file))
    assert {i.data_type for i in proto.graph.initializer if i.name.startswith("layer")} == {onnx.TensorProto.FLOAT}


@pytest.mark.skipif(not HAVE_LIB, reason="FoPool onnxruntime custom-op library not built")
def test_custom_variant_equals_portable_on_onnxruntime(tmp_path):
    from qrnn_deploy.export.verify import ort_runner

    m = seq2seq("ifo", 2)
    outs = {}
    for variant in VARIANTS:
        man = export_bundle(m, tmp_path / variant, fo_pool=variant, verify=False)
        run = ort_runner(tmp_path / variant / "decoder.onnx", variant == "custom")
        rng = np.random.default_rng(0)
        feeds = {"tgt": rng.integers(0, 13, (2, 4)), "memory": rng.standard_normal((2, 3, 5)).astype(np.float32),
                 "memory_mask": np.array([[1, 1, 1], [1, 0, 0]], np.float32)}
        feeds.update({f"cond_{l}": rng.standard_normal((2, 20)).astype(np.float32) for l in range(3)})
        for s in man.graphs["decoder"].states:
            feeds[s.name] = rng.standard_normal([2 if d == "B" else d for d in s.shape]).astype(np.float32)
        outs[variant] = run(feeds)
    for k in outs["custom"]:
        np.testing.assert_allclose(outs["custom"][k], outs["portable"][k], atol=1e-5)


def test_unloadable_graph_is_an_export_error(tmp_path):
    m = lm("fo", False)
    man = export_bundle(m, tmp_path, fo_pool="portable", verify=False)
    (tmp_path / "lm.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ExportError, match="onnxruntime cannot load"):
        verify_graphs(m, {"lm": tmp_path / "lm.onnx"}, man.graphs, "portable")
