"""The native CPU FoPool kernel (plugins/common, built as libqrnn_kernels.so) for `torch.ops.qrnn.fo_pool`.

`forward` / `backward` run the shared C++ kernel through its C ABI (plugins/kernels/qrnn_kernels.h)
on float32 CPU tensors, with as many threads as PyTorch's intra-op setting; they return None when
the kernel does not apply (other dtypes or devices) or is not available (not built, disabled by
QRNN_CPU_KERNELS=0), and fo_pool then runs its PyTorch path (several times slower): when the
library is missing, one warning line (`KernelWarning`, once per process) says why at the first
float32 CPU call; QRNN_CPU_KERNELS=0 chooses that path without a warning. Results are fresh
tensors, never views of the inputs, as the custom op requires. Build the library with
`qrnn-deploy build-plugins` (in a checkout: `bash scripts/build_plugins.sh`).
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from typing import Optional

import torch

from qrnn_deploy.errors import BuildError

ABI_VERSION = 1
POOLING_P = {"f": 2, "fo": 3, "ifo": 4}

_lock = threading.Lock()
_lib = None        # the loaded ctypes library, once loaded
_tried = False     # loading is attempted once per process
_load_error = ""   # why it is unavailable, for available() / messages
_warned = False    # the missing library was reported (once per process)


class KernelWarning(UserWarning):
    """A native FoPool kernel could not be used; fo_pool runs its PyTorch path."""


def _load():
    global _lib, _tried, _load_error
    if _tried:
        return _lib
    with _lock:
        if _tried:
            return _lib
        try:
            if os.environ.get("QRNN_CPU_KERNELS", "1") == "0":
                raise _OptedOut("disabled by QRNN_CPU_KERNELS=0")
            from qrnn_deploy._native import kernels_library_path

            lib = ctypes.CDLL(kernels_library_path())  # CDLL releases the GIL during calls
            if lib.qrnn_kernels_abi_version() != ABI_VERSION:
                raise BuildError(f"{kernels_library_path()} has ABI {lib.qrnn_kernels_abi_version()}, "
                                 f"expected {ABI_VERSION}: rebuild it with bash scripts/build_plugins.sh")
            p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
            lib.qrnn_fo_pool_forward_f32.argtypes = [p, p, p, p, i64, i64, i64, i32, i32, i32, i32]
            lib.qrnn_fo_pool_forward_f32.restype = i32
            lib.qrnn_fo_pool_backward_f32.argtypes = [p, p, p, p, p, p, i64, i64, i64, i32, i32, i32, i32]
            lib.qrnn_fo_pool_backward_f32.restype = i32
            _lib = lib
        except (BuildError, OSError, AttributeError) as e:
            _load_error = str(e)
            _lib = None
            global _warned
            _warned = isinstance(e, _OptedOut)  # chosen on purpose: nothing to report
        _tried = True
    return _lib


class _OptedOut(BuildError):
    pass


def _loaded_or_warn():
    """The library for a call the kernel applies to; None after one warning line when it is missing."""
    global _warned
    lib = _load()
    if lib is not None or _warned:
        return lib
    with _lock:  # two threads' first calls: one warning
        first, _warned = not _warned, True
    if first:
        warnings.warn(f"native CPU FoPool kernel unavailable ({_load_error}); fo_pool uses its PyTorch path",
                      KernelWarning, stacklevel=4)
    return lib


def available() -> bool:
    """Whether the native CPU kernel is loaded (see `unavailable_reason()` when not)."""
    return _load() is not None


def unavailable_reason() -> str:
    """Why the native CPU kernel is not used ("" when it is)."""
    _load()
    return _load_error


def _applies(*tensors: Optional[torch.Tensor]) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def forward(gates: torch.Tensor, c0: Optional[torch.Tensor], pooling: str, batch_first: bool,
            reverse: bool) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(h, c_last) like `fo_pool`, or None when the native kernel does not apply.

    gates: float32 CPU [T, B, P*H] ([B, T, P*H] if batch_first), T, B >= 1; c0: [B, H] or None.
    """
    if not _applies(gates, c0):
        return None
    lib = _loaded_or_warn()
    if lib is None:
        return None
    P = POOLING_P[pooling]
    g = gates.contiguous()
    c0c = None if c0 is None else c0.contiguous()
    d0, d1, W = g.shape
    T, B = (d1, d0) if batch_first else (d0, d1)
    H = W // P
    h = torch.empty(d0, d1, H, dtype=torch.float32)
    c_last = torch.empty(B, H, dtype=torch.float32)
    rc = lib.qrnn_fo_pool_forward_f32(_ptr(g), _ptr(c0c), _ptr(h), _ptr(c_last), T, B, H, P,
                                      int(batch_first), int(reverse), torch.get_num_threads())
    if rc != 0:  # arguments were validated by check_fo_pool_args: this is a bug, not user error
        raise RuntimeError(f"qrnn_fo_pool_forward_f32 failed with code {rc}")
    return h, c_last


def backward(grad_h: torch.Tensor, grad_c_last: torch.Tensor, gates: torch.Tensor,
             c0: Optional[torch.Tensor], pooling: str, batch_first: bool,
             reverse: bool) -> Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """(grad_gates, grad_c0 or None) like `_fo_pool_backward_impl`, or None when not applicable.

    grad_h: layout of h; grad_c_last: [B, H]; the rest as in `forward`.
    """
    if not _applies(grad_h, grad_c_last, gates, c0):
        return None
    lib = _loaded_or_warn()
    if lib is None:
        return None
    P = POOLING_P[pooling]
    g = gates.contiguous()
    gh = grad_h.contiguous()
    gcl = grad_c_last.contiguous()
    c0c = None if c0 is None else c0.contiguous()
    d0, d1, W = g.shape
    T, B = (d1, d0) if batch_first else (d0, d1)
    H = W // P
    dg = torch.empty_like(g)
    gc0 = None if c0 is None else torch.empty(B, H, dtype=torch.float32)
    rc = lib.qrnn_fo_pool_backward_f32(_ptr(gh), _ptr(gcl), _ptr(g), _ptr(c0c), _ptr(dg), _ptr(gc0),
                                       T, B, H, P, int(batch_first), int(reverse), torch.get_num_threads())
    if rc != 0:
        raise RuntimeError(f"qrnn_fo_pool_backward_f32 failed with code {rc}")
    return dg, gc0
