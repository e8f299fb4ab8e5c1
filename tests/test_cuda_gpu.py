"""The CUDA FoPool kernels on a GPU (marked gpu: `python3 -m pytest -m gpu tests/test_cuda_gpu.py`).

Skipped, with the reason, without a CUDA device. scripts/gpu_check.sh runs these first.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from qrnn_deploy.nn import QRNNLayer, _cuda_kernels, fo_pool, fo_pool_ref

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 3e-3, torch.bfloat16: 2e-2}
P_OF = {"f": 2, "fo": 3, "ifo": 4}


def test_kernels_build_and_load():
    assert _cuda_kernels.find_nvcc(), "nvcc is needed on the GPU machine"
    with warnings.catch_warnings():
        warnings.simplefilter("error", _cuda_kernels.KernelWarning)
        assert _cuda_kernels.available("cuda")


def _rel(a, b):
    return (a.double() - b).abs().max().item() / max(1.0, b.abs().max().item())


def _check_against_reference(dtype, T, B, H, pooling, bf, rev, with_c0, gen):
    """torch.ops.qrnn.fo_pool on the GPU (forward + autograd, no silent fallback) against float64
    fo_pool_ref on the same inputs rounded to `dtype`."""
    shape = (B, T, P_OF[pooling] * H) if bf else (T, B, P_OF[pooling] * H)
    r = lambda *s: (torch.randn(*s, generator=gen, dtype=torch.float64) * 2).to(dtype).cuda()  # noqa: E731
    gates, gh, gc = r(*shape), r(*shape[:2], H), r(B, H)
    c0 = r(B, H) if with_c0 else None
    g = gates.clone().requires_grad_()
    c = None if c0 is None else c0.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error", _cuda_kernels.KernelWarning)
        h, cl = fo_pool(g, c, pooling, bf, rev)
        torch.autograd.backward([h, cl], [gh, gc])
    g64 = gates.double().requires_grad_()
    c64 = None if c0 is None else c0.double().requires_grad_()
    rh, rc = fo_pool_ref(g64, c64, pooling, bf, rev)
    torch.autograd.backward([rh, rc], [gh.double(), gc.double()])
    assert h.dtype == dtype and cl.dtype == dtype and g.grad.dtype == dtype
    pairs = [("h", h, rh), ("c_last", cl, rc), ("d gates", g.grad, g64.grad)]
    pairs += [("d c0", c.grad, c64.grad)] if c0 is not None else []
    for name, a, b in pairs:
        assert _rel(a.detach(), b.detach()) <= TOL[dtype], (name, pooling, bf, rev, with_c0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("H", [70, 64])  # few columns: one a thread (the wide form: the test below)
def test_op_forward_backward_match_the_float64_reference(dtype, H):
    gen = torch.Generator().manual_seed(1)
    for pooling, bf, rev, with_c0 in itertools.product(["f", "fo", "ifo"], [False, True], [False, True],
                                                       [False, True]):
        _check_against_reference(dtype, 23, 3, H, pooling, bf, rev, with_c0, gen)


def _columns_per_thread(dtype, B, H):
    lib = _cuda_kernels.library(torch.device("cuda"))
    return lib.qrnn_fo_pool_cuda_columns_per_thread(_cuda_kernels.DTYPE_CODES[dtype], B, H)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T, with_c0", [(3, True), (9, False)])  # 9: past one unroll of 4 steps
def test_wide_launches_match_the_float64_reference(dtype, T, with_c0):
    # B * H large enough that each thread walks 2 (float32) or 4 (16-bit) columns.
    B, H = 257, 1024
    assert _columns_per_thread(dtype, B, H) > 1
    gen = torch.Generator().manual_seed(2)
    for pooling, bf, rev in itertools.product(["f", "fo", "ifo"], [False, True], [False, True]):
        _check_against_reference(dtype, T, B, H, pooling, bf, rev, with_c0, gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_misaligned_views_run_with_narrower_accesses(dtype):
    # A contiguous view one element into its storage: wide accesses would fault, so the
    # launcher's rule takes one column per thread; results and gradients are still the reference's.
    T, B, H = 3, 257, 1024
    assert _columns_per_thread(dtype, B, H) > 1  # aligned, this shape would run wide
    n = T * B * 3 * H
    gates = torch.randn(n + 1, device="cuda", dtype=dtype)[1:].view(T, B, 3 * H).requires_grad_()
    h, cl = fo_pool(gates, None, "fo")
    (h.float().square().sum() + cl.float().sum()).backward()
    g64 = gates.detach().double().requires_grad_()
    rh, rc = fo_pool_ref(g64, None, "fo")
    (rh.square().sum() + rc.sum()).backward()
    tol = TOL[dtype] * 10  # the loss squares h: its gradient carries the rounding of h
    assert _rel(h.detach(), rh.detach()) <= TOL[dtype] and _rel(cl.detach(), rc.detach()) <= TOL[dtype]
    assert _rel(gates.grad, g64.grad) <= tol


def test_float32_c0_beside_half_gates():
    gates = torch.randn(9, 4, 3 * 16, device="cuda").half()
    c0 = torch.randn(4, 16, device="cuda", requires_grad=True)
    h, cl = fo_pool(gates, c0)
    cl.float().sum().backward()
    rh, rc = fo_pool_ref(gates.double(), c0.detach().double())
    assert _rel(h, rh) < 3e-3 and c0.grad.dtype == torch.float32


def test_runs_on_the_current_stream_and_captures_in_a_cuda_graph():
    # Capture fails if a kernel is launched on another stream than the capturing (current) one.
    gates = torch.randn(16, 8, 3 * 64, device="cuda")
    c0 = torch.randn(8, 64, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fo_pool(gates, c0)  # warm-up (builds / loads the library outside the capture)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        h, cl = fo_pool(gates, c0)
    gates.copy_(torch.randn_like(gates))
    graph.replay()
    torch.cuda.synchronize()
    rh, rc = fo_pool_ref(gates.double(), c0.double())
    assert _rel(h, rh) < 2e-5 and _rel(cl, rc) < 2e-5


def test_layer_training_step_matches_cpu():
    torch.manual_seed(0)
    layer = QRNNLayer(32, 48, window=2, pooling="ifo")
    x = torch.randn(4, 30, 32)
    y_cpu, s_cpu = layer(x)
    y_cpu.square().mean().backward()
    grads_cpu = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    layer.cuda()
    y, s = layer(x.cuda())
    y.square().mean().backward()
    assert torch.allclose(y.cpu(), y_cpu, atol=1e-5)
    for p, gcpu in zip(layer.parameters(), grads_cpu):
        assert torch.allclose(p.grad.cpu(), gcpu, atol=1e-5, rtol=1e-4)


def test_large_batch_spans_many_blocks_and_long_time():
    T, B, H = 700, 33, 257  # B*H not a multiple of the block; T not a multiple of the unroll
    gates = torch.randn(B, T, 3 * H, device="cuda")
    h, cl = fo_pool(gates, None, "fo", batch_first=True)
    rh, rc = fo_pool(gates.cpu(), None, "fo", batch_first=True)  # the CPU path
    assert _rel(h.cpu(), rh.double()) < 1e-4 and _rel(cl.cpu(), rc.double()) < 1e-4


def test_onnxruntime_cuda_provider_runs_the_custom_op():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)")
    from qrnn_deploy import _native
    try:
        lib = _native.ort_library_path()
    except Exception as e:
        pytest.skip(f"libqrnn_ort.so not built: {e}")
    from onnx import TensorProto, helper
    node = helper.make_node("FoPool", ["gates", "c0"], ["h", "c_last"], domain="qrnn", pooling="fo")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("gates", TensorProto.FLOAT, ["T", "B", 96]),
                                            helper.make_tensor_value_info("c0", TensorProto.FLOAT, ["B", 32])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["T", "B", 32]),
                               helper.make_tensor_value_info("c_last", TensorProto.FLOAT, ["B", 32])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("qrnn", 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(lib)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CUDAExecutionProvider"])
    gates, c0 = torch.randn(10, 4, 96), torch.randn(4, 32)
    h, cl = sess.run(None, {"gates": gates.numpy(), "c0": c0.numpy()})
    rh, rc = fo_pool_ref(gates.double(), c0.double())
    assert _rel(torch.from_numpy(h), rh) < 2e-5 and _rel(torch.from_numpy(cl), rc) < 2e-5
