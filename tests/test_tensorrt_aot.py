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


@needs_nvcc
def test_register_plugin_wires_the_plain_python_parts(monkeypatch, tmp_path):
    """register_plugin against a stand-in of `tensorrt.plugin` that records the decorated functions
    (TensorRT itself is not installed): the shape function, the autotune combinations and the
    aot_impl must return what the real module expects, built from this module's own functions."""
    import sys
    import types

    import inspect
    import typing

    recorded = {}

    class Desc:
        def __init__(self, shape_expr, dtype):
            self.shape_expr, self.dtype = tuple(shape_expr), dtype

    class KernelLaunchParams:
        pass

    class SymExprs(list):
        pass

    class SymIntExprs(SymExprs):
        @classmethod
        def from_tuple(cls, items):
            return cls(items)

    class AutoTuneCombination:
        def __init__(self, spec):
            self.spec = spec

    # The checks tensorrt.plugin makes of the decorated functions' signatures (TensorRT 10.x
    # tensorrt/plugin/_validate.py, as documented): annotations are objects, not strings.
    def is_tuple_of(ann, cls, n=None):
        args = typing.get_args(ann)
        return (typing.get_origin(ann) is tuple and all(inspect.isclass(a) and issubclass(a, cls) for a in args)
                and (n is None or len(args) == n))

    def check(kind, fn):
        sig = inspect.signature(fn)
        ps = sig.parameters
        if kind == "register":
            assert all(p.annotation is not inspect.Parameter.empty for p in ps.values())
            tensors = [n for n, p in ps.items() if inspect.isclass(p.annotation) and issubclass(p.annotation, Desc)]
            assert tensors == ["gates", "c0"], sig
            assert all(ps[n].annotation in (int, float, bytes, bool, str) for n in ps if n not in tensors), sig
            assert is_tuple_of(sig.return_annotation, Desc, 2), sig
        else:
            if ps["outputs"].annotation is not inspect.Parameter.empty:
                assert is_tuple_of(ps["outputs"].annotation, Desc), sig
            for n in ("gates", "c0"):
                a = ps[n].annotation
                assert a is inspect.Parameter.empty or (inspect.isclass(a) and issubclass(a, Desc)), sig
            reg = inspect.signature(recorded["register"][1]).parameters
            for n in ("pooling", "batch_first", "reverse"):
                if n in ps and ps[n].annotation is not inspect.Parameter.empty:
                    assert ps[n].annotation == reg[n].annotation, sig
        if kind == "autotune":
            assert list(ps) == ["gates", "c0", "outputs"], sig
            ret = sig.return_annotation
            assert ret is inspect.Parameter.empty or (
                typing.get_origin(ret) is list and all(issubclass(a, AutoTuneCombination) for a in typing.get_args(ret))), sig
        if kind == "aot_impl":
            assert list(ps) == ["gates", "c0", "pooling", "batch_first", "reverse", "outputs", "tactic"], sig
            ret = sig.return_annotation
            assert typing.get_origin(ret) is tuple and len(typing.get_args(ret)) == 4, sig
            a = typing.get_args(ret)
            assert a[0] in (str, bytes) and a[1] in (str, bytes), sig
            assert issubclass(a[2], KernelLaunchParams) and issubclass(a[3], SymExprs), sig

    def deco(kind):
        def outer(plugin_id):
            def inner(fn):
                check(kind, fn)
                recorded[kind] = (plugin_id, fn)
                return fn
            return inner
        return outer

    trtp = types.ModuleType("tensorrt.plugin")
    trtp.register, trtp.autotune, trtp.aot_impl = deco("register"), deco("autotune"), deco("aot_impl")
    trtp.TensorDesc = Desc
    trtp.from_shape_expr = lambda shape, dtype: Desc(shape, dtype)
    trtp.AutoTuneCombination = AutoTuneCombination
    trtp.KernelLaunchParams = KernelLaunchParams
    trtp.SymIntExprs = SymIntExprs
    trtp.SymInt32 = lambda e: ("i32", e)
    trt = types.ModuleType("tensorrt")
    trt.float16, trt.float32, trt.plugin = "f16", "f32", trtp
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(aot, "_registered", False)
    monkeypatch.setenv("QRNN_CACHE_DIR", str(tmp_path))

    aot.register_plugin()
    assert {k: v[0] for k, v in recorded.items()} == {k: "qrnn::FoPool" for k in ("register", "autotune", "aot_impl")}
    gates, c0 = Desc((3, 7, 20), "f16"), Desc((3, 5), "f16")  # batch-first [B=3, T=7, 4*H]
    # The ONNX parser hands string attributes over with their terminating NUL.
    h, c_last = recorded["register"][1](gates, c0, "ifo\x00", 1, 0)
    assert h.shape_expr == (3, 7, 5) and c_last.shape_expr == (3, 5) and gates.shape_expr == (3, 7, 20)
    assert [c.spec for c in recorded["autotune"][1](gates, c0, ())] == ["FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16"]
    name, ptx, params, extra = recorded["aot_impl"][1](gates, c0, "ifo\x00", 1, 0, (h, c_last), 0)
    assert name == b"qrnn_fo_pool_aot_f16" and b".entry qrnn_fo_pool_aot_f16(" in ptx
    assert (params.grid_x, params.block_x, params.shared_mem) == (1, 128, 0)
    assert list(extra) == [("i32", v) for v in (7, 3, 5, 4, 1, 0)]
    aot.register_plugin()  # idempotent
