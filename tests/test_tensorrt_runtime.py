"""build-engine and the tensorrt runtime backend on a machine without TensorRT: clean failures,
and the plain-Python parts (optimisation profiles, profile choice) that run everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qrnn_deploy.bundle import EngineSpec, load_manifest
from qrnn_deploy.cli import main
from qrnn_deploy.errors import BuildError, BundleError, ExportError, StreamError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.export.tensorrt_engine import build_engines, engine_profiles
from qrnn_deploy.nn import QRNNLanguageModel, QRNNSeq2Seq
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.runtime.tensorrt_backend import pick_profile

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
no_trt = pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: these check machines without it")


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("b") / "lm"
    export_bundle(QRNNLanguageModel(12, 6, 6, 2, window=[2, 1]), out, fo_pool="portable", verify=False)
    return out


def test_profiles_of_a_language_model(lm_bundle):
    man = load_manifest(lm_bundle)
    profiles = engine_profiles(man, "lm", max_batch=4, max_chunk=100)
    assert [p["name"] for p in profiles] == ["decode", "chunk"]
    decode, chunk = (p["shapes"] for p in profiles)
    assert decode["tokens"] == {"min": [1, 1], "opt": [4, 1], "max": [4, 1]}
    assert chunk["tokens"] == {"min": [1, 1], "opt": [4, 64], "max": [4, 100]}
    # Every state is an input of every profile, with its fixed sizes.
    assert decode["conv_state_0"] == {"min": [1, 1, 6], "opt": [4, 1, 6], "max": [4, 1, 6]}
    assert set(decode) == {"tokens", "conv_state_0", "c_state_0", "c_state_1"} == set(chunk)


def test_profiles_of_seq2seq_graphs(tmp_path):
    torch.manual_seed(0)
    model = QRNNSeq2Seq(10, 11, embed_size=4, hidden_size=4, num_layers=1, encoder_window=2, decoder_window=1)
    export_bundle(model, tmp_path, fo_pool="portable", verify=False)
    man = load_manifest(tmp_path)
    enc = engine_profiles(man, "encoder", max_batch=2, max_chunk=32, max_source=50)
    dec = engine_profiles(man, "decoder", max_batch=2, max_chunk=32, max_source=50)
    assert [p["name"] for p in enc] == ["chunk"] and [p["name"] for p in dec] == ["decode", "chunk"]
    assert dec[0]["shapes"]["memory"]["max"][1] == 50 and dec[0]["shapes"]["tgt"]["max"] == [2, 1]
    with pytest.raises(ExportError):
        engine_profiles(man, "decoder", max_batch=0)


def test_pick_profile():
    assert pick_profile(["decode", "chunk"], 1) == 0
    assert pick_profile(["decode", "chunk"], 7) == 1
    assert pick_profile(["chunk"], 1) == 0
    with pytest.raises(StreamError, match="max-chunk"):
        pick_profile(["decode"], 5)


@no_trt
def test_build_engines_without_tensorrt_is_one_build_error(lm_bundle):
    with pytest.raises(BuildError, match="TensorRT is not installed"):
        build_engines(lm_bundle)
    with pytest.raises(ExportError, match="--plugin"):
        build_engines(lm_bundle, plugin="jit")


@no_trt
def test_cli_build_engine_without_tensorrt_exits_2_with_one_line(lm_bundle):
    res = subprocess.run([sys.executable, "-m", "qrnn_deploy", "build-engine", str(lm_bundle), "--fp16"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "TensorRT is not installed" in res.stderr


def test_cli_build_engine_on_a_missing_bundle(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(tmp_path / "nope")])
    assert e.value.code == 2 and "bundle not found" in capsys.readouterr().err


def test_tensorrt_backend_without_engines_says_build_them(lm_bundle):
    with pytest.raises(BundleError, match="build-engine"):
        load_bundle(lm_bundle, backend="tensorrt")


@no_trt
def test_tensorrt_backend_without_tensorrt_is_one_build_error(lm_bundle, tmp_path):
    import shutil
    b = tmp_path / "b"
    shutil.copytree(lm_bundle, b)
    (b / "lm.fp32.plan").write_bytes(b"not an engine")
    man = load_manifest(b)
    man.engines["lm"] = EngineSpec(file="lm.fp32.plan", plugin="none", profiles=[])
    man.write(b)
    with pytest.raises(BuildError, match="needs TensorRT"):
        load_bundle(b, backend="tensorrt")


def test_runtime_backend_module_imports_without_torch():
    code = ("import sys; import qrnn_deploy.runtime.tensorrt_backend as m; "
            "assert 'torch' not in sys.modules and 'tensorrt' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
