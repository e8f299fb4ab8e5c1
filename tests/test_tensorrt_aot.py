"""The TensorRT ahead-of-time FoPool plugin's plain-Python part: PTX and launch parameters.

Runs without TensorRT and without a GPU. The PTX must pass ptxas for sm_80 and sm_90 and have
the calling convention TensorRT's AOT plugins use (inputs, int32 scalars, outputs). The launch
of this very PTX with these very parameters is checked on a GPU by scripts/gpu_check.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from qrnn_deploy.errors import BuildError, ConfigError
from qrnn_deploy.export import tensorrt_aot as aot

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found: no PTX is generated here")


def test_launch_parameters_follow_the_kernel_header():
    assert aot.block_size() == 128  # QRNN_FO_POOL_BLOCK in plugins/cuda/fo_pool_kernels.cuh
    for (T, B, H), grid in {(1, 1, 1): 1, (7, 2, 64): 1, (7, 2, 65): 2, (512, 8, 320): 20,
                            (3, 256, 1024): 2048, (5, 3, 100): 3}.items():
        p = aot.launch_params(T, B, H, "fo")
        assert p.grid == (grid, 1, 1) and p.block == (128, 1, 1) and p.shared_mem == 0
        assert p.grid[0] * p.block[0] >= B * H > (p.grid[0] - 1) * p.block[0]
        assert p.extra_args == (T, B, H, 3, 0, 0)
    assert aot.launch_params(4, 2, 8, "ifo", batch_first=True, reverse=True).extra_args == (4, 2, 8, 4, 1, 1)
    assert aot.launch_params(4, 2, 8, "f").extra_args[3] == 2


def test_launch_parameters_work_on_symbolic_shapes():
    # TensorRT passes shape expressions; only +, -, * and // are used, so any such type works.
    class Sym:
        def __init__(self, s):
            self.s = s

        def _op(self, o, sym):
            return Sym(f"({self.s}{sym}{o.s if isinstance(o, Sym) else o})")

        __add__ = lambda self, o: self._op(o, "+")  # noqa: E731
        __sub__ = lambda self, o: self._op(o, "-")  # noqa: E731
        __mul__ = lambda self, o: self._op(o, "*")  # noqa: E731
        __floordiv__ = lambda self, o: self._op(o, "//")  # noqa: E731

    p = aot.launch_params(Sym("T"), Sym("B"), Sym("H"), "fo")
    assert p.grid[0].s == "(((B*H)+127)//128)"
    assert p.extra_args[0].s == "T"


def test_kernel_names_and_bad_arguments():
    assert aot.kernel_name("float32") == "qrnn_fo_pool_aot_f32"
    assert aot.kernel_name("float16", with_c0=False) == "qrnn_fo_pool_aot_f16_noc0"
    with pytest.raises(ConfigError):
        aot.kernel_name("int8")
    with pytest.raises(ConfigError):
        aot.launch_params(1, 1, 1, "lstm")
    with pytest.raises(ConfigError):
        aot.compile_ptx("sm_80")


def test_missing_nvcc_is_a_build_error(monkeypatch, tmp_path):
    monkeypatch.setenv("QRNN_NVCC", str(tmp_path / "nvcc-missing"))
    with pytest.raises(BuildError):
        aot.compile_ptx("compute_80", cache_dir=tmp_path)


def test_register_plugin_without_tensorrt_is_a_build_error():
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed: this checks the machines without it")
    except ImportError:
        pass
    with pytest.raises(BuildError, match="TensorRT"):
        aot.register_plugin()


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: no PTX is generated here")
    return aot.compile_ptx("compute_80", cache_dir=tmp_path_factory.mktemp("ptx"))


def _entry_params(ptx_text: str, name: str) -> list[str]:
    m = re.search(rf"\.visible \.entry {name}\(\s*(.*?)\)", ptx_text, re.S)
    assert m, f"entry {name} not in the PTX"
    return re.findall(r"\.param \.(\w+) ", m.group(1))


@needs_nvcc
def test_ptx_has_every_entry_with_the_tensorrt_calling_convention(ptx):
    assert re.search(r"^\.target sm_80", ptx, re.M)
    for dtype in ("float32", "float16", "bfloat16"):
        # gates, c0 (pointers), T, B, H, P, batch_first, reverse (int32), h, c_last (pointers)
        assert _entry_params(ptx, aot.kernel_name(dtype)) == ["u64", "u64"] + ["u32"] * 6 + ["u64", "u64"]
        assert _entry_params(ptx, aot.kernel_name(dtype, False)) == ["u64"] + ["u32"] * 6 + ["u64", "u64"]
    # The launch bound matches the block the launch parameters give.
    assert f".maxntid {aot.block_size()}, 1, 1" in ptx


@needs_nvcc
@pytest.mark.parametrize("sm", ["sm_80", "sm_90"])
def test_ptx_assembles_for_ampere_and_hopper(ptx, sm, tmp_path):
    src = tmp_path / "fo_pool.ptx"
    src.write_text(ptx)
    ptxas = shutil.which("ptxas") or str(aot.Path(aot._nvcc(None)).parent / "ptxas")
    res = subprocess.run(["nice", ptxas, f"-arch={sm}", "-o", str(tmp_path / "out.cubin"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "out.cubin").stat().st_size > 0


@needs_nvcc
def test_aot_kernel_returns_name_ptx_and_params_together(tmp_path, monkeypatch):
    monkeypatch.setenv("QRNN_CACHE_DIR", str(tmp_path))
    name, text, params = aot.aot_kernel(10, 4, 300, "ifo", batch_first=True, dtype="float16", with_c0=False)
    assert name == "qrnn_fo_pool_aot_f16_noc0" and f".entry {name}(" in text
    assert params.grid == (10, 1, 1) and params.extra_args == (10, 4, 300, 4, 1, 0)
    # Cached: a second call reads the file instead of running nvcc.
    assert aot.compile_ptx("compute_80") == text
    assert len(list((tmp_path / "ptx").glob("*.ptx"))) == 1
