"""Hand-derived expectations, third round of mutation testing: the native CPU kernel, export
(the reference FoPool, schema shape inference, TensorRT attributes and profiles, Triton configs,
export options), the command line's option checks and the figures the benchmark publishes.
Every test here failed on a small deliberate bug (a mutant) that the rest of the suite let
through (first round: test_hand_derived.py)."""


import numpy as np
import onnx
import pytest
import torch

from qrnn_deploy.vocab import EOS, CharVocab


# -- the native CPU kernel: never writes outside its outputs ------------------------------------------

@pytest.mark.parametrize("B", [255, 256, 257])
def test_kernel_writes_nothing_past_h_and_c_last_at_the_block_size(B):
    """Items are processed in blocks of 256 (one item = one batch row here, H <= 256): a range of
    255, 256 or 257 items must end exactly at its last item. Guard bands of NaN after h and
    c_last must survive the call, and the outputs match the C ABI's own contract (reference)."""
    import ctypes

    from qrnn_deploy.nn import _cpu_kernels
    from qrnn_deploy.nn.fo_pool import fo_pool_ref

    lib = _cpu_kernels._load()
    if lib is None:
        pytest.skip(f"libqrnn_kernels.so not available: {_cpu_kernels.unavailable_reason()}")
    T, H, P, guard = 2, 4, 3, 3 * 256 * 4
    g = torch.Generator().manual_seed(0)
    gates = torch.zeros(T * B * P * H + guard)
    gates[:T * B * P * H] = torch.randn(T * B * P * H, generator=g)
    h = torch.full((T * B * H + guard,), float("nan"))
    c_last = torch.full((B * H + guard,), float("nan"))
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
    for batch_first in (0, 1):
        h.fill_(float("nan"))
        c_last.fill_(float("nan"))
        rc = lib.qrnn_fo_pool_forward_f32(ptr(gates), None, ptr(h), ptr(c_last), T, B, H, P, batch_first, 0, 1)
        assert rc == 0
        assert torch.isnan(h[T * B * H:]).all() and torch.isnan(c_last[B * H:]).all()
        shape = (B, T, P * H) if batch_first else (T, B, P * H)
        h_ref, c_ref = fo_pool_ref(gates[:T * B * P * H].view(shape).double(), None, "fo", bool(batch_first), False)
        torch.testing.assert_close(h[:T * B * H].view(h_ref.shape), h_ref.float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c_last[:B * H].view(B, H), c_ref.float(), rtol=1e-6, atol=1e-6)


# -- export: the numpy FoPool of the reference evaluator ------------------------------------------------

def test_reference_fo_pool_keeps_float16_and_takes_an_empty_c0_as_absent():
    from qrnn_deploy.export.reference import fo_pool_numpy

    gates = np.zeros((2, 1, 3), np.float16)  # 'fo', H = 1: z = tanh 0 = 0, f = o = 1/2
    h, c = fo_pool_numpy(gates, np.array([[4.0]], np.float16), "fo")
    assert h.dtype == c.dtype == np.float16
    # c_1 = 4/2 = 2, c_2 = 1; h = c / 2
    np.testing.assert_array_equal(h[:, 0, 0], np.array([1.0, 0.5], np.float16))
    np.testing.assert_array_equal(c, np.array([[1.0]], np.float16))
    # An empty c0 (an optional input given as a 0-size tensor) is the zero state.
    h0, c0 = fo_pool_numpy(gates.astype(np.float32) + 1, np.zeros((0,), np.float32), "f")
    h1, c1 = fo_pool_numpy(gates.astype(np.float32) + 1, None, "f")
    np.testing.assert_array_equal(h0, h1)
    np.testing.assert_array_equal(c0, c1)


# -- export: shape inference of the registered qrnn::FoPool schema --------------------------------------

def _infer_fo_pool(gates_shape, **attrs):
    from onnx import TensorProto, helper

    from qrnn_deploy.export.schema import register_fo_pool_schema

    register_fo_pool_schema()
    node = helper.make_node("FoPool", ["gates"], ["h", "c_last"], domain="qrnn", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("gates", TensorProto.FLOAT, gates_shape)],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h", "c_last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("qrnn", 1)])
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in inferred.graph.output}


def test_schema_infers_h_and_c_last_by_layout_and_default_pooling():
    # No pooling attribute: 'fo', P = 3, so [5, 2, 12] -> H = 4.
    assert _infer_fo_pool([5, 2, 12]) == {"h": [5, 2, 4], "c_last": [2, 4]}
    # batch_first: B is axis 0.
    assert _infer_fo_pool(["B", "T", 12], pooling="ifo", batch_first=1) == {"h": ["B", "T", 3], "c_last": ["B", 3]}
    assert _infer_fo_pool([7, 2, 12], pooling="f", batch_first=1) == {"h": [7, 2, 6], "c_last": [7, 6]}


