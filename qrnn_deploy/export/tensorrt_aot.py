"""TensorRT ahead-of-time (AOT) plugin for FoPool: the kernel's PTX and its launch parameters.

An engine built with the AOT plugin embeds the FoPool kernel as PTX, so it runs from C++ (or
Triton) with no plugin library and no Python. The PTX is that of plugins/cuda/fo_pool_aot.cu,
the extern "C" entry points over the one kernel source plugins/cuda/fo_pool_kernels.cuh.

Two layers:
- plain Python, no TensorRT (tested on CPU machines; the GPU check launches exactly this PTX
  with exactly these parameters): `compile_ptx`, `kernel_name`, `launch_params`, `aot_kernel`;
- `register_plugin()`: registers `qrnn::FoPool` with `tensorrt.plugin` (shape function,
  autotune, aot_impl), importing tensorrt only then. TensorRT is not installed on our
  development machines, so this layer is written against the documented `tensorrt.plugin` API
  (TensorRT 10.x/11.x) and has not run here.

Kernel calling convention (TensorRT's AOT convention: inputs, extra int32 scalars, outputs):
    <name>(gates, c0, T, B, H, P, batch_first, reverse, h, c_last)   (the _noc0 names: no c0)
Launch: one thread per (b, h) column: block = QRNN_FO_POOL_BLOCK, grid = ceil(B*H / block).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from qrnn_deploy._native import cache_root, cuda_sources_dir
from qrnn_deploy.errors import BuildError, ConfigError

AOT_SOURCE = "fo_pool_aot.cu"
KERNEL_HEADER = "fo_pool_kernels.cuh"
POOLING_P = {"f": 2, "fo": 3, "ifo": 4}
DTYPE_SUFFIX = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}
PLUGIN_ID = "qrnn::FoPool"  # namespace::name, as the C++ plugin (plugins/tensorrt) registers it


def _header_constant(name: str) -> int:
    """A #define of the kernel header: the launch rule has one home, the kernel source."""
    text = (cuda_sources_dir() / KERNEL_HEADER).read_text()
    m = re.search(rf"^#define\s+{name}\s+(\d+)\s*$", text, re.M)
    if not m:
        raise BuildError(f"{KERNEL_HEADER} does not define {name}")
    return int(m.group(1))


def block_size() -> int:
    """Threads per block of the FoPool kernels (QRNN_FO_POOL_BLOCK of fo_pool_kernels.cuh)."""
    return _header_constant("QRNN_FO_POOL_BLOCK")


def kernel_name(dtype: str = "float32", with_c0: bool = True) -> str:
    """Entry point of fo_pool_aot.cu for gates of `dtype` ("float32", "float16", "bfloat16")."""
    if dtype not in DTYPE_SUFFIX:
        raise ConfigError(f"FoPool AOT kernel: unsupported dtype {dtype!r}: use one of {sorted(DTYPE_SUFFIX)}")
    return f"qrnn_fo_pool_aot_{DTYPE_SUFFIX[dtype]}" + ("" if with_c0 else "_noc0")


@dataclass(frozen=True)
class LaunchParams:
    """How to launch one FoPool AOT kernel. Entries are ints, or TensorRT symbolic expressions
    when `launch_params` is given shape expressions (the same arithmetic either way)."""

    grid: tuple  # (x, y, z)
    block: tuple  # (x, y, z)
    shared_mem: int
    extra_args: tuple  # the int32 scalars, in kernel order: T, B, H, P, batch_first, reverse


def launch_params(T: Any, B: Any, H: Any, pooling: str = "fo", batch_first: bool = False,
                  reverse: bool = False) -> LaunchParams:
    """Launch parameters for gates [T, B, P*H] ([B, T, P*H] if batch_first).

    T, B, H are ints or TensorRT symbolic integers (only +, -, * and // are used on them).
    """
    if pooling not in POOLING_P:
        raise ConfigError(f"unknown pooling {pooling!r}: use one of 'f', 'fo', 'ifo'")
    block = block_size()
    columns = B * H
    grid_x = (columns + (block - 1)) // block
    return LaunchParams(grid=(grid_x, 1, 1), block=(block, 1, 1), shared_mem=0,
                        extra_args=(T, B, H, POOLING_P[pooling], int(bool(batch_first)), int(bool(reverse))))


