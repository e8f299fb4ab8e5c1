"""`qrnn-deploy verify BUNDLE [CHECKPOINT]` and `qrnn_deploy.export.verify_bundle`: a bundle
already written is checked against its checkpoint (graphs, then the runtime's greedy
translations), or alone (streaming); each kind of mismatch fails with exit status 1 and one line,
bad usage with 2."""

import numpy as np
import pytest
import torch

from qrnn_deploy.cli import main
from qrnn_deploy.errors import ConfigError, VerificationError
from qrnn_deploy.export import export_bundle, verify_bundle
from qrnn_deploy.nn import QRNNClassifier, QRNNLanguageModel, save_checkpoint
from qrnn_deploy.vocab import CharVocab
from translators import random_translator

VOCAB = CharVocab.build(["abcdefghijklmnop "])
# Texts the random translators answer with varied, non-empty translations (random symbol strings
# mostly get an immediate </s> from them).
SOURCES = ["abc def gh", "hello", "pop mop", "ijkl mnop abc", "dead beef", "ponm lkji hgfe"]
TEXTS = [a for s in SOURCES for a in ("--text", s)]


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _variant() -> str:
    """The custom-op variant where the FoPool library is built (the runtime needs it), else portable."""
    try:
        from qrnn_deploy import _native

        _native.ort_library_path()
        return "custom"
    except Exception:
        return "portable"


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory):
    """(bundle dir, checkpoint path, model) of a random translator with a vocabulary."""
    d = tmp_path_factory.mktemp("verify")
    model = random_translator(len(VOCAB), len(VOCAB), seed=0)
    ckpt = save_checkpoint(model, d / "s2s.safetensors", extra={"src_vocab": VOCAB.to_json(),
                                                                 "tgt_vocab": VOCAB.to_json()})
    export_bundle(model, d / "bundle", fo_pool=_variant(), verify=False, vocab=VOCAB)  # shared: the same as the pair
    return d / "bundle", ckpt, model


def test_seq2seq_bundle_against_its_checkpoint(seq2seq, capsys):
    bundle, ckpt, _ = seq2seq
    code, out, err = run_cli(capsys, "verify", str(bundle), str(ckpt))
    assert code == 0, err
    assert "same model type, config and vocabulary" in out
    assert "max |onnx - torch|" in out and "max |chunked - whole|" in out
    assert "end to end  8 of 8 greedy translations identical" in out and out.rstrip().endswith("OK")
    code, out, err = run_cli(capsys, "verify", str(bundle), str(ckpt), *TEXTS)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("end to end"))
    assert line.startswith(f"end to end  {len(SOURCES)} of {len(SOURCES)} greedy translations identical")
    assert int(line.split(", ")[1].split()[0]) >= 3 * len(SOURCES)  # real translations were compared


def test_without_checkpoint_only_streaming_is_checked(seq2seq, capsys):
    bundle, _, _ = seq2seq
    code, out, err = run_cli(capsys, "verify", str(bundle))
    assert code == 0, err
    assert "not compared with PyTorch" in out and "max |onnx - torch|" not in out
    r = verify_bundle(bundle)
    assert r["compared_with_model"] is False and r["max_abs_error"] is None and r["cases"] == 4
    assert 0 <= r["max_chunked_vs_whole"] <= 1e-4


def test_another_model_with_the_same_config_fails(seq2seq, tmp_path, capsys):
    bundle, _, _ = seq2seq
    other = random_translator(len(VOCAB), len(VOCAB), seed=1)
    ckpt = save_checkpoint(other, tmp_path / "other.safetensors", extra={"src_vocab": VOCAB.to_json(),
                                                                         "tgt_vocab": VOCAB.to_json()})
    code, out, err = run_cli(capsys, "verify", str(bundle), str(ckpt))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("verification failed: ") and "does not match the model" in err and "OK" not in out
    # With a tolerance that lets any graph pass, the translations still tell the models apart.
    code, out, err = run_cli(capsys, "verify", str(bundle), str(ckpt), "--tol", "1e9", *TEXTS)
    assert code == 1 and "greedy translations differ" in err and "first difference: input" in out


