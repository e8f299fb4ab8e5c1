"""build-engine and the tensorrt runtime backend on a machine without TensorRT: clean failures,
and the plain-Python parts (optimisation profiles, profile choice) that run everywhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qrnn_deploy.bundle import EngineSpec, load_manifest
from qrnn_deploy.cli import main
from qrnn_deploy.errors import BuildError, BundleError, ExportError, StreamError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.export.tensorrt_engine import build_engines, engine_profiles
from qrnn_deploy.nn import QRNNLanguageModel, QRNNSeq2Seq
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.runtime.tensorrt_backend import pick_profile

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False
no_trt = pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: these check machines without it")


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("b") / "lm"
    export_bundle(QRNNLanguageModel(12, 6, 6, 2, window=[2, 1]), out, fo_pool="portable", verify=False)
    return out


def test_profiles_of_a_language_model(lm_bundle):
    man = load_manifest(lm_bundle)
    profiles = engine_profiles(man, "lm", max_batch=4, max_chunk=100)
    assert [p["name"] for p in profiles] == ["decode", "chunk"]
    decode, chunk = (p["shapes"] for p in profiles)
    assert decode["tokens"] == {"min": [1, 1], "opt": [4, 1], "max": [4, 1]}
    assert chunk["tokens"] == {"min": [1, 1], "opt": [4, 64], "max": [4, 100]}
    # Every state is an input of every profile, with its fixed sizes.
    assert decode["conv_state_0"] == {"min": [1, 1, 6], "opt": [4, 1, 6], "max": [4, 1, 6]}
    assert set(decode) == {"tokens", "conv_state_0", "c_state_0", "c_state_1"} == set(chunk)


def test_profiles_of_seq2seq_graphs(tmp_path):
    torch.manual_seed(0)
    model = QRNNSeq2Seq(10, 11, embed_size=4, hidden_size=4, num_layers=1, encoder_window=2, decoder_window=1)
    export_bundle(model, tmp_path, fo_pool="portable", verify=False)
    man = load_manifest(tmp_path)
    enc = engine_profiles(man, "encoder", max_batch=2, max_chunk=32, max_source=50)
    dec = engine_profiles(man, "decoder", max_batch=2, max_chunk=32, max_source=50)
    assert [p["name"] for p in enc] == ["chunk"] and [p["name"] for p in dec] == ["decode", "chunk"]
    assert dec[0]["shapes"]["memory"]["max"][1] == 50 and dec[0]["shapes"]["tgt"]["max"] == [2, 1]
    with pytest.raises(ExportError):
        engine_profiles(man, "decoder", max_batch=0)


def test_pick_profile():
    assert pick_profile(["decode", "chunk"], 1) == 0
    assert pick_profile(["decode", "chunk"], 7) == 1
    assert pick_profile(["chunk"], 1) == 0
    with pytest.raises(StreamError, match="max-chunk"):
        pick_profile(["decode"], 5)


@no_trt
def test_build_engines_without_tensorrt_is_one_build_error(lm_bundle):
    with pytest.raises(BuildError, match="TensorRT is not installed"):
        build_engines(lm_bundle)
    with pytest.raises(ExportError, match="--plugin"):
        build_engines(lm_bundle, plugin="jit")


@no_trt
def test_cli_build_engine_without_tensorrt_exits_2_with_one_line(lm_bundle):
    res = subprocess.run([sys.executable, "-m", "qrnn_deploy", "build-engine", str(lm_bundle), "--fp16"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "TensorRT is not installed" in res.stderr


def test_cli_build_engine_on_a_missing_bundle(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build-engine", str(tmp_path / "nope")])
    assert e.value.code == 2 and "bundle not found" in capsys.readouterr().err


@no_trt
def test_tensorrt_backend_without_tensorrt_or_engines_says_tensorrt_first(lm_bundle):
    with pytest.raises(BuildError, match="needs TensorRT"):
        load_bundle(lm_bundle, backend="tensorrt")


@no_trt
def test_tensorrt_backend_without_tensorrt_is_one_build_error(lm_bundle, tmp_path):
    import shutil
    b = tmp_path / "b"
    shutil.copytree(lm_bundle, b)
    (b / "lm.fp32.plan").write_bytes(b"not an engine")
    man = load_manifest(b)
    man.engines["lm"] = EngineSpec(file="lm.fp32.plan", plugin="none", profiles=[])
    man.write(b)
    with pytest.raises(BuildError, match="needs TensorRT"):
        load_bundle(b, backend="tensorrt")


def test_runtime_backend_module_imports_without_torch():
    code = ("import sys; import qrnn_deploy.runtime.tensorrt_backend as m; "
            "assert 'torch' not in sys.modules and 'tensorrt' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ---- the runner's own logic, behind stand-ins of tensorrt and cuda-python -------------------
#
# TensorRT is not installed here. These stand-ins give the runner what it calls: device memory is
# host bytes keyed by fake pointers, and the "engine" executes the bundle's ONNX graph with
# onnxruntime on whatever the runner bound. The runner's binding by name, profile choice, copies
# and state-buffer swapping are then checked against plain onnxruntime, chunk by chunk.

import ctypes  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402


class _FakeCudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self):
        self.mem, self.next_ptr, self.h2d_bytes = {}, 0x1000, 0

    def cudaStreamCreate(self):
        return (0, 7)

    def cudaMalloc(self, n):
        ptr, self.next_ptr = self.next_ptr, self.next_ptr + n + 256
        self.mem[ptr] = bytearray(n)
        return (0, ptr)

    def cudaFree(self, ptr):
        del self.mem[ptr]
        return (0,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):
        if kind == 1:
            self.mem[dst][:n] = ctypes.string_at(src, n)
            self.h2d_bytes += n
        else:
            ctypes.memmove(dst, bytes(self.mem[src][:n]), n)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaGetErrorString(self, err):
        return (0, b"fake")


def _fake_tensorrt(cudart):
    from qrnn_deploy import _native

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "fake"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.nptype = lambda t: t

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addr, self.results, self.profile = engine, {}, {}, None, None

        def set_optimization_profile_async(self, idx, stream):
            self.profile = idx
            engine.profiles_used.append(idx)

        def set_input_shape(self, name, shape):
            if not self.engine.accept_shapes:
                return False
            self.shapes[name] = tuple(shape)
            self.results = None
            return True

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def _feeds(self):
            feeds = {}
            for n in self.engine.inputs:
                dt = self.engine.dtypes[n]
                nbytes = int(np.prod(self.shapes[n])) * np.dtype(dt).itemsize
                feeds[n] = np.frombuffer(bytes(cudart.mem[self.addr[n]][:nbytes]), dtype=dt).reshape(self.shapes[n])
            return feeds

        def get_tensor_shape(self, name):
            if self.results is None:  # TensorRT infers output shapes from the input shapes
                self.results = dict(zip(self.engine.outputs, self.engine.sess.run(self.engine.outputs, self._feeds())))
            return self.results[name].shape

        def execute_async_v3(self, stream):
            res = dict(zip(self.engine.outputs, self.engine.sess.run(self.engine.outputs, self._feeds())))
            for n, v in res.items():
                cudart.mem[self.addr[n]][:v.nbytes] = v.tobytes()
            return True

    class Engine:
        def __init__(self, onnx_bytes):
            self.sess = _native.ort_session(onnx_bytes, custom_ops=False)
            self.inputs = [i.name for i in self.sess.get_inputs()]
            self.outputs = [o.name for o in self.sess.get_outputs()]
            types_ = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
            self.dtypes = {i.name: types_[i.type] for i in self.sess.get_inputs() + self.sess.get_outputs()}
            self.num_io_tensors = len(self.inputs) + len(self.outputs)
            self.num_optimization_profiles = 2
            self.profiles_used = []
            self.accept_shapes = True

        def get_tensor_name(self, i):
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, n):
            return "in" if n in self.inputs else "out"

        def get_tensor_dtype(self, n):
            return self.dtypes[n]

        def create_execution_context(self):
            return Context(self)

    engine = None

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            nonlocal engine
            engine = Engine(data)
            trt.last_engine = engine
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    return trt


@pytest.fixture
def fake_trt_bundle(lm_bundle, tmp_path, monkeypatch):
    import shutil

    from qrnn_deploy.runtime import tensorrt_backend

    b = tmp_path / "b"
    shutil.copytree(lm_bundle, b)
    man = load_manifest(b)
    # The stand-in "engine" is the ONNX graph itself, with the profiles build-engine records.
    (b / "lm.fp32.plan").write_bytes((b / "lm.onnx").read_bytes())
    man.engines["lm"] = EngineSpec(file="lm.fp32.plan", plugin="none",
                                   profiles=engine_profiles(man, "lm", max_batch=4, max_chunk=16))
    man.write(b)
    cudart = _FakeCudart()
    trt = _fake_tensorrt(cudart)
    monkeypatch.setattr(tensorrt_backend, "_import_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_backend, "_import_cuda_runtime", lambda: cudart)
    return b, trt, cudart


def test_runner_streams_like_onnxruntime_and_keeps_fed_back_states_on_the_device(fake_trt_bundle):
    b, trt, cudart = fake_trt_bundle
    ref = load_bundle(b, backend="onnxruntime").graph("lm")
    g = load_bundle(b, backend="tensorrt").graph("lm")
    tokens = np.random.default_rng(0).integers(0, 12, size=(2, 9)).astype(np.int64)
    states, ref_states = g.zero_states(2), ref.zero_states(2)
    for lo, hi in [(0, 4), (4, 5), (5, 9)]:  # a chunk, one decoding step, a chunk
        before = cudart.h2d_bytes
        out, states = g.run({"tokens": tokens[:, lo:hi]}, states)
        want, ref_states = ref.run({"tokens": tokens[:, lo:hi]}, ref_states)
        np.testing.assert_allclose(out["logits"], want["logits"], atol=1e-6)
        for k in states:
            np.testing.assert_allclose(states[k], ref_states[k], atol=1e-6)
        if lo > 0:  # states fed back unchanged were not copied up again: only the tokens were
            assert cudart.h2d_bytes - before == tokens[:, lo:hi].nbytes
    assert trt.last_engine.profiles_used == [1, 0]  # the chunk profile, then the decode profile


def test_runner_copies_a_state_the_caller_changed_in_place(fake_trt_bundle):
    b, _, _ = fake_trt_bundle
    ref = load_bundle(b, backend="onnxruntime").graph("lm")
    g = load_bundle(b, backend="tensorrt").graph("lm")
    tokens = np.array([[1, 2, 3]], dtype=np.int64)
    _, states = g.run({"tokens": tokens}, g.zero_states(1))
    _, ref_states = ref.run({"tokens": tokens}, ref.zero_states(1))
    for k in states:  # e.g. a stream reset by zeroing its state in place
        states[k][...] = 0.5
        ref_states[k][...] = 0.5
    out, _ = g.run({"tokens": tokens}, states)
    want, _ = ref.run({"tokens": tokens}, ref_states)
    np.testing.assert_allclose(out["logits"], want["logits"], atol=1e-6)


def test_runner_refuses_shapes_outside_the_engine_profiles(fake_trt_bundle):
    """A chunk longer than build-engine's --max-chunk, or more streams than --max-batch, was a
    numpy error on unresolved output shapes (TensorRT's set_input_shape only returns False)."""
    b, trt, _ = fake_trt_bundle  # built with max_batch=4, max_chunk=16
    g = load_bundle(b, backend="tensorrt").graph("lm")
    with pytest.raises(StreamError, match=r"outside the engine's profile 'chunk'.*--max-chunk"):
        g.run({"tokens": np.zeros((1, 17), np.int64)}, g.zero_states(1))
    with pytest.raises(StreamError, match="--max-batch"):
        g.run({"tokens": np.zeros((5, 1), np.int64)}, g.zero_states(5))
    out, _ = g.run({"tokens": np.zeros((4, 16), np.int64)}, g.zero_states(4))  # the limits themselves
    assert out["logits"].shape[:2] == (4, 16)
    trt.last_engine.accept_shapes = False  # TensorRT refuses what the manifest did not foresee
    with pytest.raises(StreamError, match="TensorRT refused shape"):
        g.run({"tokens": np.zeros((1, 3), np.int64)}, g.zero_states(1))


def test_build_engines_fp16_on_a_tensorrt_without_weak_typing(tmp_path, monkeypatch):
    """TensorRT 11 removed BuilderFlag.FP16: --fp16 is one BuildError, not an AttributeError."""
    import sys

    torch.manual_seed(0)
    export_bundle(QRNNLanguageModel(12, 6, 6, 1), tmp_path, fo_pool="portable", verify=False)
    trt = _recording_tensorrt([])
    trt.BuilderFlag = types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(BuildError, match="no BuilderFlag.FP16"):
        build_engines(tmp_path, fp16=True)


def _recording_tensorrt(calls, parse_ok=True):
    """A stand-in of the builder side of `tensorrt` that records what build_engines asks for."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.fake"
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, p):
            calls.append(("profile", p.shapes))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return "network"

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"plan-bytes"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 1

        def parse(self, data):
            import onnx
            proto = onnx.ModelProto.FromString(data)
            calls.append(("parse", [(n.op_type, sorted(a.name for a in n.attribute)) for n in proto.graph.node
                                    if n.op_type == "FoPool"]))
            return parse_ok

        def get_error(self, i):
            return "In node 3: unsupported op"

    class Registry:
        def load_library(self, path):
            calls.append(("load_library", path))

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.get_plugin_registry = lambda: Registry()
    return trt


def test_build_engines_records_engines_and_profiles(tmp_path, monkeypatch):
    import sys

    from qrnn_deploy.export import tensorrt_aot
    torch.manual_seed(0)
    export_bundle(QRNNLanguageModel(12, 6, 6, 1), tmp_path, verify=False)  # custom FoPool, no plugin attrs
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt(calls))
    monkeypatch.setattr(tensorrt_aot, "register_plugin", lambda: calls.append(("register_aot",)))
    lines = []
    man = build_engines(tmp_path, fp16=True, max_batch=3, max_chunk=10, plugin="aot", log=lines.append)
    assert ("register_aot",) in calls and ("flag", "fp16") in calls
    # build-engine gives the FoPool nodes the plugin attributes before parsing.
    parsed = next(c for c in calls if c[0] == "parse")[1]
    assert parsed and all("plugin_namespace" in attrs and "plugin_version" in attrs for _, attrs in parsed)
    profiles = [c[1] for c in calls if c[0] == "profile"]
    assert [p["tokens"] for p in profiles] == [([1, 1], [3, 1], [3, 1]), ([1, 1], [3, 10], [3, 10])]
    e = load_manifest(tmp_path).engines["lm"]
    assert e.file == "lm.fp16.plan" and e.precision == "fp16" and e.plugin == "aot" and e.tensorrt_version == "10.fake"
    assert [p["name"] for p in e.profiles] == ["decode", "chunk"] and man.engines["lm"].file == e.file
    assert (tmp_path / "lm.fp16.plan").read_bytes() == b"plan-bytes" and "built lm.fp16.plan" in lines[0]


def test_build_engines_library_mode_and_parse_errors(tmp_path, monkeypatch):
    import sys
    torch.manual_seed(0)
    export_bundle(QRNNLanguageModel(12, 6, 6, 1), tmp_path, verify=False)
    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt(calls))
    monkeypatch.delenv("QRNN_TRT_PLUGIN_LIBRARY", raising=False)
    monkeypatch.setenv("QRNN_PLUGIN_DIR", str(tmp_path / "nowhere"))
    from qrnn_deploy import _native
    if (_native.plugin_dirs()[-1] / "libqrnn_trt_plugin.so").is_file():
        pytest.skip("a TensorRT plugin library is built here")
    with pytest.raises(BuildError, match="libqrnn_trt_plugin.so is not built"):
        build_engines(tmp_path, plugin="library")
    lib = tmp_path / "libqrnn_trt_plugin.so"
    lib.write_bytes(b"")
    monkeypatch.setenv("QRNN_TRT_PLUGIN_LIBRARY", str(lib))
    build_engines(tmp_path, plugin="library", log=lambda s: None)
    assert ("load_library", str(lib)) in calls and load_manifest(tmp_path).engines["lm"].plugin == "library"
    monkeypatch.setitem(sys.modules, "tensorrt", _recording_tensorrt(calls, parse_ok=False))
    with pytest.raises(BuildError, match="cannot parse graph 'lm'.*unsupported op"):
        build_engines(tmp_path, plugin="library")


def test_tensorrt_backend_without_engines_says_build_them(lm_bundle, monkeypatch):
    from qrnn_deploy.runtime import tensorrt_backend

    cudart = _FakeCudart()
    monkeypatch.setattr(tensorrt_backend, "_import_tensorrt", lambda: _fake_tensorrt(cudart))
    monkeypatch.setattr(tensorrt_backend, "_import_cuda_runtime", lambda: cudart)
    with pytest.raises(BundleError, match="build-engine"):
        load_bundle(lm_bundle, backend="tensorrt")


def test_runner_shared_by_threads_gives_each_its_own_results(fake_trt_bundle):
    """One bundle shared by a thread pool: the runner's contexts, device buffers and fed-back
    state record are per runner, and calls from several threads mixed them up (wrong logits,
    states of another sequence). Calls are now serialized per runner."""
    import threading

    b, _, _ = fake_trt_bundle
    ref = load_bundle(b, backend="onnxruntime").graph("lm")
    g = load_bundle(b, backend="tensorrt").graph("lm")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many GIL hand-overs: many interleavings

    def run_sequence(graph, k):
        rng = np.random.default_rng(k)
        states, outs = graph.zero_states(1 + k % 2), []
        for _ in range(25):  # chunks and single steps, states fed back as they came
            tokens = rng.integers(0, 12, size=(1 + k % 2, int(rng.integers(1, 4)))).astype(np.int64)
            out, states = graph.run({"tokens": tokens}, states)
            outs.append(out["logits"])
        return outs

    want = {k: run_sequence(ref, k) for k in range(6)}
    got, errors = {}, []

    def worker(k):
        try:
            got[k] = run_sequence(g, k)
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            errors.append(repr(e))

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    for k in range(6):
        for a, w in zip(got[k], want[k]):
            np.testing.assert_allclose(a, w, atol=1e-5)


def test_runner_after_a_failed_run_feeds_the_states_again_correctly(fake_trt_bundle):
    """A run that failed after swapping a fed-back state's buffers left the record of returned
    states in place: the retry with the same states read the other buffer (wrong logits)."""
    b, trt, _ = fake_trt_bundle
    ref = load_bundle(b, backend="onnxruntime").graph("lm")
    g = load_bundle(b, backend="tensorrt").graph("lm")
    tokens = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int64)
    _, states = g.run({"tokens": tokens[:, :3]}, g.zero_states(2))
    _, ref_states = ref.run({"tokens": tokens[:, :3]}, ref.zero_states(2))
    ctx = next(iter(g.runner.contexts.values()))
    ctx_type = type(ctx)
    real = ctx_type.execute_async_v3
    ctx_type.execute_async_v3 = lambda self, stream: False  # the next run fails after the inputs are set
    try:
        with pytest.raises(StreamError, match="failed to run"):
            g.run({"tokens": tokens[:, 3:]}, states)
    finally:
        ctx_type.execute_async_v3 = real
    out, _ = g.run({"tokens": tokens[:, 3:]}, states)
    want, _ = ref.run({"tokens": tokens[:, 3:]}, ref_states)
    np.testing.assert_allclose(out["logits"], want["logits"], atol=1e-6)
