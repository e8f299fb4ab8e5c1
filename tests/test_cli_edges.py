"""Command-line cases found by review: tracebacks where one `error:` line belongs, and commands
that overwrote or destroyed a user's files. Every test here failed before its fix."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrnn_deploy.bundle import Manifest, load_manifest
from qrnn_deploy.cli import main
from qrnn_deploy.errors import BundleError, CheckpointError, ExportError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNLanguageModel, load_checkpoint, save_checkpoint
from qrnn_deploy.vocab import CharVocab
from test_data_train import TINY, tiny_dict  # noqa: F401 (a fixture)
from translators import random_translator

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
VOCAB = CharVocab.build(["abcdefgh"])


def cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def one_line_error(capsys, *args, needle: str):
    code, _, err = cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, (code, err)


@pytest.fixture
def lm_ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(QRNNLanguageModel(12, 6, 5, 2), tmp_path / "lm.safetensors",
                           extra={"vocab": VOCAB.to_json()})


def test_custom_export_without_the_fopool_library(lm_ckpt, tmp_path):
    """With the FoPool schema registered before onnx.reference was first imported, the reference
    evaluator passed TensorRT's optional attributes to the numpy FoPool: a TypeError traceback
    instead of the documented fallback. Run in a fresh process, where that import order holds."""
    env = {**ENV, "QRNN_ORT_LIBRARY": str(tmp_path / "none.so")}
    r = subprocess.run([sys.executable, "-m", "qrnn_deploy", "export", str(lm_ckpt), "-o", str(tmp_path / "b")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "verified on onnx.reference.ReferenceEvaluator" in r.stdout


def test_export_never_deletes_a_users_files(lm_ckpt, tmp_path, capsys):
    """export replaced the files of any directory it was pointed at, and an export that failed or
    was interrupted left a bundle without a manifest."""
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "manifest.json").write_text('{"name": "my web app"}')
    (user / "lm.onnx").write_text("precious")
    one_line_error(capsys, "export", lm_ckpt, "-o", user, "--fo-pool", "portable",
                   needle="not empty and holds no qrnn-deploy bundle")
    assert (user / "lm.onnx").read_text() == "precious"

    b = tmp_path / "b"
    model = load_checkpoint(lm_ckpt)
    export_bundle(model, b, fo_pool="portable", verify=False)
    assert oct(b.stat().st_mode & 0o777) != "0o700"  # not the staging directory's private mode
    (b / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes.txt"):
        export_bundle(model, b, fo_pool="portable", verify=False)
    (b / "notes.txt").unlink()

    # Interrupted half way (here: in the graph writer): the old bundle is whole, nothing is left over.
    from qrnn_deploy.export import exporter

    before = {p.name: p.read_bytes() for p in b.iterdir()}
    real = exporter._write_bundle

    def interrupted(*a, **kw):
        real(*a, **kw)
        raise KeyboardInterrupt

    exporter._write_bundle = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            export_bundle(model, b, fo_pool="portable", verify=False)
    finally:
        exporter._write_bundle = real
    assert {p.name: p.read_bytes() for p in b.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "lm.safetensors", "userdir"]

    # A re-export replaces the bundle whole: a seq2seq bundle over a language model's leaves no lm.onnx.
    s2s = random_translator(len(VOCAB), len(VOCAB), 0)
    export_bundle(s2s, b, fo_pool="portable", verify=False, vocab=VOCAB)
    assert sorted(p.name for p in b.iterdir()) == ["decoder.onnx", "encoder.onnx", "manifest.json"]


def test_export_through_a_link_replaces_the_bundle_it_points_to(lm_ckpt, tmp_path):
    target = tmp_path / "shared" / "b"
    export_bundle(load_checkpoint(lm_ckpt), target, fo_pool="portable", verify=False)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    s2s = random_translator(len(VOCAB), len(VOCAB), 0)
    export_bundle(s2s, link, fo_pool="portable", verify=False, vocab=VOCAB)
    assert link.is_symlink() and load_manifest(link).model_type == "seq2seq" == load_manifest(target).model_type


def test_manifest_write_is_atomic(lm_ckpt, tmp_path, monkeypatch):
    b = tmp_path / "b"
    m = export_bundle(load_checkpoint(lm_ckpt), b, fo_pool="portable", verify=False)
    good = (b / "manifest.json").read_text()
    real = Path.write_text

    def disk_full(self, *a, **kw):
        real(self, "{", encoding="utf-8")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        m.write(b)
    monkeypatch.undo()
    assert (b / "manifest.json").read_text() == good and sorted(p.name for p in b.iterdir()) == \
        ["lm.onnx", "manifest.json"]


def test_train_never_writes_over_a_run(tiny_dict, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--steps", "2", "--out", run, "--data-file", tiny_dict, *TINY)
    assert code == 0, err
    best = (run / "best.safetensors").read_bytes()
    one_line_error(capsys, "train", "--steps", "1", "--out", run, "--data-file", tiny_dict, *TINY,
                   needle="already holds a run")
    assert (run / "best.safetensors").read_bytes() == best
    one_line_error(capsys, "quickstart", "--out", tmp_path / "qs", "--fo-pool", "xyz", needle="--fo-pool")
    assert not (tmp_path / "qs").exists()


def test_resume_of_a_checkpoint_train_did_not_write(tiny_dict, tmp_path, capsys):  # noqa: F811
    """A run whose last.safetensors was replaced by another checkpoint: KeyError traceback."""
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--steps", "1", "--out", run, "--data-file", tiny_dict, *TINY)
    assert code == 0, err
    save_checkpoint(random_translator(len(VOCAB), len(VOCAB), 0), run / "last.safetensors")
    one_line_error(capsys, "train", "--steps", "2", "--out", run, "--data-file", tiny_dict, "--resume", "--no-progress",
                   needle="was not written by qrnn-deploy train")


def test_a_failing_training_state_write_is_a_checkpoint_error(tmp_path, monkeypatch):
    import safetensors.torch

    from qrnn_deploy.nn.train import save_train_state

    def full(*a, **kw):
        raise RuntimeError("I/O error: No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    m = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="No space left"):
        save_train_state(tmp_path, torch.optim.Adam(m.parameters()), {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_closed_stdout_is_one_error_line(lm_ckpt, tmp_path):
    export_bundle(load_checkpoint(lm_ckpt), tmp_path / "b", fo_pool="portable", verify=False)
    r = subprocess.run(f'"{sys.executable}" -m qrnn_deploy info "{tmp_path / "b"}" >&-', shell=True,
                       capture_output=False, stderr=subprocess.PIPE, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "error: standard output is closed", r.stderr


def test_manifests_that_broke_info(lm_ckpt, tmp_path, capsys):
    b = tmp_path / "b"
    export_bundle(load_checkpoint(lm_ckpt), b, fo_pool="portable", verify=False)
    good = json.loads((b / "manifest.json").read_text())
    for change in (lambda m: m["vocab"].update(symbols=None),
                   lambda m: m.update(vocab={"src": good["vocab"], "tgt": good["vocab"], "x": 5}),
                   lambda m: m["metadata"].update(quantization={"scheme": "x", "graphs": [1]})):
        m = json.loads(json.dumps(good))
        change(m)
        (b / "manifest.json").write_text(json.dumps(m))
        try:
            load_manifest(b)
        except BundleError:
            continue  # refused with a clear error is fine too
        code, out, err = cli(capsys, "info", b)
        assert code == 0 and "graph 'lm'" in out, err
    (b / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(BundleError, match="nested too deeply"):
        load_manifest(b)
    one_line_error(capsys, "info", b, needle="nested too deeply")


def test_out_of_range_seeds_and_sizes(lm_ckpt, tmp_path, capsys):
    one_line_error(capsys, "demo", "--steps", "1", "--seed", 10 ** 20, needle="--seed must be an integer in")
    one_line_error(capsys, "train", "--seed", -1, "--out", tmp_path / "r", needle="--seed")
    one_line_error(capsys, "train", "--hidden", 10 ** 7, "--out", tmp_path / "r", needle="--hidden must be <=")
    export_bundle(load_checkpoint(lm_ckpt), tmp_path / "b", fo_pool="portable", verify=False)
    one_line_error(capsys, "verify", tmp_path / "b", "--seed", -1, needle="--seed")
    if not torch.cuda.is_available():
        one_line_error(capsys, "train", "--device", "cuda", "--out", tmp_path / "r", needle="no CUDA device")
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_asking_for_a_model_no_memory_holds(lm_ckpt, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(lm_ckpt), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    cfg["vocab_size"] = 10 ** 12
    huge = tmp_path / "huge.safetensors"
    save_file(load_file(str(lm_ckpt)), str(huge), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="cannot hold"):
        load_checkpoint(huge)
    one_line_error(capsys, "export", huge, "-o", tmp_path / "b", needle="cannot hold")


def test_serve_on_a_port_in_use_is_one_error_line(lm_ckpt, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "qrnn_deploy", "serve", str(tmp_path / "no-bundle"), "--port",
                            str(port)], capture_output=True, text=True, env=ENV, timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2 and err.startswith("error: cannot listen on 127.0.0.1:") and "\n" not in err, err


def test_resume_checks_the_data_and_the_state(tiny_dict, tmp_path, capsys):  # noqa: F811
    """A resumed run took other data without a word (another --data-file, or the installed
    dictionary after an update), and weights and training state from different steps."""
    run = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--steps", "2", "--out", run, "--data-file", tiny_dict, *TINY)
    assert code == 0, err
    other = tmp_path / "other.txt"
    lines = tiny_dict.read_text(encoding="utf-8").splitlines()
    other.write_text("\n".join(lines[:-50]) + "\n", encoding="utf-8")
    one_line_error(capsys, "train", "--steps", "3", "--out", run, "--data-file", other, "--resume", "--no-progress",
                   needle="the data differ from the run's")
    state = json.loads((run / "state.json").read_text())
    json_pos = dict(state, pos=10 ** 9)
    (run / "state.json").write_text(json.dumps(json_pos))
    one_line_error(capsys, "train", "--steps", "3", "--out", run, "--data-file", tiny_dict, "--resume",
                   "--no-progress", needle="batch position")
    (run / "state.json").write_text(json.dumps(dict(state, step=1)))
    one_line_error(capsys, "train", "--steps", "3", "--out", run, "--data-file", tiny_dict, "--resume",
                   "--no-progress", needle="interrupted while saving")
    (run / "state.json").write_text(json.dumps(state))
    code, _, err = cli(capsys, "train", "--steps", "3", "--out", run, "--data-file", tiny_dict, "--resume",
                       "--no-progress")
    assert code == 0, err


def test_translate_refuses_a_source_over_max_source_chars(tmp_path, capsys, monkeypatch):
    """`serve` caps a source's length; `translate` took any line (a 10-MB line would encode for
    minutes and take gigabytes). Lines before the long one are translated, then one error line."""
    import io

    vocab = CharVocab.build(["abcdefghijklmnop "])
    export_bundle(random_translator(len(vocab), len(vocab), 0), tmp_path / "b", fo_pool="portable", verify=False,
                  vocab=vocab)
    monkeypatch.setattr(sys, "stdin", io.StringIO("abc\n" + "a" * 31 + "\nabc\n"))
    code, out, err = cli(capsys, "translate", tmp_path / "b", "--max-len", "5", "--max-source-chars", "30")
    assert code == 2 and err == ("error: stdin line 2 has 31 characters, more than --max-source-chars 30; "
                                 "split it into sentences\n"), err
    assert out.count("\n") == 1
    one_line_error(capsys, "translate", tmp_path / "b", "a" * 2001, needle="TEXT has 2,001 characters")
    one_line_error(capsys, "translate", tmp_path / "b", "abc", "--max-source-chars", "0",
                   needle="--max-source-chars must be >= 1")
    code, out, _ = cli(capsys, "translate", tmp_path / "b", "a" * 30, "--max-len", "5", "--max-source-chars", "30")
    assert code == 0 and out.endswith("\n")


def test_ctrl_c_says_interrupted(tmp_path, capsys, monkeypatch):
    """typer turns Ctrl-C into a silent exit 130; the command line says `interrupted`."""
    import qrnn_deploy.runtime as runtime

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime, "load_bundle", interrupt)
    code, out, err = cli(capsys, "translate", tmp_path, "abc")
    assert code == 130 and err == "interrupted\n" and out == ""


def test_loopback_hosts_are_recognised():
    """The no-API-key warning fired for 127.0.0.2 (only three exact strings counted as loopback)."""
    from qrnn_deploy.serve.guard import is_loopback_host as is_loopback  # what `serve` asks

    for host in ("127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "192.168.1.4", "10.0.0.1", "example.com", ""):
        assert not is_loopback(host), host