def _nvcc(nvcc: Optional[str]) -> str:
    found = nvcc or os.environ.get("QRNN_NVCC") or shutil.which("nvcc")
    if not found:
        home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
        found = str(home / "bin" / "nvcc") if (home / "bin" / "nvcc").is_file() else None
    if not found:
        raise BuildError("nvcc not found: the FoPool AOT plugin needs it to make PTX (install the CUDA "
                         "toolkit or set QRNN_NVCC)")
    return found


def compile_ptx(arch: str = "compute_80", nvcc: Optional[str] = None, cache_dir: Optional[Path] = None) -> str:
    """PTX text of every FoPool AOT entry point, for virtual architecture `arch` ("compute_80").

    PTX of compute_80 runs on every GPU from Ampere on (the driver compiles it at load time).
    Cached by source + nvcc version + arch under `cache_dir` (default $QRNN_CACHE_DIR/ptx).
    """
    if not re.fullmatch(r"compute_\d+[a-z]?", arch):
        raise ConfigError(f"PTX arch must look like 'compute_80', got {arch!r}")
    exe = _nvcc(nvcc)
    src = cuda_sources_dir() / AOT_SOURCE
    if not src.is_file():
        raise BuildError(f"{src} not found (run from a qrnn-deploy checkout or set QRNN_PLUGIN_SOURCES)")
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"cannot run {exe}: {e}") from None
    key = hashlib.sha256(src.read_bytes() + (cuda_sources_dir() / KERNEL_HEADER).read_bytes()
                         + version.encode() + arch.encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else cache_root() / "ptx"
    target = root / f"fo_pool_aot-{arch}-{key}.ptx"
    if target.is_file():
        return target.read_text()
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".ptx", dir=root)
    os.close(fd)
    cmd = [exe, "--ptx", "-std=c++17", "-O3", f"-arch={arch}", "-o", tmp, str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        os.unlink(tmp)
        raise BuildError(f"nvcc --ptx failed for {src.name}: {res.stderr.strip()[-500:]}")
    os.replace(tmp, target)
    return target.read_text()


def aot_kernel(T: Any, B: Any, H: Any, pooling: str = "fo", batch_first: bool = False, reverse: bool = False,
               dtype: str = "float32", with_c0: bool = True, arch: str = "compute_80",
               nvcc: Optional[str] = None) -> tuple[str, str, LaunchParams]:
    """(kernel name, PTX, launch parameters): everything TensorRT's aot_impl returns, in plain Python."""
    return kernel_name(dtype, with_c0), compile_ptx(arch, nvcc), launch_params(T, B, H, pooling, batch_first, reverse)


# ---- tensorrt.plugin registration (needs TensorRT >= 10.8; untested here) -------------------

_registered = False


def register_plugin(arch: str = "compute_80") -> None:
    """Registers `qrnn::FoPool` with tensorrt.plugin, with an AOT implementation.

    Call before parsing an ONNX graph whose FoPool nodes carry plugin attributes
    (qrnn_deploy.export.tensorrt_nodes). The ONNX node must have both inputs (gates, c0): the
    export hook gives an absent c0 a zeros tensor. Raises BuildError without TensorRT.
    """
    global _registered
    if _registered:
        return
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError:
        raise BuildError("TensorRT's Python package (tensorrt >= 10.8, with tensorrt.plugin) is not installed") from None
    ptx = compile_ptx(arch)
    from qrnn_deploy.export._tensorrt_qdp import define_plugin

    try:
        define_plugin(trt, trtp, ptx)
    except (TypeError, ValueError, AttributeError) as e:  # tensorrt.plugin's checks of the definition
        raise BuildError(f"tensorrt.plugin refused the FoPool plugin definition: {e}") from None
    _registered = True
