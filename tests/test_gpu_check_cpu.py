"""scripts/gpu_check.py's own logic, run on the CPU with tiny sizes (--cpu --quick).

The GPU parts (kernel C API, AOT PTX launch, CUDA events) need a device and are reported as
skipped here; everything else (reference, parity bookkeeping, benchmarks, the markdown table)
runs, and a deliberately wrong fo_pool must make the parity check fail.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_run_writes_the_report(gpu_check, tmp_path):
    assert gpu_check.main(["--cpu", "--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert res["parity"]["ok"] and res["parity"]["max_rel_error"]["op"]["cases"] == 144  # 2 sizes x 3 dtypes x 3 poolings x 8
    assert res["parity"]["max_rel_error"]["c_api"] == "skipped (no GPU)"
    assert {r["dtype"] for r in res["bandwidth"]} == {"float32", "float16"}
    assert all(r["speedup"] > 0 for r in res["figure4"])
    assert [r["model"] for r in res["lm_training"]] == ["QRNN", "LSTM"]
    md = (tmp_path / "benchmarks-gpu.md").read_text()
    assert "**PASS**" in md and "| 8 | **" in md and "Figure 4" in md and "| QRNN |" in md


def test_parity_catches_a_wrong_kernel(gpu_check, monkeypatch):
    real = gpu_check.fo_pool

    def off_by_a_bit(gates, c0, pooling, batch_first, reverse):
        h, c = real(gates, c0, pooling, batch_first, reverse)
        return h * 1.01, c

    monkeypatch.setattr(gpu_check, "fo_pool", off_by_a_bit)
    res = gpu_check.parity(torch.device("cpu"), quick=True)
    assert not res["ok"] and res["failures"][0]["path"] == "op"


def test_unwritten_outputs_count_as_failures(gpu_check):
    want = (torch.ones(2), None)
    assert gpu_check.rel_errors((torch.full((2,), float("nan")), None), want)[0] == float("inf")
    assert gpu_check.rel_errors((torch.ones(3), None), want)[0] == float("inf")


def test_without_a_gpu_the_script_says_so(gpu_check, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert gpu_check.main(["--out", "/nonexistent-not-created"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_aot_kernel_arguments_are_packed_in_tensorrt_order(gpu_check):
    import ctypes

    from qrnn_deploy.export.tensorrt_aot import launch_params
    params = launch_params(7, 3, 5, "ifo", batch_first=True, reverse=False)
    args, argv = gpu_check.pack_args(params, [0x1000, 0x2000], [0x3000, 0x4000])
    read_ptr = lambda i: ctypes.c_void_p.from_address(argv[i]).value  # noqa: E731
    read_int = lambda i: ctypes.c_int32.from_address(argv[i]).value  # noqa: E731
    assert len(argv) == 10
    assert [read_ptr(0), read_ptr(1)] == [0x1000, 0x2000]
    assert [read_int(i) for i in range(2, 8)] == [7, 3, 5, 4, 1, 0]  # T, B, H, P, batch_first, reverse
    assert [read_ptr(8), read_ptr(9)] == [0x3000, 0x4000]


def test_a_crashing_section_is_reported_and_the_others_still_run(gpu_check, monkeypatch, tmp_path):
    def broken(device, quick):
        raise RuntimeError("cuDNN went away")

    monkeypatch.setattr(gpu_check, "figure4", broken)
    monkeypatch.setattr(gpu_check, "lm_training_step", lambda device, quick: [
        {"model": "QRNN", "step_ms": 1.0, "hidden": 8, "batch": 1, "seq": 2, "vocab": 3, "speedup_vs_lstm": 2.0},
        {"model": "LSTM", "step_ms": 2.0, "hidden": 8, "batch": 1, "seq": 2, "vocab": 3, "speedup_vs_lstm": 1.0}])
    assert gpu_check.main(["--cpu", "--quick", "--out", str(tmp_path)]) == 1
    md = (tmp_path / "benchmarks-gpu.md").read_text()
    assert "figure4: **FAILED** (RuntimeError: cuDNN went away)" in md
    assert "**PASS**" in md and "copy GB/s" in md and "| QRNN | 1.0 | 2.0x |" in md


def test_a_raising_kernel_is_a_failed_case_not_a_crash(gpu_check, monkeypatch):
    def raising(*a, **k):
        raise RuntimeError("launch failed")

    monkeypatch.setattr(gpu_check, "run_op", raising)
    res = gpu_check.parity(torch.device("cpu"), quick=True)
    assert not res["ok"] and res["failures"][0]["exception"] == "RuntimeError: launch failed"


def test_sweep_report_keeps_the_other_variants_when_one_fails(gpu_check):
    ok = {"variant": "unroll 2", "defines": "UNROLL=2", "parity": "PASS", "fwd 16x8x64 float32": 0.01,
          "bwd 16x8x64 float32": 0.02}
    lines = gpu_check._md_sweep([{"variant": "default", "defines": "(none)", "error": "nvcc: x"}, ok])
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0] == "| variant | defines | parity | fwd 16x8x64 float32 | bwd 16x8x64 float32 |"
    assert all(ln.count("|") == table[0].count("|") for ln in table)
    assert table[2].startswith("| default | (none) | failed: nvcc: x |") and "| 0.01 | 0.02 |" in table[3]
    lines = gpu_check._md_sweep([dict(ok, variant="default"), {"variant": "u8", "defines": "U=8",
                                                                "error": "RuntimeError: launch failed"}, ok])
    assert "| 0.01 (1.00) | 0.02 (1.00) |" in lines[4] and "failed: RuntimeError" in lines[5]
