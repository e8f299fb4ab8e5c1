"""Where the native plugins are, and the one place that creates onnxruntime sessions.

Pure Python at import time (no torch, no onnx, no onnxruntime): the runtime and the PyTorch side
both use it. The libraries are built by `bash scripts/build_plugins.sh` into plugins/build/:

- libqrnn_ort.so: the onnxruntime custom-op library (domain `qrnn`, op `FoPool`, DESIGN.md section 2),
- libqrnn_kernels.so: the same CPU kernel behind a plain C ABI, used by `qrnn_deploy.nn` via ctypes.

Look-up order for each library: an explicit file in the environment (QRNN_ORT_LIBRARY /
QRNN_KERNELS_LIBRARY), then the directory QRNN_PLUGIN_DIR, then `default_build_dir()`:
plugins/build/ of the source tree in a checkout; in an installed package (wheel, sdist) a
per-user directory $QRNN_CACHE_DIR/plugins/<digest of the sources> (default ~/.cache/qrnn-deploy),
where `qrnn-deploy build-plugins` (`build_plugins()`) builds them.

The plugin sources (`sources_dir()`): $QRNN_PLUGIN_SOURCES, else plugins/ of the source tree, else
the copy a wheel carries in qrnn_deploy/_native_src/plugins/ (put there by setup.py at build
time, with scripts/build_plugins.sh). The CUDA sources compiled at run time (the PyTorch CUDA
kernels, the TensorRT AOT plugin) are read from `cuda_sources_dir()`, its cuda/.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from qrnn_deploy.errors import BuildError, ConfigError

_NEEDS = "needs cmake, a C++17 compiler and npm or onnxruntime headers"

_PACKAGE = Path(__file__).resolve().parent
_TREE_PLUGINS = _PACKAGE.parent / "plugins"          # a source checkout (editable install)
_SHIPPED = _PACKAGE / "_native_src"                  # a wheel: plugins/ and scripts/build_plugins.sh


def _in_checkout() -> bool:
    return (_TREE_PLUGINS / "CMakeLists.txt").is_file()


def _installed() -> bool:
    """An installed package (wheel, sdist) carrying the plugin sources, not a source checkout."""
    return not _in_checkout() and (_SHIPPED / "plugins").is_dir()


def _build_hint() -> str:
    """How to build the libraries, for this install (a checkout has the script; a wheel the command)."""
    if _in_checkout():
        return f"run `bash scripts/build_plugins.sh` or `qrnn-deploy build-plugins` ({_NEEDS})"
    return f"run `qrnn-deploy build-plugins` ({_NEEDS})"


def sources_dir() -> Path:
    """The plugin sources (a plugins/ directory): $QRNN_PLUGIN_SOURCES (QRNN_PLUGINS_DIR, its old
    name, is still read), else the source tree's plugins/, else the copy shipped in the wheel."""
    root = os.environ.get("QRNN_PLUGIN_SOURCES") or os.environ.get("QRNN_PLUGINS_DIR")
    if root:
        return Path(root)
    return _SHIPPED / "plugins" if _installed() else _TREE_PLUGINS


def build_script() -> Optional[Path]:
    """scripts/build_plugins.sh of the checkout or the wheel (None when neither has it)."""
    for p in (_PACKAGE.parent / "scripts" / "build_plugins.sh", _SHIPPED / "scripts" / "build_plugins.sh"):
        if p.is_file() and (p.parent.parent / "plugins" / "CMakeLists.txt").is_file():
            return p
    return None


def cache_root() -> Path:
    """$QRNN_CACHE_DIR, default ~/.cache/qrnn-deploy: built plugins (installed packages), the
    compiled CUDA kernels (cuda/) and TensorRT AOT PTX (ptx/)."""
    return Path(os.environ.get("QRNN_CACHE_DIR", Path.home() / ".cache" / "qrnn-deploy"))


_digests: dict = {}


def sources_digest(root: Optional[Path] = None) -> str:
    """12 hex digits of sha256 over the plugin sources (names and bytes; plugins/build skipped)."""
    root = Path(root or sources_dir())
    if root not in _digests:
        h = hashlib.sha256()
        for f in sorted(p for p in root.rglob("*") if p.is_file() and "build" not in p.relative_to(root).parts[:1]):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        _digests[root] = h.hexdigest()[:12]
    return _digests[root]


