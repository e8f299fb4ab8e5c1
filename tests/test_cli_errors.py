"""Bad input to the CLI and the library gives one typed error (one `error:` line, exit 2), up
front where the command would otherwise work for minutes first; never a traceback or exit 0."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrnn_deploy.bundle import Manifest, load_manifest
from qrnn_deploy.cli import main
from qrnn_deploy.errors import BundleError, CheckpointError, DataError, ExportError
from qrnn_deploy.nn import QRNNLanguageModel, QRNNSeq2Seq, load_checkpoint, save_checkpoint
from qrnn_deploy.vocab import CharVocab


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def assert_error(capsys, args, message):
    """A one-line `error: ...` naming `message`, exit code 2."""
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (args, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)


@pytest.fixture
def lm_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = QRNNLanguageModel(12, 6, 5, 2, window=[2, 1], pooling="fo")
    return save_checkpoint(m, tmp_path / "lm.safetensors", extra={"vocab": CharVocab.build(["abcdefgh"]).to_json()})


@pytest.fixture
def afile(tmp_path):
    p = tmp_path / "afile"
    p.write_text("x")
    return p


@pytest.fixture
def tiny_dict(tmp_path):
    p = tmp_path / "de-en.txt"
    p.write_text("# test\n" + "\n".join(f"Wort{i} {{n}} :: word{i}" for i in range(200)) + "\n", encoding="utf-8")
    return p


# A hand-written manifest: the checks below fail before any graph file is read.
MANIFEST = {
    "format": "qrnn-deploy-bundle", "format_version": 1, "model_type": "language_model", "fo_pool": "portable",
    "graphs": {"lm": {"file": "lm.onnx",
                      "inputs": [{"name": "tokens", "shape": ["B", "T"], "dtype": "int64"}],
                      "outputs": [{"name": "logits", "shape": ["B", "T", 12], "dtype": "float32"}],
                      "states": [{"name": "c_state_0", "output": "c_state_0_out", "shape": ["B", 5],
                                  "dtype": "float32"}]}},
    "config": {"vocab_size": 12, "hidden_size": 5},
    "vocab": CharVocab.build(["abcdefgh"]).to_json(),
    "special_tokens": {"pad": 0, "unk": 1, "bos": 2, "eos": 3},
    "opset": 17, "custom_op": None, "engines": {},
    "metadata": {"verification": {"engine": "onnxruntime", "cases": 3, "max_abs_error": 1e-6,
                                  "max_chunked_vs_whole": 1e-7, "tolerance": 1e-4}},
}


def write_bundle(path: Path, edit=None) -> Path:
    d = copy.deepcopy(MANIFEST)
    if edit is not None:
        edit(d)
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(d))
    (path / "lm.onnx").write_bytes(b"not read")
    return path


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(d):
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return edit


# -- 1. checkpoint weights that do not fit its config -------------------------------------------

def test_checkpoint_weights_not_fitting_config(lm_checkpoint, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(lm_checkpoint), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    cfg["hidden_size"] = 7
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(lm_checkpoint)), str(bad), metadata={**meta, "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match=r"tensor '[\w.]+' has shape \[.*\], the config needs \[.*\]"):
        load_checkpoint(bad)
    assert_error(capsys, ["export", str(bad), "-o", str(tmp_path / "o")], "weights do not fit the config")


def test_checkpoint_that_is_a_directory(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path / "d")
    assert_error(capsys, ["export", str(tmp_path / "d"), "-o", str(tmp_path / "o")], "is a directory")


# -- 2. manifest fields of the wrong type ----------------------------------------------------------

BAD_MANIFESTS = {
    "config list": (_set("config", [1, 2]), "config must be an object"),
    "config string": (_set("config", "x"), "config must be an object"),
    "special_tokens list": (_set("special_tokens", [1]), "special_tokens must be an object"),
    "special token string": (_set("special_tokens", "pad", "x"), "special_tokens.pad"),
    "metadata list": (_set("metadata", [1]), "metadata must be an object"),
    "verification list": (_set("metadata", "verification", [1]), "metadata.verification"),
    "vocab string": (_set("vocab", "abc"), "vocab must be an object"),
    "vocab symbols number": (_set("vocab", "symbols", 5), "vocab.symbols must be a list"),
    "opset string": (_set("opset", "x"), "opset must be an integer"),
    "graphs list": (_set("graphs", [1]), "graphs must be an object"),
    "graph file number": (_set("graphs", "lm", "file", 5), "file must be a non-empty file name"),
    "graph file empty": (_set("graphs", "lm", "file", ""), "file must be a non-empty file name"),
    "graph file absolute": (_set("graphs", "lm", "file", "/etc/passwd"), "relative file name inside the bundle"),
    "graph file outside": (_set("graphs", "lm", "file", "../lm.onnx"), "relative file name inside the bundle"),
    "graph file dot": (_set("graphs", "lm", "file", "."), "relative file name inside the bundle"),
    "tensor name number": (_set("graphs", "lm", "inputs", 0, "name", 3), "tensor name must be a string"),
    "engine file outside": (_set("engines", {"lm": {"file": "../x.plan"}}), "relative file name inside the bundle"),
    "model_type list": (_set("model_type", ["lm"]), "model_type must be a string"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_manifest_field_types(case, tmp_path, capsys):
    edit, message = BAD_MANIFESTS[case]
    d = copy.deepcopy(MANIFEST)
    edit(d)
    with pytest.raises(BundleError, match=message):
        Manifest.from_json(d)
    bundle = write_bundle(tmp_path / "b", edit)
    assert_error(capsys, ["info", str(bundle)], message)


@pytest.mark.parametrize("case", ["config list", "special_tokens list", "graph file number", "metadata list"])
def test_loading_a_bundle_with_wrong_types(case, tmp_path):
    from qrnn_deploy.runtime import load_bundle

    bundle = write_bundle(tmp_path / "b", BAD_MANIFESTS[case][0])
    with pytest.raises(BundleError, match=BAD_MANIFESTS[case][1]):
        load_bundle(bundle)


def test_good_manifest_loads_and_info_shows_odd_metadata(tmp_path, capsys):
    m = load_manifest(write_bundle(tmp_path / "ok"))
    assert m.graphs["lm"].file == "lm.onnx"
    load_manifest(write_bundle(tmp_path / "sub", _set("graphs", "lm", "file", "graphs/lm.onnx")), check_files=False)
    bundle = write_bundle(tmp_path / "b", _set("metadata", "verification", "max_abs_error", "big"))
    code, out, err = run_cli(capsys, "info", str(bundle))
    assert code == 0, err
    assert "max |onnx - torch| = 'big'" in out and "max |chunked - whole| = 1.00e-07" in out


# -- 3. export into a directory whose manifest.json is a directory ---------------------------------

def test_export_over_a_manifest_directory(lm_checkpoint, tmp_path, capsys):
    from qrnn_deploy.export import export_bundle

    out = tmp_path / "b"
    (out / "manifest.json").mkdir(parents=True)
    with pytest.raises(ExportError, match="not empty and holds no qrnn-deploy bundle"):
        export_bundle(load_checkpoint(lm_checkpoint), out, fo_pool="portable", verify=False)
    assert_error(capsys, ["export", str(lm_checkpoint), "-o", str(out), "--fo-pool", "portable", "--no-verify"],
                 "not empty and holds no qrnn-deploy bundle")
    assert (out / "manifest.json").is_dir()  # nothing was changed


# -- 4, 5, 6. output paths checked before the work -------------------------------------------------

def test_evaluate_json_path_checked_first(tmp_path, afile, capsys):
    # --data-file does not exist either: the --json check has to come first.
    base = ["evaluate", str(tmp_path / "model.safetensors"), "--data-file", str(tmp_path / "none.txt")]
    (tmp_path / "d").mkdir()
    assert_error(capsys, base + ["--json", str(afile / "s.json")], "cannot write the --json file")
    assert_error(capsys, base + ["--json", str(tmp_path / "d")], "is a directory")
    assert_error(capsys, base + ["--json", ""], "path is empty")
    if sys.platform.startswith("linux"):
        assert_error(capsys, base + ["--json", "/proc/qrnn-deploy-test.json"], "cannot write the --json file")
    good = tmp_path / "s.json"  # a writable path is left as it was
    assert_error(capsys, base + ["--json", str(good)], "data file not found")
    assert not good.exists()


@pytest.mark.parametrize("command", ["quickstart", "train", "bench"])
def test_out_directory_checked_first(command, tmp_path, afile, tiny_dict, capsys, monkeypatch):
    monkeypatch.setenv("QRNN_BENCH_SMOKE", "1")
    extra = {"quickstart": ["--data-file", str(tiny_dict)], "train": ["--data-file", str(tiny_dict), "--steps", "1"],
             "bench": ["--no-progress"]}[command]
    for out, message in ((afile, "exists and is not a directory"), (afile / "sub", "cannot create the --out directory"),
                         ("", "path is empty")):
        assert_error(capsys, [command, "--out", str(out), *extra], message)


def test_export_paths_checked_before_writing(lm_checkpoint, tmp_path, afile, capsys):
    out = tmp_path / "b"
    args = ["export", str(lm_checkpoint), "--fo-pool", "portable", "--no-verify"]
    assert_error(capsys, args + ["-o", str(out), "--triton", str(afile)], "--triton directory")
    assert_error(capsys, args + ["-o", str(out), "--triton", str(afile / "repo")], "--triton directory")
    assert not out.exists()
    assert_error(capsys, args + ["-o", ""], "path is empty")


# -- 7, 11, 12. numbers out of range ------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["train", "--minutes", "nan", "--steps", "1"], "--minutes must be a positive number"),
    (["train", "--minutes", "inf", "--steps", "1"], "--minutes must be a positive number"),
    (["train", "--minutes", "-1"], "--minutes must be a positive number"),
    (["train", "--valid-every", "-1", "--steps", "1"], "--valid-every must be a positive number"),
    (["quickstart", "--train-minutes", "nan"], "--train-minutes must be a positive number"),
    (["quickstart", "--train-minutes", "-1"], "--train-minutes must be a positive number"),
    (["quickstart", "--limit", "0"], "--limit must be >= 1"),
    (["evaluate", "m.safetensors", "--limit", "0"], "--limit must be >= 1"),
    (["evaluate", "m.safetensors", "--limit", "-5"], "--limit must be >= 1"),
    (["translate", "nobundle", "x", "--length-penalty", "nan"], "--length-penalty must be a number in [0, 10]"),
    (["translate", "nobundle", "x", "--length-penalty", "inf"], "--length-penalty must be a number in [0, 10]"),
    (["translate", "nobundle", "x", "--length-penalty", "-1"], "--length-penalty must be a number in [0, 10]"),
    (["serve", "nobundle", "--length-penalty", "nan"], "length_penalty must be in [0, 10]"),
    (["serve", "nobundle", "--log-level", "bogus"], "--log-level must be one of critical, error, warning"),
])
def test_bad_numbers_and_choices(args, message, tmp_path, tiny_dict, capsys):
    # Data files and outputs are valid and small, so that without the check a command would run.
    if args[0] in ("train", "quickstart"):
        args = args + ["--out", str(tmp_path / "o"), "--data-file", str(tiny_dict / "missing")
                       if args[0] == "quickstart" else str(tiny_dict)]
    assert_error(capsys, args, message)


@pytest.mark.parametrize("args, message", [
    (["train", "--threads", "-2", "--steps", "1"], "--threads must be in 0..256, got -2"),
    (["train", "--steps", "-3"], "--steps must be >= 1, got -3"),
    (["train", "--max-tokens", "-5", "--steps", "1"], "--max-tokens must be >= 1"),
    (["demo", "--steps", "-3"], "--steps must be >= 1"),
    (["evaluate", "m.safetensors", "--show", "-1"], "--show must be >= 0"),
    (["quickstart", "--examples", "-1"], "--examples must be >= 0"),
    (["translate", "nobundle", "x", "--threads", "2000"], "--threads must be in 1..256"),
    (["translate", "nobundle", "x", "--threads", "0"], "--threads must be in 1..256"),
    (["evaluate", "m.safetensors", "--threads", "100000"], "--threads must be in 1..256"),
    (["bench", "--threads", "2000"], "--threads must be in 1..256"),
    (["serve", "nobundle", "--threads", "2000"], "--threads must be in 1..256"),
    (["quickstart", "--threads", "0"], "--threads must be in 1..256"),
    (["serve", "nobundle", "--beam", "4", "--max-beam", "2"], "--max-beam (2) must be >= --beam (4)"),
    (["serve", "nobundle", "--max-beam", "5000"], "max_beam must be <= 1000"),
    (["serve", "nobundle", "--flush-ms", "2", "--flush-max-ms", "1"], "flush_max_ms must be in [flush_ms (2), 100]"),
])
def test_out_of_range_counts(args, message, tmp_path, tiny_dict, capsys, monkeypatch):
    monkeypatch.setenv("QRNN_BENCH_SMOKE", "1")
    if args[0] in ("train", "quickstart"):
        args = args + ["--out", str(tmp_path / "o"), "--data-file", str(tiny_dict / "missing")
                       if args[0] == "quickstart" else str(tiny_dict)]
    assert_error(capsys, args, message)


# -- 9. a damaged training state -------------------------------------------------------------------

def test_resume_with_corrupt_state(tmp_path, tiny_dict, capsys):
    from qrnn_deploy.nn.train import load_train_state

    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text('{"step": 3, ')
    (run / "state.safetensors").write_bytes(b"")
    (run / "last.safetensors").write_bytes(b"")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(CheckpointError, match="state.json is corrupt"):
        load_train_state(run, opt)
    assert_error(capsys, ["train", "--resume", "--steps", "1", "--out", str(run), "--data-file", str(tiny_dict)],
                 "state.json is corrupt")
    (run / "state.json").write_text('{"step": "three"}')
    with pytest.raises(CheckpointError, match="malformed: step"):
        load_train_state(run, opt)


# -- 10. output that cannot be written ------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_full_stdout_is_one_line(tmp_path):
    bundle = write_bundle(tmp_path / "b")
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "qrnn_deploy", "info", str(bundle)], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr


# -- 13. data files ---------------------------------------------------------------------------------

def test_data_file_errors(tmp_path, capsys):
    from qrnn_deploy.data.dictionary import load_pairs

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="is empty"):
        load_pairs(empty)
    with pytest.raises(DataError, match="is a directory"):
        load_pairs(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(DataError, match="not a regular file"):
            load_pairs("/dev/null")
    # quickstart would use the shipped model, export and stream without scoring; a named file must exist.
    out = tmp_path / "qs"
    assert_error(capsys, ["quickstart", "--out", str(out), "--data-file", str(tmp_path / "none.txt")],
                 "data file not found")
    assert not out.exists()


# -- 14. serving a bundle without a vocabulary -----------------------------------------------------

def test_serve_refuses_a_bundle_without_vocabulary(tmp_path, monkeypatch):
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.serve import server

    torch.manual_seed(0)
    bundle = tmp_path / "s2s"
    export_bundle(QRNNSeq2Seq(9, 10, embed_size=4, hidden_size=4, num_layers=2), bundle, fo_pool="portable",
                  verify=False)

    def started(*a, **k):
        raise AssertionError("the server started")

    monkeypatch.setattr(server, "make_server", started)
    interval = sys.getswitchinterval()
    try:
        with pytest.raises(BundleError, match="no vocabulary"):
            server.run_server(str(bundle))
    finally:
        sys.setswitchinterval(interval)


# -- smaller ones -----------------------------------------------------------------------------------

def test_vocabulary_error_names_it_once(lm_checkpoint, tmp_path):
    from qrnn_deploy.export import export_bundle

    with pytest.raises(ExportError) as e:
        export_bundle(load_checkpoint(lm_checkpoint), tmp_path / "b", vocab={"type": "bpe"}, verify=False)
    assert "vocabulary: vocabulary:" not in str(e.value) and "vocabulary" in str(e.value)



def test_translate_refuses_undecodable_input(tmp_path, capsys, monkeypatch):
    """Bytes that are not UTF-8 (they reach Python as lone surrogates) are one error line naming
    the input, after the lines before them were translated; not a made-up translation."""
    import io

    from qrnn_deploy.export import export_bundle
    from translators import random_translator

    vocab = CharVocab.build(["abcdefghijklmnop "])
    export_bundle(random_translator(len(vocab), len(vocab), 0), tmp_path / "b", fo_pool="portable", verify=False,
                  vocab=vocab)
    stdin = io.TextIOWrapper(io.BytesIO(b"abc def\n\xff\xfe oops\nhello\n"), encoding="utf-8",
                             errors="surrogateescape")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, err = run_cli(capsys, "translate", str(tmp_path / "b"), "--max-len", "10")
    assert code == 2 and err.startswith("error: stdin line 2 is not valid UTF-8") and err.count("\n") == 1, err
    assert out.count("\n") == 1  # line 1 was translated; nothing after the bad line
    assert_error(capsys, ["translate", str(tmp_path / "b"), "ab\udcffc"], "TEXT is not valid UTF-8")
