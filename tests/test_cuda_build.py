"""The CUDA FoPool kernels on machines without a GPU (CI included).

- every .cu file under plugins/ compiles with nvcc for sm_80 and sm_90 (-c only);
- the kernels' own column functions, run on the CPU through plugins/cuda/fo_pool_host_check.cu,
  match the reference fo_pool_ref (forward and backward) for every dtype / pooling / layout;
- the PyTorch glue builds the ctypes library and its C API answers without a device.
Skipped, with the reason, when nvcc is absent. The launch on a real GPU: tests/test_cuda_gpu.py
and scripts/gpu_check.sh.
"""

from __future__ import annotations

import ctypes
import itertools
import subprocess
from pathlib import Path

import pytest
import torch

from qrnn_deploy.errors import BuildError
from qrnn_deploy.nn import _cuda_kernels
from qrnn_deploy.nn.fo_pool import fo_pool_ref

ROOT = Path(__file__).resolve().parents[1]
NVCC = _cuda_kernels.find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources are not compiled here")

# Sources only: a local CMake build directory (plugins/build*) holds CMake's own probe files.
CU_FILES = sorted(p.relative_to(ROOT) for p in (ROOT / "plugins").rglob("*.cu")
                  if not any(part.startswith("build") for part in p.relative_to(ROOT / "plugins").parts[:-1]))
CODES = _cuda_kernels.DTYPE_CODES
P_OF = {"f": 2, "fo": 3, "ifo": 4}


def _nice(cmd):
    return ["nice", "-n", "10", *cmd]


