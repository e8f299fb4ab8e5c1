"""Where the native plugins are, and the one place that creates onnxruntime sessions.

Pure Python at import time (no torch, no onnx, no onnxruntime): the runtime and the PyTorch side
both use it. The libraries are built by `bash scripts/build_plugins.sh` into plugins/build/:

- libqrnn_ort.so: the onnxruntime custom-op library (domain `qrnn`, op `FoPool`, DESIGN.md section 2),
- libqrnn_kernels.so: the same CPU kernel behind a plain C ABI, used by `qrnn_deploy.nn` via ctypes.

Look-up order for each library: an explicit file in the environment (QRNN_ORT_LIBRARY /
QRNN_KERNELS_LIBRARY), then the directory QRNN_PLUGIN_DIR, then plugins/build/ of the source tree.
The CUDA sources compiled at run time (the PyTorch CUDA kernels, the TensorRT AOT plugin) are
read from `cuda_sources_dir()`: plugins/cuda/ of the source tree, or QRNN_PLUGIN_SOURCES/cuda.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

from qrnn_deploy.errors import BuildError, ConfigError

_BUILD_HINT = "run `bash scripts/build_plugins.sh` (needs cmake, a C++17 compiler and npm or onnxruntime headers)"


def plugin_dirs() -> list[Path]:
    """Directories searched for the native libraries, in order."""
    dirs = []
    if os.environ.get("QRNN_PLUGIN_DIR"):
        dirs.append(Path(os.environ["QRNN_PLUGIN_DIR"]))
    dirs.append(Path(__file__).resolve().parent.parent / "plugins" / "build")
    return dirs


def cuda_sources_dir() -> Path:
    """plugins/cuda/ (the CUDA kernel sources): under $QRNN_PLUGIN_SOURCES (a copy of plugins/;
    QRNN_PLUGINS_DIR, its old name, is still read) or the source tree's plugins/."""
    root = os.environ.get("QRNN_PLUGIN_SOURCES") or os.environ.get("QRNN_PLUGINS_DIR")
    return Path(root if root else Path(__file__).resolve().parent.parent / "plugins") / "cuda"


def _find(file_name: str, env_var: str) -> Optional[Path]:
    explicit = os.environ.get(env_var)
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise BuildError(f"{env_var}={explicit} is not a file; unset it or {_BUILD_HINT}")
        return p
    for d in plugin_dirs():
        p = d / file_name
        if p.is_file():
            return p
    return None


def ort_library_path() -> str:
    """Path of the built onnxruntime custom-op library libqrnn_ort.so.

    Raises BuildError (with how to build it) when it is absent.
    """
    p = _find("libqrnn_ort.so", "QRNN_ORT_LIBRARY")
    if p is None:
        raise BuildError(f"the onnxruntime FoPool library libqrnn_ort.so is not built: {_BUILD_HINT}")
    return str(p)


def kernels_library_path() -> str:
    """Path of the built C ABI kernel library libqrnn_kernels.so (used by qrnn_deploy.nn).

    Raises BuildError (with how to build it) when it is absent.
    """
    p = _find("libqrnn_kernels.so", "QRNN_KERNELS_LIBRARY")
    if p is None:
        raise BuildError(f"the native kernel library libqrnn_kernels.so is not built: {_BUILD_HINT}")
    return str(p)


def trt_plugin_library_path() -> str:
    """Path of the TensorRT FoPool plugin library libqrnn_trt_plugin.so (QRNN_TRT_PLUGIN_LIBRARY,
    QRNN_PLUGIN_DIR, plugins/build/). Raises BuildError when it is absent: it is built only where
    TensorRT's headers are found (TensorRT_ROOT=<dir> bash scripts/build_plugins.sh)."""
    p = _find("libqrnn_trt_plugin.so", "QRNN_TRT_PLUGIN_LIBRARY")
    if p is None:
        raise BuildError("the TensorRT plugin libqrnn_trt_plugin.so is not built: run TensorRT_ROOT=<TensorRT dir> "
                         "bash scripts/build_plugins.sh (or build engines with --plugin aot)")
    return str(p)


def ort_session(model: Union[str, os.PathLike, bytes], providers: Optional[Sequence] = None,
                threads: Optional[int] = None, custom_ops: bool = True, session_options=None):
    """An onnxruntime.InferenceSession for `model` (a path or serialized ModelProto bytes).

    Every session the project creates goes through here, so the FoPool library is registered
    and threads are set the same way everywhere.

    providers: onnxruntime providers (default: CPUExecutionProvider).
    threads: intra-op threads (the FoPool kernel splits B*H across them); None keeps onnxruntime's
        default. Inter-op threads are set to 1: our graphs are chains, not parallel branches.
    custom_ops: register libqrnn_ort.so (BuildError when it is not built). Pass False for graphs
        exported with the portable FoPool variant.
    session_options: an onnxruntime.SessionOptions to start from (modified in place).
    Raises BuildError when the library is needed but missing, ConfigError for bad `threads`;
    onnxruntime's own exceptions (invalid graph, FoPool attribute errors) pass through unchanged.
    """
    import onnxruntime as ort  # heavy: only when a session is wanted

    so = session_options if session_options is not None else ort.SessionOptions()
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    if custom_ops:
        so.register_custom_ops_library(ort_library_path())
    if providers is None:
        providers = ["CPUExecutionProvider"]
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=so, providers=list(providers))