def test_checkpoint_of_another_config_or_vocabulary_fails(seq2seq, tmp_path, capsys):
    bundle, _, _ = seq2seq
    wide = random_translator(len(VOCAB), len(VOCAB), seed=0, hidden_size=16)
    ckpt = save_checkpoint(wide, tmp_path / "wide.safetensors")
    code, _, err = run_cli(capsys, "verify", str(bundle), str(ckpt))
    assert code == 1 and "config differs" in err and "hidden_size: bundle 32, checkpoint 16" in err
    _, _, model = seq2seq
    other_vocab = CharVocab.build(["abcdefghijklmnoq "])  # as many symbols, one other
    ckpt = save_checkpoint(model, tmp_path / "vocab.safetensors", extra={"src_vocab": other_vocab.to_json(),
                                                                         "tgt_vocab": other_vocab.to_json()})
    code, _, err = run_cli(capsys, "verify", str(bundle), str(ckpt))
    assert code == 1 and "vocabulary differs" in err
    lm = QRNNLanguageModel(len(VOCAB), 6, 5, 1)
    code, _, err = run_cli(capsys, "verify", str(bundle), str(save_checkpoint(lm, tmp_path / "lm.safetensors")))
    assert code == 1 and "language_model model, the bundle a seq2seq" in err


def test_a_broken_graph_file_fails(seq2seq, tmp_path, capsys):
    import shutil

    bundle, _, _ = seq2seq
    shutil.copytree(bundle, tmp_path / "b")
    data = (bundle / "decoder.onnx").read_bytes()
    (tmp_path / "b" / "decoder.onnx").write_bytes(data[:len(data) // 2])
    code, _, err = run_cli(capsys, "verify", str(tmp_path / "b"))
    assert code == 1 and "verification failed: onnxruntime cannot load the bundle's graphs" in err


def test_a_graph_that_drops_its_state_fails_the_streaming_check(seq2seq, monkeypatch):
    """Without a checkpoint the check still catches a graph whose state outputs are wrong (here
    zeroed), which is what a runtime carrying state between chunks relies on."""
    import qrnn_deploy.export.verify as v

    real = v.make_runners

    def stateless(paths, variant, engine="auto"):
        runs, name = real(paths, variant, engine)
        wrap = lambda run: (lambda feeds: {k: (np.zeros_like(x) if k.endswith("_out") else x)  # noqa: E731
                                           for k, x in run(feeds).items()})
        return {r: wrap(run) for r, run in runs.items()}, name

    bundle, _, _ = seq2seq
    monkeypatch.setattr(v, "make_runners", stateless)
    with pytest.raises(VerificationError, match="chunked .* vs whole"):
        verify_bundle(bundle)


@pytest.mark.parametrize("kind", ["lm", "classifier"])
def test_language_model_and_classifier_bundles(kind, tmp_path, capsys):
    torch.manual_seed(0)
    if kind == "lm":
        m = QRNNLanguageModel(12, 6, 5, 2, window=[2, 1], pooling="fo", dense=True)
    else:
        m = QRNNClassifier(12, 6, 5, 2, 3, window=2)
    ckpt = save_checkpoint(m, tmp_path / "m.safetensors")
    export_bundle(m, tmp_path / "b", fo_pool="portable", verify=False)
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "b"), str(ckpt))
    assert code == 0, err
    what = "greedy continuations of 20 tokens identical, 160 tokens" if kind == "lm" else "predictions identical ("
    assert f"end to end  8 of 8 {what}" in out and out.rstrip().endswith("OK")
    # Another model of the same config: the graphs and the end-to-end outputs both tell.
    torch.manual_seed(1)
    other = (QRNNLanguageModel(12, 6, 5, 2, window=[2, 1], pooling="fo", dense=True) if kind == "lm"
             else QRNNClassifier(12, 6, 5, 2, 3, window=2))
    ckpt2 = save_checkpoint(other, tmp_path / "other.safetensors")
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "b"), str(ckpt2), "--tol", "1e9", "--samples", "16")
    assert code == 1 and "differ between the runtime and PyTorch" in err, (out, err)
    r = verify_bundle(tmp_path / "b", m)
    assert r["max_abs_error"] <= 1e-5 and r["cases"] == 5
    assert verify_bundle(tmp_path / "b", engine="reference")["engine"].startswith("onnx.reference")


