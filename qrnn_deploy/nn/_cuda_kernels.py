"""The CUDA FoPool kernels (plugins/cuda) for `torch.ops.qrnn.fo_pool` on CUDA tensors.

The kernels are built once, on first use, by `nvcc` into a small shared library with a C API
(plugins/cuda/fo_pool_cuda.h) that this module calls through ctypes with raw device pointers and
the current PyTorch stream (`torch.cuda.current_stream().cuda_stream`), so they order with the
surrounding PyTorch work and nothing synchronises. Building takes seconds (one .cu file, the
one architecture of the device) and is cached under `$QRNN_CACHE_DIR` (default
~/.cache/qrnn-deploy), keyed by the sources, the nvcc version and the architecture.

When no kernel can be had (no nvcc, a failed build), `forward` and `backward` return None, one
warning line says why (once per process), and fo_pool runs its PyTorch path instead;
`QRNN_CUDA_KERNELS=0` chooses that path without a warning. float16 / bfloat16 gates are computed in float32 as everywhere.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from qrnn_deploy._native import cache_root, cuda_sources_dir
from qrnn_deploy.errors import BuildError
from qrnn_deploy.nn._cpu_kernels import KernelWarning  # one warning class for both devices

SOURCES = ("fo_pool_cuda.cu", "fo_pool_cuda.h", "fo_pool_kernels.cuh")
LIB_NAME = "libqrnn_fo_pool_cuda.so"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
POOLING_P = {"f": 2, "fo": 3, "ifo": 4}


_lock = threading.Lock()
_libs: dict = {}  # arch ("sm_90") -> ctypes library, or the BuildError that stopped it
_warned = False


def find_nvcc() -> Optional[str]:
    """Path of nvcc: $QRNN_NVCC, then PATH, then $CUDA_HOME/bin (default /usr/local/cuda)."""
    env = os.environ.get("QRNN_NVCC")
    if env:
        return env if Path(env).is_file() else None
    found = shutil.which("nvcc")
    if found:
        return found
    home = Path(os.environ.get("CUDA_HOME", os.environ.get("CUDA_PATH", "/usr/local/cuda")))
    cand = home / "bin" / "nvcc"
    return str(cand) if cand.is_file() else None


def cache_dir() -> Path:
    return cache_root() / "cuda"


def nvcc_flags(arch: str) -> list[str]:
    """nvcc flags for one architecture, e.g. "sm_90": machine code for it plus its PTX."""
    num = arch.split("_", 1)[1]
    return ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", f"-gencode=arch=compute_{num},code=sm_{num}",
            f"-gencode=arch=compute_{num},code=compute_{num}"]


def build(arch: str, nvcc: Optional[str] = None, out_dir: Optional[Path] = None) -> Path:
    """Builds (or finds in the cache) the kernel library for `arch` ("sm_80", "sm_90", ...).

    Raises BuildError (nvcc missing, sources missing, compile error) with what to do.
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (install the CUDA toolkit or set QRNN_NVCC)")
    missing = [s for s in SOURCES if not (cuda_sources_dir() / s).is_file()]
    if missing:
        raise BuildError(f"CUDA kernel sources {missing} not found in {cuda_sources_dir()} "
                         "(run from a qrnn-deploy checkout or set QRNN_PLUGIN_SOURCES)")
    try:
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"cannot run {nvcc}: {e}") from None
    key = hashlib.sha256()
    for s in SOURCES:
        key.update((cuda_sources_dir() / s).read_bytes())
    key.update(version.encode())
    key.update(" ".join(nvcc_flags(arch)).encode())
    target = (out_dir or cache_dir() / f"{arch}-{key.hexdigest()[:16]}") / LIB_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [nvcc, *nvcc_flags(arch), "-shared", "-o", tmp, str(cuda_sources_dir() / "fo_pool_cuda.cu")]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError) as e:
        os.unlink(tmp)
        raise BuildError(f"nvcc failed to run: {e}") from None
    if res.returncode != 0:
        os.unlink(tmp)
        first = next((ln for ln in (res.stderr or res.stdout).splitlines() if "error" in ln), res.stderr.strip()[:300])
        raise BuildError(f"nvcc could not build the FoPool kernels for {arch}: {first}")
    os.replace(tmp, target)
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.qrnn_fo_pool_cuda_forward.argtypes = [c_int, c_int, vp, vp, vp, vp, i64, i64, i64, c_int, c_int, c_int, vp]
    lib.qrnn_fo_pool_cuda_forward.restype = c_int
    lib.qrnn_fo_pool_cuda_backward.argtypes = [c_int, c_int, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, c_int,
                                               c_int, c_int, vp]
    lib.qrnn_fo_pool_cuda_backward.restype = c_int
    lib.qrnn_fo_pool_cuda_backward_workspace_size.argtypes = [c_int, i64, i64, i64]
    lib.qrnn_fo_pool_cuda_backward_workspace_size.restype = ctypes.c_size_t
    lib.qrnn_fo_pool_cuda_columns_per_thread.argtypes = [c_int, i64, i64]
    lib.qrnn_fo_pool_cuda_columns_per_thread.restype = c_int
    lib.qrnn_fo_pool_cuda_error_string.argtypes = [c_int]
    lib.qrnn_fo_pool_cuda_error_string.restype = ctypes.c_char_p
    return lib


