"""`qrnn-deploy export` and `qrnn-deploy info` end to end on saved checkpoints, error exits included."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from qrnn_deploy.bundle import load_manifest
from qrnn_deploy.cli import main
from qrnn_deploy.nn import QRNNClassifier, QRNNLanguageModel, QRNNSeq2Seq, save_checkpoint
from qrnn_deploy.vocab import CharVocab


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def lm_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = QRNNLanguageModel(12, 6, 5, 2, window=[2, 1], pooling="fo", dense=True)
    vocab = CharVocab.build(["abcdefgh"])
    return save_checkpoint(m, tmp_path / "lm.safetensors", extra={"vocab": vocab.to_json()}), m


@pytest.mark.parametrize("variant", ["custom", "portable"])
def test_export_and_info(lm_checkpoint, variant, tmp_path, capsys):
    ckpt, model = lm_checkpoint
    out = tmp_path / "bundle"
    code, stdout, err = run_cli(capsys, "export", str(ckpt), "-o", str(out), "--fo-pool", variant)
    assert code == 0, err
    assert "lm.onnx" in stdout and "manifest.json" in stdout
    assert "max |onnx - torch|" in stdout and "max |chunked - whole|" in stdout
    man = load_manifest(out)
    assert man.fo_pool == variant and man.vocab["symbols"][4:] == list("abcdefgh")
    assert man.metadata["verification"]["max_abs_error"] <= 1e-5

    # The bundle runs without PyTorch and gives the model's logits.
    import onnxruntime  # noqa: F401
    from qrnn_deploy.export.verify import ort_runner

    if variant == "custom":
        pytest.importorskip("qrnn_deploy._native")
    tokens = np.array([[4, 5, 6, 7]])
    try:
        run = ort_runner(out / "lm.onnx", variant == "custom")
    except Exception as e:  # custom-op library not built
        pytest.skip(f"no onnxruntime session for the custom op: {e}")
    states = {s.name: np.zeros([1 if d == "B" else d for d in s.shape], np.float32) for s in man.graphs["lm"].states}
    got = run({"tokens": tokens, **states})["logits"]
    with torch.no_grad():
        want, _ = model.eval()(torch.from_numpy(tokens))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)

    code, stdout, err = run_cli(capsys, "info", str(out))
    assert code == 0, err
    for text in ("language_model", "tokens", "logits", "conv_state_0", "c_state_1", "[B, T, 12]",
                 "char, 12 symbols", "verified    on"):
        assert text in stdout, text
    assert ("custom op qrnn::FoPool v1" if variant == "custom" else "portable") in stdout


def test_export_seq2seq_no_verify(tmp_path, capsys):
    torch.manual_seed(0)
    m = QRNNSeq2Seq(9, 10, embed_size=4, hidden_size=4, num_layers=2, pooling="ifo")
    ckpt = save_checkpoint(m, tmp_path / "s.safetensors")
    code, stdout, err = run_cli(capsys, "export", str(ckpt), "-o", str(tmp_path / "b"), "--fo-pool", "portable",
                                "--opset", "18", "--no-verify")
    assert code == 0, err
    assert "encoder.onnx" in stdout and "decoder.onnx" in stdout and "not verified" in stdout
    man = load_manifest(tmp_path / "b")
    assert man.opset == 18 and "verification" not in man.metadata and man.vocab is None
    code, stdout, _ = run_cli(capsys, "info", str(tmp_path / "b"))
    assert code == 0 and "memory_mask" in stdout and "verified    no" in stdout


def test_export_errors(lm_checkpoint, tmp_path, capsys):
    ckpt, _ = lm_checkpoint
    cases = [
        (["export", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "o")], "checkpoint not found"),
        (["export", str(ckpt), "-o", str(tmp_path / "o"), "--fo-pool", "fast"], "--fo-pool"),
        (["export", str(ckpt), "-o", str(tmp_path / "o"), "--opset", "3"], "opset 3 is not supported"),
        (["export", str(ckpt), "-o", str(ckpt / "sub")], "cannot create the bundle directory"),
        (["export", str(ckpt), "-o", str(ckpt)], "exists and is not a directory"),
        (["info", str(tmp_path / "nothing")], "bundle not found"),
    ]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    cases.append((["export", str(garbage), "-o", str(tmp_path / "o")], "not a qrnn-deploy checkpoint"))
    torch.manual_seed(0)
    bi = save_checkpoint(QRNNClassifier(9, 4, 4, 1, 2, bidirectional=True), tmp_path / "bi.safetensors")
    cases.append((["export", str(bi), "-o", str(tmp_path / "bi")], "bidirectional"))
    for args, message in cases:
        code, stdout, err = run_cli(capsys, *args)
        assert code == 2, (args, stdout, err)
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "bi" / "manifest.json").exists()


def test_error_exit_in_a_real_process(tmp_path):
    res = subprocess.run([sys.executable, "-m", "qrnn_deploy", "export", str(tmp_path / "none.safetensors"),
                          "-o", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error: checkpoint not found") and "Traceback" not in res.stderr