def test_int8_bundle_is_checked_at_the_quantized_tolerance(seq2seq, tmp_path, capsys):
    _, ckpt, model = seq2seq
    export_bundle(model, tmp_path / "q", fo_pool=_variant(), verify=False, quantize="int8", quantize_block=16,
                  vocab=(VOCAB, VOCAB))
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "q"), str(ckpt))
    assert code == 0, err
    assert "int8 weights" in out and "(tolerance 0.1)" in out and "greedy translations" in out
    code, out, err = run_cli(capsys, "verify", str(tmp_path / "q"), str(ckpt), "--text", "abc")
    assert code == 0, err  # differences in translations are reported, not failed, for int8
    with pytest.raises(ConfigError, match="onnxruntime only"):
        verify_bundle(tmp_path / "q", engine="reference")


def test_usage_errors_exit_2(seq2seq, tmp_path, capsys):
    bundle, ckpt, _ = seq2seq
    for args, text in [((str(tmp_path / "none"),), "bundle not found"),
                       ((str(bundle), str(tmp_path / "none.safetensors")), "checkpoint not found"),
                       ((str(bundle), str(tmp_path)), "is a directory"),
                       ((str(bundle), "--engine", "cuda"), "--engine must be one of"),
                       ((str(bundle), "--tol", "-1"), "--tol must be a positive number"),
                       ((str(bundle), "--samples", "-1"), "--samples must be >= 0"),
                       ((str(bundle), "--text", "abc"), "--text is for a bundle checked against its CHECKPOINT"),
                       ((str(bundle), str(ckpt), "--text", ""), "is empty: nothing to run")]:
        code, _, err = run_cli(capsys, "verify", *args)
        assert code == 2 and err.startswith("error: ") and text in err and err.count("\n") == 1, (args, err)
    with pytest.raises(ConfigError):
        verify_bundle(bundle, tol=0)


def test_runners_of_another_engine_are_checked_alike(seq2seq):
    """verify_bundle(runners=...) checks the graphs as another engine runs them (the CLI passes
    TensorRT engines this way); here the runtime's own onnxruntime runners, and a wrong one."""
    from qrnn_deploy.bundle import load_manifest
    from qrnn_deploy.runtime.backends import create_runner

    bundle, _, model = seq2seq
    man = load_manifest(bundle)
    runners = {role: create_runner("onnxruntime", bundle, man, role, threads=1).run for role in man.graphs}
    r = verify_bundle(bundle, model, engine="runtime onnxruntime", runners=runners)
    assert r["engine"] == "runtime onnxruntime" and r["max_abs_error"] <= 1e-4 and r["cases"] == 9

    def off(run):
        return lambda feeds: {k: (v + 0.05 if k == "logits" else v) for k, v in run(feeds).items()}

    with pytest.raises(VerificationError, match="decoder logits"):
        verify_bundle(bundle, model, engine="shifted", runners={**runners, "decoder": off(runners["decoder"])})
    assert verify_bundle(bundle, model, engine="shifted", tol=1.0,
                         runners={**runners, "decoder": off(runners["decoder"])})["max_abs_error"] >= 0.05 - 1e-6
    with pytest.raises(ConfigError, match="runners are for graphs"):
        verify_bundle(bundle, model, engine="x", runners={"encoder": runners["encoder"]})