@pytest.mark.parametrize("source", [str(p) for p in CU_FILES])
def test_every_cu_file_compiles_for_sm80_and_sm90(source, tmp_path):
    cmd = [NVCC, "-c", "-std=c++17", "-O2", "-Xcompiler", "-fPIC", "-I", str(ROOT / "plugins" / "cuda"),
           "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
           "-Werror", "all-warnings", "-o", str(tmp_path / "out.o"), str(ROOT / source)]
    res = subprocess.run(_nice(cmd), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


def test_kernel_registers_and_spills_for_sm90(tmp_path):
    # What docs/benchmarks-gpu.md (run 4) chose: the one-column backward fits 8 blocks of 128
    # threads a multiprocessor (64 registers) without spilling; no kernel spills.
    import re
    cmd = [NVCC, "-c", *_cuda_kernels.nvcc_flags("sm_90"), "-Xptxas", "-v", "-o", str(tmp_path / "k.o"),
           str(ROOT / "plugins" / "cuda" / "fo_pool_cuda.cu")]
    res = subprocess.run(_nice(cmd), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    kernels, name, spill = {}, None, None
    for line in res.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for 'sm_90'", line):
            name = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spill = int(m.group(1)) + int(m.group(2))
        elif (m := re.search(r"Used (\d+) registers", line)) and name:
            kernels[name], name = (int(m.group(1)), spill), None
    # One-column backward kernels of float32 / float16 / bfloat16 (float64, "Idd", is left free).
    backward_one_column = {k: v for k, v in kernels.items() if "backward_kernel" in k and "Li1E" in k and "Idd" not in k}
    assert len(kernels) == 22 and len(backward_one_column) == 5, sorted(kernels)
    assert all(regs <= 64 for regs, _ in backward_one_column.values()), backward_one_column
    assert all(spilled == 0 for _, spilled in kernels.values()), kernels


def test_the_kernel_sources_are_found():
    assert Path("plugins/cuda/fo_pool_cuda.cu") in CU_FILES
    assert Path("plugins/cuda/fo_pool_aot.cu") in CU_FILES


# ---- the kernel arithmetic, run on the CPU ---------------------------------------------------


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("host") / "libfo_pool_host_check.so"
    cmd = [NVCC, "-O2", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-o", str(out),
           str(ROOT / "plugins" / "cuda" / "fo_pool_host_check.cu")]
    res = subprocess.run(_nice(cmd), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lib = ctypes.CDLL(str(out))
    vp, i64, c = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.qrnn_fo_pool_host_forward.argtypes = [c, c, vp, vp, vp, vp, i64, i64, i64, c, c, c, c]
    lib.qrnn_fo_pool_host_backward.argtypes = [c, c, vp, vp, vp, vp, vp, vp, i64, i64, i64, c, c, c, c]
    return lib


def _p(t):
    return None if t is None else t.data_ptr()


def _host_run(lib, gates, c0, grad_h, grad_c_last, pooling, batch_first, reverse, state_dtype=None, vec=0):
    """Kernel group functions on the CPU; outputs start as NaN so unwritten entries show.
    vec = 0: columns per thread as the launchers choose them; else that many."""
    P = P_OF[pooling]
    T, B = (gates.shape[1], gates.shape[0]) if batch_first else gates.shape[:2]
    H = gates.shape[2] // P
    sdt = state_dtype or gates.dtype
    h = torch.full(gates.shape[:2] + (H,), float("nan"), dtype=gates.dtype)
    c_last = torch.full((B, H), float("nan"), dtype=sdt)
    args = (T, B, H, P, int(batch_first), int(reverse), vec)
    assert lib.qrnn_fo_pool_host_forward(CODES[gates.dtype], CODES[sdt], _p(gates), _p(c0), _p(h), _p(c_last),
                                         *args) == 0
    dg = torch.full_like(gates, float("nan"))
    dc0 = None if c0 is None else torch.full((B, H), float("nan"), dtype=sdt)
    assert lib.qrnn_fo_pool_host_backward(CODES[gates.dtype], CODES[sdt], _p(grad_h), _p(grad_c_last), _p(gates),
                                          _p(c0), _p(dg), _p(dc0), *args) == 0
    return h, c_last, dg, dc0


def _reference(gates, c0, grad_h, grad_c_last, pooling, batch_first, reverse):
    g = gates.double().requires_grad_()
    c = None if c0 is None else c0.double().requires_grad_()
    h, cl = fo_pool_ref(g, c, pooling, batch_first, reverse)
    ((h * grad_h.double()).sum() + (cl * grad_c_last.double()).sum()).backward()
    return h.detach(), cl.detach(), g.grad, (None if c is None else c.grad)


TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 3e-3, torch.bfloat16: 2e-2}


# A thread's columns in the wide form (8-byte accesses): 2 float32, 4 16-bit; float64 has none.
WIDE = {torch.float32: 2, torch.float16: 4, torch.bfloat16: 4, torch.float64: 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("H, vec, width", [(5, 0, 1), (16, 0, "wide"), (16, 1, 1), (6, 0, "wide if it divides"),
                                           (16, "wide", "wide")])
def test_kernel_arithmetic_matches_the_reference(host_lib, dtype, H, vec, width):
    wide = WIDE[dtype]
    vec = wide if vec == "wide" else vec
    width = {"wide": wide, "wide if it divides": wide if H % wide == 0 else 1}.get(width, width)
    gen = torch.Generator().manual_seed(0)
    for pooling, bf, rev, with_c0 in itertools.product(["f", "fo", "ifo"], [False, True], [False, True],
                                                       [False, True]):
        T, B = 9, 3  # T not a multiple of the kernels' unroll of 4
        P = P_OF[pooling]
        shape = (B, T, P * H) if bf else (T, B, P * H)
        gates = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
        c0 = torch.randn(B, H, generator=gen, dtype=torch.float64).to(dtype) if with_c0 else None
        grad_h = torch.randn(shape[:2] + (H,), generator=gen, dtype=torch.float64).to(dtype)
        grad_c_last = torch.randn(B, H, generator=gen, dtype=torch.float64).to(dtype)
        got = _host_run(host_lib, gates, c0, grad_h, grad_c_last, pooling, bf, rev, vec=vec)
        assert host_lib.qrnn_fo_pool_host_last_width() == width
        want = _reference(gates, c0, grad_h, grad_c_last, pooling, bf, rev)
        # Inputs are rounded to `dtype` before both runs, so the only difference is the rounding
        # of the outputs and the kernel's float32 arithmetic.
        for name, a, b in zip(["h", "c_last", "d gates", "d c0"], got, want):
            if b is None:
                assert a is None
                continue
            err = (a.double() - b).abs().max().item()
            assert err <= TOL[dtype] * max(1.0, b.abs().max().item()), (name, pooling, bf, rev, with_c0, err)


def test_misaligned_buffers_fall_back_to_narrower_accesses(host_lib):
    # A view one element into its storage is 4-byte aligned: 8- and 16-byte accesses would fault
    # on a GPU, so the rule takes one column per thread, and the result is still the reference's.
    T, B, H = 5, 2, 16
    gates = torch.randn(T * B * 3 * H + 1)[1:].view(T, B, 3 * H)
    grad_h, gcl = torch.randn(T, B, H), torch.randn(B, H)
    got = _host_run(host_lib, gates, None, grad_h, gcl, "fo", False, False)
    assert host_lib.qrnn_fo_pool_host_last_width() == 1
    want = _reference(gates, None, grad_h, gcl, "fo", False, False)
    for a, b in zip(got[:3], want[:3]):
        assert (a.double() - b).abs().max() < 1e-5
    # Two elements in (8-byte aligned): two columns per thread.
    gates2 = torch.randn(T * B * 3 * H + 2)[2:].view(T, B, 3 * H)
    _host_run(host_lib, gates2, None, grad_h, gcl, "fo", False, False)
    assert host_lib.qrnn_fo_pool_host_last_width() == 2


def test_a_forced_width_must_divide_h(host_lib):
    gates = torch.randn(4, 2, 3 * 6)
    h, cl = torch.empty(4, 2, 6), torch.empty(2, 6)
    args = (4, 2, 6, 3, 0, 0)
    assert host_lib.qrnn_fo_pool_host_forward(0, 0, _p(gates), None, _p(h), _p(cl), *args, 4) == 3  # not float32's
    assert host_lib.qrnn_fo_pool_host_forward(0, 0, _p(gates), None, _p(h), _p(cl), *args, 3) == 3
    assert host_lib.qrnn_fo_pool_host_forward(0, 0, _p(gates), None, _p(h), _p(cl), *args, 2) == 0
    h16 = torch.empty(4, 2, 6, dtype=torch.float16)
    g16 = gates.half()
    assert host_lib.qrnn_fo_pool_host_forward(1, 1, _p(g16), None, _p(h16), None, *args, 4) == 3  # 4 does not divide 6


def test_float32_state_beside_float16_gates_keeps_full_precision(host_lib):
    T, B, H = 6, 2, 4
    gates = torch.randn(T, B, 3 * H, dtype=torch.float64).half()
    c0 = torch.randn(B, H) * 3
    grad_h = torch.randn(T, B, H).half()
    grad_c_last = torch.randn(B, H)
    h, c_last, dg, dc0 = _host_run(host_lib, gates, c0, grad_h, grad_c_last, "fo", False, False,
                                   state_dtype=torch.float32)
    rh, rc, rdg, rdc0 = _reference(gates, c0, grad_h, grad_c_last, "fo", False, False)
    assert c_last.dtype == torch.float32 and (c_last.double() - rc).abs().max() < 1e-5
    assert (dc0.double() - rdc0).abs().max() < 1e-4


def test_zoneout_infinite_gates_give_exact_values_and_zero_gradients(host_lib):
    # Zoneout writes f = +inf (and i = -inf for ifo): the unit keeps c exactly, gradients are 0.
    T, B, H = 5, 2, 3
    gates = torch.randn(T, B, 4 * H)
    gates[2, :, H:2 * H] = float("inf")
    gates[2, :, 3 * H:] = float("-inf")
    c0 = torch.randn(B, H)
    h, c_last, dg, dc0 = _host_run(host_lib, gates, c0, torch.randn(T, B, H), torch.randn(B, H), "ifo", False, False)
    assert torch.isfinite(dg).all() and torch.isfinite(dc0).all()
    assert (dg[2, :, H:2 * H] == 0).all() and (dg[2, :, 3 * H:] == 0).all()
    ref_h, _ = fo_pool_ref(gates, c0, "ifo")
    assert torch.allclose(h, ref_h, atol=1e-6)


def test_empty_time_gives_c0_and_passes_the_gradient_through(host_lib):
    B, H = 2, 3
    gates = torch.empty(0, B, 3 * H)
    c0 = torch.randn(B, H)
    gcl = torch.randn(B, H)
    h, c_last, dg, dc0 = _host_run(host_lib, gates, c0, torch.empty(0, B, H), gcl, "fo", False, False)
    assert h.shape == (0, B, H) and torch.equal(c_last, c0) and torch.equal(dc0, gcl)


# ---- the PyTorch glue's library --------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def torch_lib_path(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QRNN_CACHE_DIR", str(cache))
        return _cuda_kernels.build("sm_80")


def test_glue_library_builds_and_answers_without_a_device(torch_lib_path):
    lib = _cuda_kernels._load(torch_lib_path)
    assert lib.qrnn_fo_pool_cuda_block_size() == 128
    # An unsupported dtype pair is refused before any launch, with the runtime's message.
    rc = lib.qrnn_fo_pool_cuda_forward(0, 1, None, None, None, None, 4, 2, 3, 3, 0, 0, None)
    assert rc != 0 and lib.qrnn_fo_pool_cuda_error_string(rc).decode() == "invalid argument"
    rc = lib.qrnn_fo_pool_cuda_forward(0, 0, None, None, None, None, 4, 2, 3, 5, 0, 0, None)  # P = 5
    assert rc != 0
    # Nothing to do: no launch, success.
    assert lib.qrnn_fo_pool_cuda_forward(0, 0, None, None, None, None, 4, 0, 3, 3, 0, 0, None) == 0
    assert lib.qrnn_fo_pool_cuda_backward_workspace_size(1, 10, 4, 8) == 10 * 4 * 8 * 4
    assert lib.qrnn_fo_pool_cuda_backward_workspace_size(3, 10, 4, 8) == 10 * 4 * 8 * 8


def test_glue_library_gives_threads_several_columns_only_for_large_launches(torch_lib_path):
    lib = _cuda_kernels._load(torch_lib_path)
    width = lambda dtype, B, H: lib.qrnn_fo_pool_cuda_columns_per_thread(CODES[dtype], B, H)  # noqa: E731
    assert width(torch.float32, 256, 1024) == 2 and width(torch.float16, 256, 1024) == 4
    assert width(torch.bfloat16, 256, 1024) == 4 and width(torch.float64, 256, 1024) == 1
    # 65,536 threads at least: B * H = 131,072 keeps 2 float32 columns a thread, not 4 16-bit ones.
    assert width(torch.float32, 64, 2048) == 2 and width(torch.float16, 64, 2048) == 1
    assert width(torch.float32, 8, 320) == 1  # the paper's small batches: one column a thread
    assert width(torch.float32, 257, 1023) == 1  # H odd
    assert width(torch.float16, 2048, 66) == 1  # 4 does not divide H
    assert lib.qrnn_fo_pool_cuda_columns_per_thread(9, 256, 1024) == 0


def test_glue_build_is_cached_and_keyed(torch_lib_path, cache, monkeypatch):
    monkeypatch.setenv("QRNN_CACHE_DIR", str(cache))
    mtime = torch_lib_path.stat().st_mtime_ns
    assert _cuda_kernels.build("sm_80") == torch_lib_path and torch_lib_path.stat().st_mtime_ns == mtime
    assert torch_lib_path.parent.name.startswith("sm_80-")
    assert torch_lib_path.is_relative_to(cache / "cuda")


def test_missing_nvcc_is_a_build_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QRNN_NVCC", str(tmp_path / "no-nvcc"))
    assert _cuda_kernels.find_nvcc() is None
    with pytest.raises(BuildError, match="nvcc not found"):
        _cuda_kernels.build("sm_90", out_dir=tmp_path)
