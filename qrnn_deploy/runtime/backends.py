"""Backends that run one bundle graph: a small interface so onnxruntime and TensorRT slot in alike.

A backend turns (bundle directory, manifest, role) into a `GraphRunner`: an object with the
graph's input and output names and `run(inputs) -> outputs` on numpy arrays. Everything above
this module (streams, decoders, the server) talks only to that interface.

numpy + onnxruntime only; onnxruntime is imported when a session is created, so importing the
runtime stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Protocol, Sequence

import numpy as np

from qrnn_deploy.bundle import Manifest
from qrnn_deploy.errors import BuildError, BundleError, ConfigError, StreamError


class GraphRunner(Protocol):
    """One loaded graph. Inputs and outputs are batch-first numpy arrays keyed by graph names."""

    role: str
    input_names: list
    output_names: list

    def run(self, inputs: dict) -> dict:
        """inputs: name -> np.ndarray (every graph input) -> outputs: name -> np.ndarray (all).
        May be called from several threads at once (one bundle shared by a thread pool): a
        runner that keeps state between calls serializes them (TensorRTRunner holds a lock)."""
        ...


BackendFactory = Callable[..., GraphRunner]
_BACKENDS: dict = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Adds a backend: `factory(bundle_dir, manifest, role, providers=None, threads=None)`."""
    _BACKENDS[name] = factory


def available_backends() -> list:
    """Names of the backends registered so far (tensorrt appears once its module registers it)."""
    return sorted(_BACKENDS)


def create_runner(backend: str, bundle_dir, manifest: Manifest, role: str,
                  providers: Optional[Sequence] = None, threads: Optional[int] = None) -> GraphRunner:
    """The runner of graph `role` of the bundle at `bundle_dir` on `backend`."""
    if backend not in _BACKENDS:
        if backend == "tensorrt":
            _try_tensorrt_backend()
        if backend not in _BACKENDS:
            raise BundleError(f"unknown backend {backend!r}; choose one of {sorted(_BACKENDS)}")
    return _BACKENDS[backend](Path(bundle_dir), manifest, role, providers=providers, threads=threads)


def _try_tensorrt_backend() -> None:
    # The TensorRT backend lives in its own module (a later piece of work); it registers itself
    # when imported. Until it exists, or when TensorRT is not installed, say so plainly.
    try:
        import importlib

        importlib.import_module("qrnn_deploy.runtime.tensorrt_backend")
    except ImportError as e:
        raise BuildError("backend 'tensorrt' is not available: TensorRT (the `tensorrt` Python package "
                         "and a CUDA GPU) is not installed or this qrnn-deploy has no TensorRT backend "
                         f"({e}); use backend='onnxruntime'") from None


class OrtRunner:
    """A graph in an onnxruntime InferenceSession (the FoPool custom-op library registered when the
    bundle was exported with fo_pool='custom')."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, role: str,
                 providers: Optional[Sequence] = None, threads: Optional[int] = None):
        spec = manifest.graphs[role]
        path = bundle_dir / spec.file
        self.role = role
        self.session = _ort_session(path, providers, threads, custom_ops=manifest.fo_pool == "custom")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # The manifest is the contract: every tensor it lists must exist in the graph, so a
        # mismatched bundle fails here, at load time, not in the middle of a stream.
        want_in = [t.name for t in spec.inputs] + [s.name for s in spec.states]
        want_out = [t.name for t in spec.outputs] + [s.output for s in spec.states]
        miss_in = [n for n in want_in if n not in self.input_names]
        miss_out = [n for n in want_out if n not in self.output_names]
        if miss_in or miss_out:
            raise BundleError(f"{path}: graph {role!r} does not match the manifest: missing inputs {miss_in}, "
                              f"missing outputs {miss_out}; re-export the bundle")
        extra = [n for n in self.input_names if n not in want_in]
        if extra:
            raise BundleError(f"{path}: graph {role!r} takes inputs the manifest does not list: {extra}")

    def run(self, inputs: dict) -> dict:
        try:
            values = self.session.run(self.output_names, inputs)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidArgument, ...)
            shapes = {k: list(np.shape(v)) for k, v in inputs.items()}
            raise StreamError(f"graph {self.role!r} failed on inputs {shapes}: {e}") from None
        return dict(zip(self.output_names, values))


def _check_providers(providers) -> None:
    """Each entry is a provider name or (name, options): onnxruntime would fall back to the CPU with
    a warning for a name it lacks (and split a bare string into letters), so say so instead."""
    if providers is None:
        return
    import onnxruntime as ort

    if isinstance(providers, (str, bytes)) or not isinstance(providers, (list, tuple)):
        raise ConfigError(f"providers must be a list of provider names (e.g. ['CPUExecutionProvider']), "
                          f"got {providers!r}")
    have = ort.get_available_providers()
    for p in providers:
        name = p[0] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], dict) else p
        if not isinstance(name, str):
            raise ConfigError(f"providers: each entry is a provider name or (name, options dict), got {p!r}")
        if name not in have:
            raise ConfigError(f"provider {name!r} is not available in this onnxruntime (available: {have})")


def _ort_session(path: Path, providers, threads, custom_ops: bool):
    # qrnn_deploy._native is the one place that makes sessions (custom-op library, threads).
    from qrnn_deploy import _native
    from qrnn_deploy.errors import QRNNError

    _check_providers(providers)
    try:
        return _native.ort_session(path, providers=providers, threads=threads, custom_ops=custom_ops)
    except QRNNError:
        raise
    except Exception as e:  # onnxruntime's own types: a corrupt or incompatible graph file
        raise BundleError(f"{path}: onnxruntime cannot load this graph: {e}") from None


register_backend("onnxruntime", OrtRunner)