def test_tensorrt_engine_check_fails_cleanly_without_tensorrt(seq2seq, tmp_path, capsys):
    import json
    import shutil

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: this checks machines without it")
    except ImportError:
        pass
    bundle, ckpt, _ = seq2seq
    code, _, err = run_cli(capsys, "verify", str(bundle), str(ckpt), "--engine", "tensorrt")
    assert code == 2 and "no TensorRT engine for graph" in err and "build-engine" in err
    # A bundle that lists engines (as build-engine writes them) on a machine without TensorRT.
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    man = json.loads((copy / "manifest.json").read_text())
    man["engines"] = {role: {"file": f"{role}.fp32.plan", "precision": "fp32", "plugin": "aot"}
                      for role in man["graphs"]}
    (copy / "manifest.json").write_text(json.dumps(man))
    code, out, err = run_cli(capsys, "verify", str(copy), str(ckpt), "--engine", "tensorrt")
    assert code == 2 and err.startswith("error: ") and "tensorrt" in err.lower() and err.count("\n") == 1


def test_tensorrt_engines_checked_behind_stand_ins(seq2seq, tmp_path, monkeypatch, capsys):
    """`verify --engine tensorrt` end to end through the runtime's TensorRT backend, with the
    stand-ins of tensorrt and cuda-python from test_tensorrt_runtime.py (their "engine" runs the
    ONNX graph on onnxruntime): the engines' graphs, streaming and translations are checked."""
    from test_tensorrt_runtime import _FakeCudart, _fake_tensorrt

    from qrnn_deploy.bundle import EngineSpec, load_manifest
    from qrnn_deploy.export.tensorrt_engine import engine_profiles
    from qrnn_deploy.runtime import tensorrt_backend

    _, ckpt, model = seq2seq
    b = tmp_path / "b"
    export_bundle(model, b, fo_pool="portable", verify=False, vocab=VOCAB)
    man = load_manifest(b)
    for role in man.graphs:
        (b / f"{role}.fp32.plan").write_bytes((b / f"{role}.onnx").read_bytes())
        man.engines[role] = EngineSpec(file=f"{role}.fp32.plan", plugin="none",
                                       profiles=engine_profiles(man, role, max_batch=4, max_chunk=16, max_source=32))
    man.write(b)
    cudart = _FakeCudart()
    monkeypatch.setattr(tensorrt_backend, "_import_tensorrt", lambda: _fake_tensorrt(cudart))
    monkeypatch.setattr(tensorrt_backend, "_import_cuda_runtime", lambda: cudart)
    code, out, err = run_cli(capsys, "verify", str(b), str(ckpt), "--engine", "tensorrt", *TEXTS[:4])
    assert code == 0, err
    assert "graphs      on tensorrt: 9 cases" in out and "(tolerance 0.002)" in out
    assert "2 of 2 greedy translations identical" in out and out.rstrip().endswith("OK")
    code, out, err = run_cli(capsys, "verify", str(b), "--engine", "tensorrt")
    assert code == 0 and "graphs      on tensorrt: 4 cases" in out, err


def test_tensorrt_default_tolerance_is_that_of_the_least_precise_engine(seq2seq, tmp_path, monkeypatch, capsys):
    """Round 3 of mutation testing: one fp16 engine among fp32 ones sets the default --tol to 2e-2."""
    from test_tensorrt_runtime import _FakeCudart, _fake_tensorrt

    from qrnn_deploy.bundle import EngineSpec, load_manifest
    from qrnn_deploy.export.tensorrt_engine import engine_profiles
    from qrnn_deploy.runtime import tensorrt_backend

    _, _, model = seq2seq
    b = tmp_path / "b"
    export_bundle(model, b, fo_pool="portable", verify=False, vocab=VOCAB)
    man = load_manifest(b)
    for role, precision in zip(man.graphs, ("fp32", "fp16")):
        (b / f"{role}.plan").write_bytes((b / f"{role}.onnx").read_bytes())
        man.engines[role] = EngineSpec(file=f"{role}.plan", precision=precision, plugin="none",
                                       profiles=engine_profiles(man, role, max_batch=4, max_chunk=16, max_source=32))
    man.write(b)
    cudart = _FakeCudart()
    monkeypatch.setattr(tensorrt_backend, "_import_tensorrt", lambda: _fake_tensorrt(cudart))
    monkeypatch.setattr(tensorrt_backend, "_import_cuda_runtime", lambda: cudart)
    code, out, err = run_cli(capsys, "verify", str(b), "--engine", "tensorrt")
    assert code == 0 and "(tolerance 0.02)" in out, (out, err)
