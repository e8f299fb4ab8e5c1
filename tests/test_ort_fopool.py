"""The onnxruntime FoPool custom op (plugins/ort, libqrnn_ort.so) against the reference fo_pool_ref.

Every session is a real onnxruntime.InferenceSession over a model built with onnx.helper and
created through qrnn_deploy._native.ort_session. Invalid cases run in-process on purpose: a crash
in the library kills pytest, which fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from qrnn_deploy import _native  # noqa: E402
from qrnn_deploy.errors import BuildError  # noqa: E402
from qrnn_deploy.nn.fo_pool import fo_pool_ref  # noqa: E402

try:
    LIB = _native.ort_library_path()
except BuildError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"libqrnn_ort.so not built ({e})", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
P_OF = {"f": 2, "fo": 3, "ifo": 4}
ONNX_TYPE = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16, np.int32: TensorProto.INT32,
             np.float64: TensorProto.DOUBLE}
ORT_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
              ort.capi.onnxruntime_pybind11_state.RuntimeException, ort.capi.onnxruntime_pybind11_state.InvalidGraph)


def fopool_model(pooling="fo", batch_first=0, reverse=0, c0="input", c_last=True, dtype=np.float32,
                 gates_shape=None, c0_shape=None) -> bytes:
    """One FoPool node. c0: 'input' (graph input), 'empty' (name ''), 'absent' (not listed)."""
    inputs = ["gates"] + {"input": ["c0"], "empty": [""], "absent": []}[c0]
    outputs = ["h"] + (["c_last"] if c_last else [])
    attrs = {"batch_first": batch_first, "reverse": reverse}
    if pooling is not None:
        attrs["pooling"] = pooling
    node = helper.make_node("FoPool", inputs, outputs, domain="qrnn", name="pool", **attrs)
    et = ONNX_TYPE[dtype]
    g_in = [helper.make_tensor_value_info("gates", et, gates_shape)]
    if c0 == "input":
        g_in.append(helper.make_tensor_value_info("c0", et, c0_shape))
    g_out = [helper.make_tensor_value_info(o, et, None) for o in outputs]
    graph = helper.make_graph([node], "fopool", g_in, g_out)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("qrnn", 1)])
    model.ir_version = 9
    return model.SerializeToString()


@lru_cache(maxsize=None)
def session(pooling="fo", batch_first=0, reverse=0, c0="input", c_last=True, dtype=np.float32, threads=2):
    return _native.ort_session(fopool_model(pooling, batch_first, reverse, c0, c_last, dtype), threads=threads)


def reference(gates: np.ndarray, c0, pooling, batch_first, reverse):
    """fo_pool_ref in float64 on the (possibly fp16) stored values."""
    g = torch.from_numpy(gates.astype(np.float64))
    c = None if c0 is None else torch.from_numpy(c0.astype(np.float64))
    h, c_last = fo_pool_ref(g, c, pooling, bool(batch_first), bool(reverse))
    return h.numpy(), c_last.numpy()


def run_case(T, B, H, pooling, batch_first, reverse, c0_mode, c_last, dtype, rng, scale=2.0):
    P = P_OF[pooling]
    shape = (B, T, P * H) if batch_first else (T, B, P * H)
    gates = (rng.standard_normal(shape) * scale).astype(dtype)
    c0 = rng.standard_normal((B, H)).astype(dtype) if c0_mode == "input" else None
    sess = session(pooling, batch_first, reverse, c0_mode, c_last, dtype)
    feed = {"gates": gates} if c0 is None else {"gates": gates, "c0": c0}
    outs = sess.run(None, feed)
    h_ref, c_ref = reference(gates, c0, pooling, batch_first, reverse)
    tol = 1e-6 if dtype == np.float32 else 2e-3
    assert outs[0].dtype == dtype and outs[0].shape == h_ref.shape
    np.testing.assert_allclose(outs[0].astype(np.float64), h_ref, rtol=tol, atol=tol)
    if c_last:
        assert outs[1].dtype == dtype and outs[1].shape == (B, H)
        np.testing.assert_allclose(outs[1].astype(np.float64), c_ref, rtol=tol, atol=tol)
    else:
        assert len(outs) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("c0_mode", ["input", "empty", "absent"])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("batch_first", [0, 1])
@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
def test_parity_with_reference(pooling, batch_first, reverse, c0_mode, dtype):
    rng = np.random.default_rng(hash((pooling, batch_first, reverse, c0_mode)) % 2**32)
    run_case(5, 3, 7, pooling, batch_first, reverse, c0_mode, True, dtype, rng)
    run_case(4, 2, 5, pooling, batch_first, reverse, c0_mode, False, dtype, rng)


@pytest.mark.parametrize("threads", [1, 2])
def test_several_hidden_chunks_and_threads(threads):
    # H = 300 spans two 256-unit work items plus a ragged tail; T long enough to accumulate error;
    # 64 * 8 * 300 elements: enough work for the kernel to use onnxruntime's thread pool.
    rng = np.random.default_rng(1)
    T, B, H = 64, 8, 300
    gates = rng.standard_normal((T, B, 3 * H)).astype(np.float32) * 3
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    sess = session("fo", 0, 0, "input", True, np.float32, threads)
    h, c_last = sess.run(None, {"gates": gates, "c0": c0})
    h_ref, c_ref = reference(gates, c0, "fo", 0, 0)
    np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c_last, c_ref, rtol=1e-6, atol=1e-6)


def test_default_pooling_is_fo():
    sess = _native.ort_session(fopool_model(pooling=None))
    rng = np.random.default_rng(2)
    gates = rng.standard_normal((3, 2, 12)).astype(np.float32)
    c0 = rng.standard_normal((2, 4)).astype(np.float32)
    h, c_last = sess.run(None, {"gates": gates, "c0": c0})
    h_ref, c_ref = reference(gates, c0, "fo", 0, 0)
    np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-6)


def test_saturated_and_extreme_gates():
    # Large pre-activations (including +-inf, which zoneout writes into f) must stay finite.
    gates = np.array([[[50.0, -50.0, 88.0, 0.0, np.inf, -np.inf]], [[-1e4, 1e4, -90.0, 3.0, -np.inf, np.inf]]],
                     dtype=np.float32)  # T=2, B=1, P*H=6 -> H=2
    sess = session("fo", 0, 0, "absent", True, np.float32)
    h, c_last = sess.run(None, {"gates": gates})
    h_ref, c_ref = reference(gates, None, "fo", 0, 0)
    np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c_last, c_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("T,B", [(0, 3), (4, 0), (0, 0)])
def test_empty_time_or_batch(T, B, dtype):
    H = 4
    for c0_mode in ("input", "absent"):
        sess = session("ifo", 0, 0, c0_mode, True, dtype)
        gates = np.zeros((T, B, 4 * H), dtype)
        feed = {"gates": gates}
        c0 = np.arange(B * H, dtype=dtype).reshape(B, H)
        if c0_mode == "input":
            feed["c0"] = c0
        h, c_last = sess.run(None, feed)
        assert h.shape == (T, B, H)
        np.testing.assert_array_equal(c_last, c0 if c0_mode == "input" else np.zeros((B, H), dtype))


def test_output_shape_inference():
    sess = _native.ort_session(fopool_model("ifo", batch_first=1, gates_shape=["batch", "time", 20],
                                            c0_shape=["batch", 5]))
    shapes = {o.name: o.shape for o in sess.get_outputs()}
    assert shapes == {"h": ["batch", "time", 5], "c_last": ["batch", 5]}
    sess = _native.ort_session(fopool_model("f", gates_shape=[6, 2, 8], c0="absent"))
    assert {o.name: o.shape for o in sess.get_outputs()} == {"h": [6, 2, 4], "c_last": [2, 4]}
    assert [o.type for o in sess.get_outputs()] == ["tensor(float)"] * 2
    sess = _native.ort_session(fopool_model("fo", gates_shape=[6, 2, 9], c0="absent", dtype=np.float16))
    assert [o.type for o in sess.get_outputs()] == ["tensor(float16)"] * 2


# ------------------------------------------------------------------------------------------
# Errors: failed statuses with messages naming the input and the shapes; never a crash.


def expect_error(fn, *needles):
    with pytest.raises(ORT_ERRORS) as info:
        fn()
    msg = str(info.value)
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def test_bad_gates_rank_and_last_axis():
    sess = session("fo", 0, 0, "absent", True, np.float32)
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 9), np.float32)}), "'gates'", "rank 3", "[2, 9]")
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 1, 3, 9), np.float32)}), "'gates'", "[2, 1, 3, 9]")
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 3, 10), np.float32)}), "'gates'", "10", "P = 3")


def test_bad_c0_shape_names_both_shapes():
    sess = session("fo", 1, 0, "input", True, np.float32)
    gates = np.zeros((3, 5, 12), np.float32)  # batch_first: B=3, T=5, H=4
    expect_error(lambda: sess.run(None, {"gates": gates, "c0": np.zeros((5, 4), np.float32)}),
                 "'c0'", "[3, 4]", "[5, 4]", "[3, 5, 12]")
    expect_error(lambda: sess.run(None, {"gates": gates, "c0": np.zeros((3, 4, 1), np.float32)}), "'c0'")
    expect_error(lambda: sess.run(None, {"gates": gates, "c0": np.zeros((12,), np.float32)}), "'c0'")


def test_bad_attributes_fail_at_session_creation():
    expect_error(lambda: _native.ort_session(fopool_model("lstm")), "unknown pooling", "lstm")
    expect_error(lambda: _native.ort_session(fopool_model("fo", batch_first=2)), "batch_first")
    expect_error(lambda: _native.ort_session(fopool_model("fo", reverse=-1)), "reverse")


def test_attributes_of_the_wrong_type_are_errors_not_defaults():
    """reverse=1.0, pooling=4 or batch_first="1" were read as absent: the node silently ran as
    fo / forward / time-major (found by review)."""
    expect_error(lambda: _native.ort_session(fopool_model("fo", reverse=1.0)), "'reverse'", "integer")
    expect_error(lambda: _native.ort_session(fopool_model("fo", batch_first="1")), "'batch_first'", "integer")
    expect_error(lambda: _native.ort_session(fopool_model(4)), "'pooling'", "string")


def test_static_shape_errors_fail_when_the_session_is_created():
    # onnxruntime (1.32) drops statuses from custom-op shape inference, so the kernel checks the
    # shapes the graph fixes when the session creates it: the graph fails to load, naming the
    # input and the shapes (symbolic dimensions by name, unknown ones as '?').
    def load(**kw):
        return lambda: _native.ort_session(fopool_model(**kw))

    expect_error(load(pooling="ifo", gates_shape=[2, 3, 10], c0="absent"), "'gates'", "[2, 3, 10]", "P = 4")
    expect_error(load(pooling="fo", gates_shape=["T", 9]), "'gates'", "rank 3", "[T, 9]")
    expect_error(load(pooling="fo", gates_shape=["T", 5, 12], c0_shape=[3, 4]), "'c0'", "[5, 4]", "[T, 5, 12]", "[3, 4]")
    expect_error(load(pooling="fo", gates_shape=["T", "B", 12], c0_shape=["B", 5]), "'c0'", "[B, 4]", "[B, 5]")
    expect_error(load(pooling="f", batch_first=1, gates_shape=[3, "T", 12], c0_shape=[2, 6]), "'c0'", "[3, 6]")
    expect_error(load(pooling="fo", gates_shape=["T", "B", "PH"], c0_shape=[2, 4, 1]), "'c0'", "[2, 4, 1]")
    # what the graph leaves open is checked at run time
    sess = _native.ort_session(fopool_model("fo", gates_shape=["T", "B", 12], c0_shape=["B", 4]))
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 3, 12), np.float32),
                                         "c0": np.zeros((2, 4), np.float32)}), "'c0'", "[3, 4]", "[2, 4]")
    h, _ = sess.run(None, {"gates": np.zeros((2, 3, 12), np.float32), "c0": np.zeros((3, 4), np.float32)})
    assert h.shape == (2, 3, 4)


@pytest.mark.parametrize("dtype,onnx_name", [(np.int32, "tensor(int32)"), (np.float64, "tensor(double)")])
def test_non_float_gates_are_refused(dtype, onnx_name):
    # Only float32 / float16 kernels are registered: onnxruntime's type check names the input.
    expect_error(lambda: _native.ort_session(fopool_model("fo", dtype=dtype)), "(gates)", onnx_name)


def test_without_the_library_the_op_is_unknown():
    with pytest.raises(ORT_ERRORS):
        _native.ort_session(fopool_model(), custom_ops=False)


# ------------------------------------------------------------------------------------------
# Property-based fuzzing: random shapes and attributes, valid and invalid.

POOLINGS = ["f", "fo", "ifo", "", "FO", "fo ", "ifoo"]


@st.composite
def fuzz_case(draw):
    pooling = draw(st.sampled_from(POOLINGS))
    batch_first = draw(st.integers(0, 1))
    reverse = draw(st.integers(0, 1))
    c0_mode = draw(st.sampled_from(["input", "empty", "absent"]))
    c_last = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float16]))
    T, B, H = draw(st.integers(0, 6)), draw(st.integers(0, 4)), draw(st.integers(1, 9))
    rank = draw(st.sampled_from([3, 3, 3, 3, 2, 4]))
    last_delta = draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
    c0_delta = draw(st.sampled_from([(0, 0), (0, 0), (0, 0), (1, 0), (0, 1), (0, -1)]))
    return pooling, batch_first, reverse, c0_mode, c_last, dtype, T, B, H, rank, last_delta, c0_delta


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_case(), st.integers(0, 2**32 - 1))
def test_fuzz_valid_match_invalid_raise(case, seed):
    pooling, batch_first, reverse, c0_mode, c_last, dtype, T, B, H, rank, last_delta, c0_delta = case
    rng = np.random.default_rng(seed)
    P = P_OF.get(pooling, 3)
    d0, d1 = (B, T) if batch_first else (T, B)
    last = P * H + last_delta
    shape = {3: (d0, d1, last), 2: (d0, last), 4: (d0, d1, 1, last)}[rank]
    gates = (rng.standard_normal(shape) * 2).astype(dtype)
    c0 = None
    if c0_mode == "input":
        c0 = rng.standard_normal((max(B + c0_delta[0], 0), max(H + c0_delta[1], 0))).astype(dtype)
    valid = pooling in P_OF and rank == 3 and last_delta == 0 and (c0 is None or c0_delta == (0, 0))

    if pooling not in P_OF:
        expect_error(lambda: session(pooling, batch_first, reverse, c0_mode, c_last, dtype), "pooling")
        return
    sess = session(pooling, batch_first, reverse, c0_mode, c_last, dtype)
    feed = {"gates": gates} if c0 is None else {"gates": gates, "c0": c0}
    if not valid:
        expect_error(lambda: sess.run(None, feed), "FoPool", "'c0'" if rank == 3 and last_delta == 0 else "'gates'")
        return
    outs = sess.run(None, feed)
    h_ref, c_ref = reference(gates, c0, pooling, batch_first, reverse)
    tol = 1e-6 if dtype == np.float32 else 2e-3
    assert outs[0].shape == h_ref.shape
    np.testing.assert_allclose(outs[0].astype(np.float64), h_ref, rtol=tol, atol=tol)
    assert len(outs) == (2 if c_last else 1)
    if c_last:
        np.testing.assert_allclose(outs[1].astype(np.float64), c_ref, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------
# Discovery and loading.


def test_library_path_errors_say_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setattr(_native, "plugin_dirs", lambda: [tmp_path])
    with pytest.raises(BuildError, match="build_plugins.sh"):
        _native.ort_library_path()
    with pytest.raises(BuildError, match="build_plugins.sh"):
        _native.kernels_library_path()
    monkeypatch.setenv("QRNN_ORT_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(BuildError, match="QRNN_ORT_LIBRARY"):
        _native.ort_library_path()


def test_ort_session_sets_threads_from_a_path(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(fopool_model(c0="absent"))
    sess = _native.ort_session(path, threads=1)
    (h, c_last) = sess.run(None, {"gates": np.zeros((2, 1, 3), np.float32)})
    assert h.shape == (2, 1, 1) and c_last.shape == (1, 1)
    with pytest.raises(Exception, match="threads"):
        _native.ort_session(path, threads=0)


def test_loads_in_a_process_without_torch(tmp_path):
    model = tmp_path / "fopool.onnx"
    model.write_bytes(fopool_model("ifo", batch_first=1, reverse=1))
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import numpy as np
        from qrnn_deploy._native import ort_session
        sess = ort_session({str(model)!r}, threads=2)
        rng = np.random.default_rng(0)
        B, T, H = 2, 5, 3
        g = rng.standard_normal((B, T, 4 * H)).astype(np.float32)
        c0 = rng.standard_normal((B, H)).astype(np.float32)
        h, c_last = sess.run(None, {{"gates": g, "c0": c0}})
        sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
        c = c0.astype(np.float64)
        for t in range(T - 1, -1, -1):
            z, f, o, i = np.tanh(g[:, t, :H].astype(np.float64)), sig(g[:, t, H:2*H]), sig(g[:, t, 2*H:3*H]), sig(g[:, t, 3*H:])
            c = f * c + i * z
            assert np.abs(h[:, t] - o * c).max() < 1e-6
        assert np.abs(c_last - c).max() < 1e-6
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr


# ------------------------------------------------------------------------------------------
# Round 3 of mutation testing (see tests/test_hand_derived.py): cases the tests above let through.


@pytest.mark.parametrize("pooling", ["f", "fo", "ifo"])
def test_gates_with_an_empty_last_axis_are_refused_at_run_time(pooling):
    # H = 0 is not P*H with H >= 1; the graph leaves the shape open, so the kernel's check must say so.
    sess = session(pooling, 0, 0, "absent", True, np.float32)
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 3, 0), np.float32)}), "'gates'", "H >= 1")


def test_float16_infinities_in_c0_stay_infinite():
    # gates all 0: z = 0, f = o = 1/2, so c_t = c_{t-1} / 2 and h_t = c_t / 2; inf / 2 = inf
    # (a float16 inf read as a large finite number would come out as 65536 / 2**k).
    sess = session("fo", 0, 0, "input", True, np.float16)
    c0 = np.array([[np.inf, -np.inf, 8.0]], np.float16)
    h, c_last = sess.run(None, {"gates": np.zeros((2, 1, 9), np.float16), "c0": c0})
    np.testing.assert_array_equal(c_last, np.array([[np.inf, -np.inf, 2.0]], np.float16))
    np.testing.assert_array_equal(h[:, 0], np.array([[np.inf, -np.inf, 2.0], [np.inf, -np.inf, 1.0]], np.float16))


def test_shape_errors_name_the_node_then_the_input():
    sess = session("fo", 0, 0, "input", True, np.float32)
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 3, 12), np.float32), "c0": np.zeros((2, 4), np.float32)}),
                 "FoPool node 'pool': input 'c0' must be [B, H] = [3, 4]")
    expect_error(lambda: sess.run(None, {"gates": np.zeros((2, 3, 10), np.float32), "c0": np.zeros((3, 4), np.float32)}),
                 "FoPool node 'pool': last axis of input 'gates' (10")


def test_a_graph_with_an_empty_last_axis_fails_when_the_session_is_created():
    expect_error(lambda: _native.ort_session(fopool_model("fo", gates_shape=[2, 3, 0], c0="absent")),
                 "'gates'", "[2, 3, 0]", "H >= 1")


def test_items_not_divisible_by_the_threads_are_all_computed():
    # 200 * 3 * 256 elements: enough work for 2 threads; 3 work items (one per batch row, H = 256)
    # split 2 + 1, so the last task holds fewer items than the others and must still run.
    rng = np.random.default_rng(3)
    T, B, H = 200, 3, 256
    gates = rng.standard_normal((T, B, 3 * H)).astype(np.float32)
    h, c_last = session("fo", 0, 0, "absent", True, np.float32, 2).run(None, {"gates": gates})
    h_ref, c_ref = reference(gates, None, "fo", 0, 0)
    np.testing.assert_allclose(h, h_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c_last, c_ref, rtol=1e-6, atol=1e-6)