def default_build_dir() -> Path:
    """Where the libraries are built and looked for: plugins/build/ of a source checkout, else
    $QRNN_CACHE_DIR/plugins/<sources_digest()> (so a new release never loads an old build)."""
    if _installed():
        return cache_root() / "plugins" / sources_digest(_SHIPPED / "plugins")
    return _TREE_PLUGINS / "build"


def plugin_dirs() -> list[Path]:
    """Directories searched for the native libraries, in order."""
    dirs = []
    if os.environ.get("QRNN_PLUGIN_DIR"):
        dirs.append(Path(os.environ["QRNN_PLUGIN_DIR"]))
    dirs.append(default_build_dir())
    return dirs


def cuda_sources_dir() -> Path:
    """plugins/cuda/ (the CUDA kernel sources) under `sources_dir()`."""
    return sources_dir() / "cuda"


def build_plugins(build_dir: Optional[Path] = None, jobs: int = 2, cuda: Optional[bool] = None,
                  ort_include: Optional[Path] = None) -> Path:
    """Build the native plugins with scripts/build_plugins.sh into `build_dir` (default
    `default_build_dir()`); fetched onnxruntime headers are kept under cache_root()/headers.
    cuda: True / False forces the CUDA kernels on / off (None: on when nvcc is found). Returns the build
    directory; raises BuildError with the script's reason when something asked for was not built."""
    script = build_script()
    if script is None:
        raise BuildError("the plugin sources are not installed (qrnn_deploy/_native_src missing): reinstall "
                         "qrnn-deploy from a wheel or sdist built by setuptools>=64, or build from a checkout")
    build_dir = Path(build_dir or default_build_dir())
    env = dict(os.environ, QRNN_BUILD_DIR=str(build_dir), QRNN_JOBS=str(int(jobs)), PYTHON=sys.executable)
    if script.parent.parent == _SHIPPED:  # site-packages may be read-only: headers go to the user cache
        env.setdefault("QRNN_HEADERS_CACHE", str(cache_root() / "headers"))
    if ort_include is not None:
        env["QRNN_ORT_INCLUDE_DIR"] = str(ort_include)
    if cuda is not None:  # True: fail without nvcc rather than build CPU-only in silence
        flag = "ON" if cuda else "OFF"
        env["QRNN_CMAKE_ARGS"] = (env.get("QRNN_CMAKE_ARGS", "") + f" -DQRNN_WITH_CUDA={flag}").strip()
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        raise BuildError(lines[-1] if lines else f"{script} failed with exit status {r.returncode}")
    return build_dir


def _find(file_name: str, env_var: str) -> Optional[Path]:
    explicit = os.environ.get(env_var)
    if explicit:
        p = Path(explicit)
        if not p.is_file():
            raise BuildError(f"{env_var}={explicit} is not a file; unset it or {_build_hint()}")
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
        raise BuildError(f"the onnxruntime FoPool library libqrnn_ort.so is not built: {_build_hint()}")
    return str(p)


def kernels_library_path() -> str:
    """Path of the built C ABI kernel library libqrnn_kernels.so (used by qrnn_deploy.nn).

    Raises BuildError (with how to build it) when it is absent.
    """
    p = _find("libqrnn_kernels.so", "QRNN_KERNELS_LIBRARY")
    if p is None:
        raise BuildError(f"the native kernel library libqrnn_kernels.so is not built: {_build_hint()}")
    return str(p)


def trt_plugin_library_path() -> str:
    """Path of the TensorRT FoPool plugin library libqrnn_trt_plugin.so (QRNN_TRT_PLUGIN_LIBRARY,
    QRNN_PLUGIN_DIR, plugins/build/). Raises BuildError when it is absent: it is built only where
    TensorRT's headers are found (TensorRT_ROOT=<dir> bash scripts/build_plugins.sh)."""
    p = _find("libqrnn_trt_plugin.so", "QRNN_TRT_PLUGIN_LIBRARY")
    if p is None:
        raise BuildError("the TensorRT plugin libqrnn_trt_plugin.so is not built: run TensorRT_ROOT=<TensorRT dir> "
                         "qrnn-deploy build-plugins (in a checkout: bash scripts/build_plugins.sh), "
                         "or build engines with --plugin aot")
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