@pytest.mark.parametrize("shape,pooling,needle", [([5, 2, 10], "fo", "is not 3\\*H"), ([5, 2, 12, 6], "fo", "rank 4"),
                                                  ([5, 12], "f", "rank 2")])
def test_schema_refuses_gates_that_are_not_rank_3_p_times_h(shape, pooling, needle):
    with pytest.raises(Exception, match=needle):
        _infer_fo_pool(shape, pooling=pooling)


# -- export: TensorRT plugin attributes in subgraphs --------------------------------------------------

def test_add_plugin_attrs_reaches_fo_pool_nodes_inside_subgraphs():
    from onnx import TensorProto, helper

    from qrnn_deploy.export.tensorrt_nodes import PLUGIN_ATTRS, add_plugin_attrs

    fo = lambda name: helper.make_node("FoPool", ["g"], [name], domain="qrnn", pooling="fo")  # noqa: E731
    out = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    then = helper.make_graph([fo("a")], "then", [], [out("a")])
    other = helper.make_graph([fo("b")], "else", [], [out("b")])
    top = helper.make_graph([fo("top"), helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
                            "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out("y")])
    model = helper.make_model(top)
    assert add_plugin_attrs(model) == 3
    nested = [model.graph.node[1].attribute[i].g.node[0] for i in range(2)]
    for node in [model.graph.node[0], *nested]:
        attrs = {a.name: a.s.decode() for a in node.attribute if a.name in PLUGIN_ATTRS}
        assert attrs == PLUGIN_ATTRS


# -- export: Triton configs and TensorRT profiles -------------------------------------------------------

def test_triton_dims_need_the_batch_axis_first_and_max_batch_size_at_least_1():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export import triton

    assert triton._dims(["B", "T", 4], "x") == [-1, 4]
    with pytest.raises(ExportError, match="batch-first"):
        triton._dims(["T", "B", 4], "x")
    with pytest.raises(ExportError, match="max_batch_size"):
        triton.model_config(None, "lm", "qrnn_lm", max_batch_size=0)


@pytest.fixture(scope="module")
def portable_seq2seq_bundle(tmp_path_factory):
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import QRNNSeq2Seq

    torch.manual_seed(0)
    model = QRNNSeq2Seq(12, 14, embed_size=8, hidden_size=8, num_layers=1, encoder_window=2, decoder_window=1)
    out = tmp_path_factory.mktemp("s2s") / "bundle"
    export_bundle(model, out, fo_pool="portable", verify=False)
    return out


def test_triton_portable_bundle_never_names_the_op_library(portable_seq2seq_bundle, tmp_path):
    from qrnn_deploy.export.triton import write_model_repository

    for cfg in write_model_repository(portable_seq2seq_bundle, tmp_path / "repo", op_library="/opt/libqrnn_ort.so"):
        assert "model_operations" not in cfg.read_text() and "libqrnn_ort" not in cfg.read_text()


def test_triton_refuses_engines_if_any_graph_used_the_plugin_library(tmp_path):
    from qrnn_deploy.bundle import EngineSpec, load_manifest
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.export.triton import write_model_repository
    from qrnn_deploy.nn import QRNNSeq2Seq

    torch.manual_seed(0)
    model = QRNNSeq2Seq(12, 14, embed_size=8, hidden_size=8, num_layers=1, encoder_window=2, decoder_window=1)
    b = tmp_path / "b"
    export_bundle(model, b, fo_pool="custom", verify=False)
    man = load_manifest(b)
    for role, plugin in (("encoder", "aot"), ("decoder", "library")):
        (b / f"{role}.plan").write_bytes(b"engine")
        man.engines[role] = EngineSpec(file=f"{role}.plan", precision="fp32", plugin=plugin, profiles=[])
    man.write(b)
    with pytest.raises(ExportError, match="--plugin aot"):
        write_model_repository(b, tmp_path / "repo", backend="tensorrt")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("config.pbtxt"))


def test_engine_profile_source_length_opt_is_64_or_the_max():
    from types import SimpleNamespace as NS

    from qrnn_deploy.export.tensorrt_engine import engine_profiles

    man = NS(graphs={"encoder": NS(inputs=[NS(name="memory", shape=["B", "S", 4])], states=[])})
    (chunk,) = engine_profiles(man, "encoder", max_batch=3, max_chunk=8, max_source=256)
    assert chunk["shapes"]["memory"] == {"min": [1, 1, 4], "opt": [3, 64, 4], "max": [3, 256, 4]}
    (chunk,) = engine_profiles(man, "encoder", max_batch=3, max_chunk=8, max_source=50)
    assert chunk["shapes"]["memory"]["opt"] == [3, 50, 4]


def test_export_opset_range_is_checked_at_both_ends():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import MIN_OPSET, _check_opset

    newest = onnx.defs.onnx_opset_version()
    assert _check_opset(MIN_OPSET) == MIN_OPSET and _check_opset(newest) == newest
    for bad in (MIN_OPSET - 1, newest + 1):
        with pytest.raises(ExportError, match="opset"):
            _check_opset(bad)


# -- export: option checks and metadata -------------------------------------------------------------

def test_export_option_checks_at_their_boundaries(tmp_path):
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import _check_options

    ok = dict(out_dir=tmp_path, tol=1e-4, quantized_tol=0.1, quantize_block=128, verify_engine="auto", node_attrs=None)
    _check_options(**dict(ok, tol=0, quantized_tol=0.0))  # exact agreement may be asked for
    _check_options(**dict(ok, quantize_block=16))
    for bad in (dict(tol=-1e-9), dict(quantize_block=8), dict(quantize_block=48), dict(quantize_block=0),
                dict(node_attrs={"plugin_version": 1})):
        with pytest.raises(ExportError):
            _check_options(**dict(ok, **bad))


def test_export_vocabulary_may_fill_but_not_exceed_the_model_vocabulary():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import resolve_vocab
    from qrnn_deploy.nn import QRNNLanguageModel

    model = QRNNLanguageModel(8, 4, 4, 1)
    specials = CharVocab.build([""]).symbols  # the 4 special symbols
    assert len(specials) == 4
    fits = CharVocab(specials + list("abcd"))  # 8 symbols for vocab_size 8
    assert resolve_vocab(model, fits)["symbols"] == fits.symbols
    with pytest.raises(ExportError, match="9 symbols"):
        resolve_vocab(model, CharVocab(specials + list("abcde")))


def test_quantized_export_records_the_sizes_of_the_quantized_files(tmp_path):
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import QRNNLanguageModel

    torch.manual_seed(0)
    man = export_bundle(QRNNLanguageModel(40, 32, 32, 1), tmp_path / "b", fo_pool="portable", verify=False,
                        quantize="int8", quantize_block=16)
    sizes = man.metadata["sizes"]
    assert sizes == {"lm": (tmp_path / "b" / "lm.onnx").stat().st_size}


def test_export_vocabulary_pair_of_three_is_one_export_error():
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.export.exporter import resolve_vocab
    from qrnn_deploy.nn import QRNNSeq2Seq

    model = QRNNSeq2Seq(12, 14, embed_size=4, hidden_size=4, num_layers=1)
    v = CharVocab.build(["abc"])
    assert set(resolve_vocab(model, (v, v))) == {"src", "tgt"}
    with pytest.raises(ExportError, match="got 3 entries"):
        resolve_vocab(model, (v, v, v))


# -- benchmark: the figures a report publishes ----------------------------------------------------------

def _enc(impl, family, ms, window=1, macs=300, H=32):
    return {"section": "encode", "impl": impl, "family": family, "H": H, "window": window, "B": 2, "T": 8, "ms": ms,
            "macs_per_token": macs}


def _lat(impl, family, p50, window=1, H=32):
    return {"section": "stream_latency", "impl": impl, "family": family, "H": H, "window": window, "B": 1, "T": 1,
            "ms": p50, "p50_ms": p50, "p99_ms": 2 * p50}


def _bench_result(recs):
    from qrnn_deploy.benchmark.suite import BenchResult, preset

    return BenchResult(preset("smoke", 1), {}, {"ort_gemm_gflops": 10.0}, recs)


def test_report_matmul_share_only_for_bundles_and_never_negative():
    from qrnn_deploy.benchmark import report

    recs = report.derive(_bench_result([
        _enc("lstm-ort", "lstm", 10.0, window=None, macs=800), _enc("qrnn-custom", "qrnn", 1.15),
        _enc("qrnn-matmuls", "floor", 1.0, macs=None), _enc("qrnn-torch", "qrnn", 5.0),
        _enc("qrnn-custom", "qrnn", 2.0, H=64), _enc("qrnn-matmuls", "floor", 2.5, macs=None, H=64),
        _enc("lstm-ort", "lstm", 10.0, window=None, macs=800, H=64)]))
    by = {(r["impl"], r["H"]): r for r in recs}
    assert by["qrnn-custom", 32]["outside_matmul_share"] == pytest.approx(0.15 / 1.15)
    # Matrix products timed slower than the whole graph (noise): the share outside them is 0, not < 0.
    assert by["qrnn-custom", 64]["outside_matmul_share"] == 0.0
    assert by["qrnn-custom", 64]["time_over_matmuls"] == pytest.approx(0.8)
    # PyTorch's QRNN is not the exported graph whose matrix products were timed.
    assert "time_over_matmuls" not in by["qrnn-torch", 32] and "matmul_ms" not in by["qrnn-torch", 32]
    # 1.15 / 1.0 is exactly the target: met.
    t = report.targets(recs)["encode_within_15pct_of_matmuls"]
    assert by["qrnn-custom", 32]["time_over_matmuls"] == 1.15 and (t["met"], t["total"]) == (2, 2)


def test_report_targets_pick_the_custom_bundle_the_best_lstm_and_the_same_window():
    from qrnn_deploy.benchmark import report

    recs = report.derive(_bench_result([
        _enc("lstm-ort", "lstm", 10.0, window=None, macs=800), _enc("lstm-torch", "lstm", 4.0, window=None, macs=800),
        _enc("qrnn-portable", "qrnn", 1.0), _enc("qrnn-custom", "qrnn", 2.0),
        _lat("qrnn-custom", "qrnn", 0.1, window=1), _lat("qrnn-custom", "qrnn", 0.1, window=2),
        _lat("qrnn-torch", "qrnn", 0.15, window=1), _lat("qrnn-torch", "qrnn", 0.3, window=2)]))
    t = report.targets(recs)
    assert t["bundle"] == "qrnn-custom"  # preferred over the portable one when both ran
    mac = t["speedup_at_least_mac_ratio"]
    # 10 / 2 = 5x over lstm-ort >= 800 / 300; over the faster LSTM (4 ms) 2x < 8/3.
    assert (mac["met"], mac["total"], mac["vs_best_lstm_met"]) == (1, 1, 0)
    s = t["stream_latency_2x_below_torch"]
    assert [c["ratio"] for c in s["cases"]] == pytest.approx([1.5, 3.0])  # each against its own window
    assert (s["met"], s["total"]) == (1, 2)


def test_report_json_has_no_infinities():
    from qrnn_deploy.benchmark import report

    assert report._clean({"a": float("inf"), "b": [float("-inf"), float("nan"), 1.5], "c": "x"}) == \
        {"a": None, "b": [None, None, 1.5], "c": "x"}


def test_mac_counts_with_embedding_unlike_hidden_and_an_output_layer():
    from qrnn_deploy.benchmark.contenders import macs_per_token_lstm, macs_per_token_qrnn

    # E = 10, H = 4, V = 7. QRNN fo, windows [2, 1]: 3*4*2*10 + 3*4*1*4 + 4*7 = 240 + 48 + 28.
    assert macs_per_token_qrnn(10, 4, 2, [2, 1], 7) == 316
    # LSTM: 4*4*(10+4) + 4*4*(4+4) + 4*7 = 224 + 128 + 28.
    assert macs_per_token_lstm(10, 4, 2, 7) == 380


def test_interleaved_rounds_rotate_and_latency_blocks_run_at_least_two():
    from qrnn_deploy.benchmark.timing import interleaved, per_call_latency

    calls = []
    interleaved([lambda n=n: calls.append(n) for n in "abc"], rounds=3, warmup=0)
    assert "".join(calls) == "abc" + "bca" + "cab"
    lat = per_call_latency([lambda: None], tokens=3, blocks=5, warmup=0, budget_s=0.0)
    assert len(lat[0].samples) == 2 * 3


def test_floors_count_flops_and_bytes(monkeypatch):
    from qrnn_deploy.benchmark import floors
    from qrnn_deploy.benchmark.timing import Timing

    monkeypatch.setattr(floors, "interleaved", lambda fns, rounds: [Timing([0.5, 0.25])])
    # 2 n^3 flops in the best time; a copy reads and writes every byte.
    assert floors.numpy_gemm_gflops(n=8, repeat=1) == pytest.approx(2 * 8 ** 3 / 0.25 / 1e9)
    assert floors.copy_bandwidth_gbs(mbytes=1, repeat=1) == pytest.approx(2 * (1 << 20) / 0.25 / 1e9)


def test_matmul_weights_of_a_gemm_with_trans_b_are_k_by_n():
    from onnx import TensorProto, helper, numpy_helper

    from qrnn_deploy.benchmark import floors

    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # [N = 3, K = 4], used transposed
    b = np.ones(3, np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    ((got_w, got_b),) = floors.matmul_weights(helper.make_model(g))
    np.testing.assert_array_equal(got_w, w.T)
    np.testing.assert_array_equal(got_b, b)


def test_suite_tokens_per_second_and_floors_kept_at_their_best(monkeypatch):
    import numpy as np

    from qrnn_deploy.benchmark import suite
    from qrnn_deploy.benchmark.contenders import Contender
    from qrnn_deploy.benchmark.suite import BenchResult, preset

    cfg = preset("smoke", 1, rounds=2, min_rounds=2)
    res = BenchResult(cfg, {}, {})
    lstm = [Contender("lstm-ort", "lstm", lambda tokens: (lambda: None), None)]
    suite._encode_case(cfg, 8, 3, 5, lstm, [], res, np.random.default_rng(0))
    (r,) = res.records
    assert r["tokens_per_s"] * r["ms"] / 1e3 == pytest.approx(3 * 5)  # B * T tokens per call

    runs = iter([{"numpy_gemm_gflops": 1.0, "copy_gbs": 9.0, "ort_gemm_gflops": 5.0, "gemm_n": 8},
                 {"numpy_gemm_gflops": 2.0, "copy_gbs": 3.0, "ort_gemm_gflops": 4.0, "gemm_n": 8}])
    monkeypatch.setattr(suite, "_floors", lambda cfg: next(runs))
    out = suite.run_bench(preset("smoke", 1, hiddens=()), None)
    assert {k: out.floors[k] for k in ("numpy_gemm_gflops", "copy_gbs", "ort_gemm_gflops")} == \
        {"numpy_gemm_gflops": 2.0, "copy_gbs": 9.0, "ort_gemm_gflops": 5.0}
    assert out.floors["copy_gbs_start"] == 9.0 and out.floors["copy_gbs_end"] == 3.0


# -- command line: option checks at their boundaries ----------------------------------------------------

def _cli(capsys, *args):
    from qrnn_deploy.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_option_checks_at_their_boundaries():
    from qrnn_deploy.cli.options import check_at_most, check_length_penalty, check_positive
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.limits import LENGTH_PENALTY_RANGE

    check_at_most(100, "--n", 100)
    check_positive(1e-300, "--tol")
    lo, hi = LENGTH_PENALTY_RANGE
    check_length_penalty(lo)
    check_length_penalty(hi)
    for bad in (float("inf"), float("nan"), 0.0):
        with pytest.raises(ConfigError, match="--tol"):
            check_positive(bad, "--tol")
    with pytest.raises(ConfigError, match="<= 100"):
        check_at_most(101, "--n", 100)


def test_export_cli_refuses_small_blocks_and_int8_for_tensorrt(capsys, tmp_path):
    ckpt = tmp_path / "none.safetensors"  # the options are checked before the checkpoint is read
    for args, needle in (((ckpt, "-o", tmp_path / "b", "--quantize", "int8", "--quantize-block", "8"), "--quantize-block"),
                         ((ckpt, "-o", tmp_path / "b", "--quantize", "int8", "--tensorrt"), "--tensorrt")):
        code, _, err = _cli(capsys, "export", *args)
        assert code == 2 and err.startswith("error: ") and needle in err, err


def test_verify_samples_at_most_100000(capsys, tmp_path):
    code, _, err = _cli(capsys, "verify", tmp_path / "nobundle", "--samples", 100_001)
    assert code == 2 and "--samples must be <= 100000" in err, err


def test_verify_random_inputs_hold_no_special_symbols():
    from qrnn_deploy.cli.verify import random_inputs

    xs = random_inputs(200, EOS + 3, seed=0)
    assert len(xs) == 200 and all(3 <= len(x) <= 12 for x in xs)
    assert {t for x in xs for t in x} == {EOS + 1, EOS + 2}
    assert random_inputs(5, EOS + 1, seed=0) == []


def test_serve_cli_max_beam_defaults_to_the_beam_and_may_equal_it(monkeypatch, capsys):
    from qrnn_deploy import serve as serve_pkg

    got = []
    monkeypatch.setattr(serve_pkg, "run_server", lambda bundle, cfg, **kw: got.append(cfg))
    from qrnn_deploy.cli import main

    for args, want in ((["--beam", "12"], 12), (["--beam", "3"], 8), (["--beam", "5", "--max-beam", "5"], 5)):
        with pytest.raises(SystemExit) as e:
            main(["serve", "nobundle", *args])
        assert e.value.code == 0 and got[-1].max_beam == want
