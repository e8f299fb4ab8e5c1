"""The `tensorrt` backend of `load_bundle`: a bundle graph run by its TensorRT engine.

    bundle = load_bundle("bundle/", backend="tensorrt")   # after `qrnn-deploy build-engine bundle/`

Same interface as the onnxruntime backend (backends.GraphRunner: input_names, output_names,
run(numpy inputs) -> numpy outputs, tensors bound by name). Per call, the optimisation profile
recorded for the engine is chosen from the chunk length ("decode" for T = 1 where the engine has
it, else "chunk"), with one execution context per profile. States stay on the device between
steps where the caller feeds back, unchanged, the very arrays the previous call returned (what
streams do): those inputs are not copied to the device again; their device buffers are swapped.

Needs the `tensorrt` Python package, cuda-python (`cuda.bindings.runtime`, or the older
`cuda.cudart`) and an NVIDIA GPU; imports them only when a runner is created, so importing this
module is cheap and a machine without them gets one BuildError line. Not run on the project's
development machines (no TensorRT, no GPU): written against TensorRT 10's documented Python API.
numpy only otherwise: no torch, as everywhere in qrnn_deploy.runtime.

Thread safety: a runner's execution contexts, device buffers, CUDA stream and the fed-back-state
bookkeeping are shared by every call, and a TensorRT execution context must not be used by two
threads at once, so `run` holds a per-runner lock: calls from several threads (one bundle shared
by a thread pool) are correct and run one at a time per graph.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from qrnn_deploy.bundle import Manifest
from qrnn_deploy.errors import BuildError, BundleError, StreamError
from qrnn_deploy.runtime.backends import register_backend


def _import_cuda_runtime():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BuildError("backend 'tensorrt' needs cuda-python (pip install cuda-python) for device memory") from None
    return cudart


def _import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise BuildError("backend 'tensorrt' needs TensorRT (the `tensorrt` Python package, TensorRT >= 10) and an "
                         "NVIDIA GPU; use backend='onnxruntime' here") from None
    return trt


def pick_profile(profile_names: Sequence[str], chunk: int) -> int:
    """Index of the profile for a call with chunk length `chunk` ("decode" serves T = 1)."""
    if chunk == 1 and "decode" in profile_names:
        return list(profile_names).index("decode")
    if "chunk" in profile_names:
        return list(profile_names).index("chunk")
    if not profile_names:
        return 0
    raise StreamError(f"no optimisation profile of this engine takes a chunk of {chunk} steps "
                      f"(profiles: {list(profile_names)}); rebuild it with a larger --max-chunk")


class _Device:
    """Thin checked wrapper over cuda-python's runtime calls (each returns (error, value...))."""

    def __init__(self, cudart):
        self.rt = cudart
        self.stream = self.check(cudart.cudaStreamCreate())

    def check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorString(err)
            raise StreamError(f"CUDA error {int(err)}: {name[1] if isinstance(name, tuple) else name}")
        return rest[0] if len(rest) == 1 else (rest or None)

    def malloc(self, nbytes: int) -> int:
        return int(self.check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.check(self.rt.cudaFree(ptr))

    def to_device(self, dst: int, arr: np.ndarray) -> None:
        self.check(self.rt.cudaMemcpyAsync(dst, arr.ctypes.data, arr.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))

    def to_host(self, arr: np.ndarray, src: int) -> None:
        self.check(self.rt.cudaMemcpyAsync(arr.ctypes.data, src, arr.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))

    def sync(self) -> None:
        self.check(self.rt.cudaStreamSynchronize(self.stream))


class _Buffer:
    def __init__(self):
        self.ptr, self.nbytes = 0, 0

    def ensure(self, dev: _Device, nbytes: int) -> int:
        if nbytes > self.nbytes:
            if self.ptr:
                dev.free(self.ptr)
            self.ptr, self.nbytes = dev.malloc(nbytes), nbytes
        return self.ptr


class TensorRTRunner:
    """One bundle graph on its TensorRT engine (manifest.engines[role])."""

    def __init__(self, bundle_dir: Path, manifest: Manifest, role: str,
                 providers: Optional[Sequence] = None, threads: Optional[int] = None):
        # TensorRT first: on a machine without it, that is the problem to report.
        trt = _import_tensorrt()
        cudart = _import_cuda_runtime()
        engine_spec = manifest.engines.get(role)
        if engine_spec is None:
            raise BundleError(f"{bundle_dir}: no TensorRT engine for graph {role!r}; build one with "
                              f"`qrnn-deploy build-engine {bundle_dir}`")
        path = Path(bundle_dir) / engine_spec.file
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: engine file {engine_spec.file} of graph {role!r} is missing")
        self.dev = _Device(cudart)
        logger = trt.Logger(trt.Logger.WARNING)
        if engine_spec.plugin == "library":
            from qrnn_deploy import _native

            trt.get_plugin_registry().load_library(_native.trt_plugin_library_path())
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BundleError(f"{path}: TensorRT cannot load this engine (built with TensorRT "
                              f"{engine_spec.tensorrt_version}, another GPU, or a missing plugin); rebuild it here")
        self.role = role
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        spec = manifest.graphs[role]
        want_in = [t.name for t in spec.inputs] + [s.name for s in spec.states]
        want_out = [t.name for t in spec.outputs] + [s.output for s in spec.states]
        missing = [n for n in want_in if n not in self.input_names] + [n for n in want_out if n not in self.output_names]
        if missing:
            raise BundleError(f"{path}: engine of graph {role!r} lacks tensors {missing}; rebuild it from this bundle")
        # The carried states: output -> the input it feeds next time.
        self.state_of_output = {s.output: s.name for s in spec.states}
        self.profile_names = [p.get("name", str(i)) for i, p in enumerate(engine_spec.profiles)]
        self.profile_shapes = [p.get("shapes", {}) for p in engine_spec.profiles]
        self.chunk_input = next((t.name for t in spec.inputs if len(t.shape) > 1 and t.shape[1] == "T"), None)
        self.contexts: dict = {}
        self.buffers = {n: _Buffer() for n in names}
        self._last_outputs: dict = {}
        # Everything above is per runner, not per call: one call at a time (module docstring).
        self._lock = threading.Lock()

    def _context(self, profile: int):
        if profile not in self.contexts:
            ctx = self.engine.create_execution_context()
            if self.engine.num_optimization_profiles > 1:
                ctx.set_optimization_profile_async(profile, int(self.dev.stream))
            self.contexts[profile] = ctx
        return self.contexts[profile]

    def _set_shape(self, ctx, profile: int, name: str, shape: tuple) -> None:
        """Sets an input's shape; StreamError naming the limit when the profile does not take it
        (TensorRT's set_input_shape only returns False, and the outputs' shapes stay unknown)."""
        rng = self.profile_shapes[profile].get(name) if profile < len(self.profile_shapes) else None
        if rng is not None:
            lo, hi = rng.get("min"), rng.get("max")
            if lo is not None and hi is not None and (
                    len(shape) != len(hi) or any(not a <= d <= b for d, a, b in zip(shape, lo, hi))):
                axis_hint = {0: "--max-batch (streams at once)", 1: "--max-chunk (steps per call) or "
                             "--max-source (source length)"}
                bad = next((i for i, (d, a, b) in enumerate(zip(shape, lo, hi)) if not a <= d <= b), None)
                hint = f"; rebuild the engine with a larger {axis_hint[bad]}" if bad in axis_hint else ""
                raise StreamError(f"graph {self.role!r}: input {name} of shape {list(shape)} is outside the engine's "
                                  f"profile {self.profile_names[profile]!r} ({lo} .. {hi}){hint}")
        if ctx.set_input_shape(name, tuple(shape)) is False:
            raise StreamError(f"graph {self.role!r}: TensorRT refused shape {list(shape)} for input {name} "
                              f"(profile {profile}); rebuild the engine with larger limits")

    def run(self, inputs: dict) -> dict:
        with self._lock:
            return self._run(inputs)

    def _run(self, inputs: dict) -> dict:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise StreamError(f"graph {self.role!r}: inputs {missing} not given")
        chunk = int(np.shape(inputs[self.chunk_input])[1]) if self.chunk_input else 1
        profile = pick_profile(self.profile_names, chunk)
        ctx = self._context(profile)
        # Forgotten until this call succeeds: a failure after some buffers were swapped below must
        # not leave a record that points a retry at the wrong buffer.
        last, self._last_outputs = self._last_outputs, {}
        keep = []  # host arrays must outlive their asynchronous copies
        for name in self.input_names:
            arr = inputs[name]
            reused = last.get(name)
            if reused is not None and reused[0] is arr and np.array_equal(arr, reused[1]):
                # The caller fed back, unchanged, the state array we returned: its data is still in
                # the output's device buffer, so swap buffers instead of copying it up again.
                src_buf = self.buffers[reused[2]]
                self.buffers[name], self.buffers[reused[2]] = src_buf, self.buffers[name]
                self._set_shape(ctx, profile, name, arr.shape)
                ctx.set_tensor_address(name, src_buf.ptr)
                continue
            arr = np.ascontiguousarray(arr, dtype=self.dtypes[name])
            keep.append(arr)
            self._set_shape(ctx, profile, name, arr.shape)  # before the copy: a refused shape moves nothing
            ptr = self.buffers[name].ensure(self.dev, arr.nbytes)
            self.dev.to_device(ptr, arr)
            ctx.set_tensor_address(name, ptr)
        outputs = {}
        for name in self.output_names:
            shape = tuple(ctx.get_tensor_shape(name))
            out = np.empty(shape, dtype=self.dtypes[name])
            ctx.set_tensor_address(name, self.buffers[name].ensure(self.dev, out.nbytes))
            outputs[name] = out
        if not ctx.execute_async_v3(int(self.dev.stream)):
            shapes = {k: list(np.shape(v)) for k, v in inputs.items()}
            raise StreamError(f"graph {self.role!r}: TensorRT failed to run on inputs {shapes}")
        for name, out in outputs.items():
            self.dev.to_host(out, self.buffers[name].ptr)
        self.dev.sync()
        # (the array handed out, a private copy to notice in-place edits, the output name)
        self._last_outputs = {self.state_of_output[o]: (arr, arr.copy(), o) for o, arr in outputs.items()
                              if o in self.state_of_output}
        return outputs


register_backend("tensorrt", TensorRTRunner)