def _arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def library(device: torch.device) -> Optional[ctypes.CDLL]:
    """The loaded kernel library for `device`'s architecture, or None (after one warning line)."""
    global _warned
    if os.environ.get("QRNN_CUDA_KERNELS", "1") == "0":
        return None
    arch = _arch(device)
    with _lock:
        if arch not in _libs:
            try:
                _libs[arch] = _load(build(arch))
            except (BuildError, OSError) as e:
                _libs[arch] = e
        lib = _libs[arch]
        if isinstance(lib, Exception):
            if not _warned:
                _warned = True
                warnings.warn(f"CUDA FoPool kernels unavailable ({lib}); fo_pool uses its PyTorch path",
                              KernelWarning, stacklevel=2)
            return None
        return lib


def available(device="cuda") -> bool:
    """True when the CUDA kernels run for tensors on `device` (a GPU is present and they built)."""
    return torch.cuda.is_available() and library(torch.device(device)) is not None


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _state_dtype(gates: torch.Tensor, c0: Optional[torch.Tensor]) -> torch.dtype:
    # c0 may be float32 beside 16-bit gates (kept at full precision, as the reference does);
    # any other mix is brought to the gates' dtype.
    if c0 is not None and c0.dtype == torch.float32 and gates.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return gates.dtype


def _check(lib, rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"FoPool CUDA {what} kernel failed: {lib.qrnn_fo_pool_cuda_error_string(rc).decode()}")


def forward(gates: torch.Tensor, c0: Optional[torch.Tensor], pooling: str, batch_first: bool,
            reverse: bool) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """FoPool forward on the GPU: (h, c_last), or None when the kernels are unavailable.

    gates: CUDA [T, B, P*H] ([B, T, P*H] if batch_first); c0: [B, H] or None. Arguments are
    already validated by fo_pool.check_fo_pool_args, T and B >= 1. c_last has the gates' dtype.
    """
    if gates.dtype not in DTYPE_CODES:
        return None
    lib = library(gates.device)
    if lib is None:
        return None
    P = POOLING_P[pooling]
    T, B = (gates.shape[1], gates.shape[0]) if batch_first else (gates.shape[0], gates.shape[1])
    H = gates.shape[2] // P
    sdt = _state_dtype(gates, c0)
    g = gates.contiguous()
    c0c = None if c0 is None else c0.to(sdt).contiguous()
    h = torch.empty(g.shape[:2] + (H,), dtype=g.dtype, device=g.device)
    c_last = torch.empty(B, H, dtype=sdt, device=g.device)
    with torch.cuda.device(g.device):
        stream = torch.cuda.current_stream(g.device).cuda_stream
        rc = lib.qrnn_fo_pool_cuda_forward(DTYPE_CODES[g.dtype], DTYPE_CODES[sdt], _ptr(g), _ptr(c0c), _ptr(h),
                                           _ptr(c_last), T, B, H, P, int(batch_first), int(reverse), stream)
    _check(lib, rc, "forward")
    return h, c_last.to(gates.dtype)  # the PyTorch path's c_last dtype


def backward(grad_h: torch.Tensor, grad_c_last: torch.Tensor, gates: torch.Tensor, c0: Optional[torch.Tensor],
             pooling: str, batch_first: bool, reverse: bool) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Gradients (d gates, d c0) on the GPU, or None when the kernels are unavailable.

    grad_h has the layout of h; grad_c_last [B, H]. d c0 is None when c0 is None. The kernel
    recomputes the forward scan into a float32 workspace of T*B*H (see fo_pool_kernels.cuh).
    """
    if gates.dtype not in DTYPE_CODES:
        return None
    lib = library(gates.device)
    if lib is None:
        return None
    P = POOLING_P[pooling]
    T, B = (gates.shape[1], gates.shape[0]) if batch_first else (gates.shape[0], gates.shape[1])
    H = gates.shape[2] // P
    sdt = _state_dtype(gates, c0)
    g = gates.contiguous()
    gh = grad_h.to(g.dtype).contiguous()
    gcl = grad_c_last.to(sdt).contiguous()
    c0c = None if c0 is None else c0.to(sdt).contiguous()
    dg = torch.empty_like(g)
    dc0 = None if c0 is None else torch.empty(B, H, dtype=sdt, device=g.device)
    ws_bytes = lib.qrnn_fo_pool_cuda_backward_workspace_size(DTYPE_CODES[g.dtype], T, B, H)
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=g.device)
    with torch.cuda.device(g.device):
        stream = torch.cuda.current_stream(g.device).cuda_stream
        rc = lib.qrnn_fo_pool_cuda_backward(DTYPE_CODES[g.dtype], DTYPE_CODES[sdt], _ptr(gh), _ptr(gcl), _ptr(g),
                                            _ptr(c0c), _ptr(dg), _ptr(dc0), _ptr(ws), T, B, H, P, int(batch_first),
                                            int(reverse), stream)
    _check(lib, rc, "backward")
    if dc0 is not None and dc0.dtype != c0.dtype:
        dc0 = dc0.to(c0.dtype)
    return dg, dc0
