"""The native CPU FoPool kernel (libqrnn_kernels.so via qrnn_deploy/nn/_cpu_kernels.py) behind fo_pool.

Forward results are compared with the specification fo_pool_ref; gradients with autograd through
fo_pool_ref in float64, and with the PyTorch path of the op.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qrnn_deploy.nn import _cpu_kernels
from qrnn_deploy.nn.fo_pool import fo_pool, fo_pool_ref

# The module, not the function that qrnn_deploy.nn re-exports under the same name.
fo_pool_module = importlib.import_module("qrnn_deploy.nn.fo_pool")

if not _cpu_kernels.available():  # pragma: no cover - depends on the machine
    pytest.skip(f"libqrnn_kernels.so not available: {_cpu_kernels.unavailable_reason()}", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
P_OF = {"f": 2, "fo": 3, "ifo": 4}
CASES = [(p, bf, rev, c0) for p in P_OF for bf in (False, True) for rev in (False, True) for c0 in (False, True)]


def make_inputs(T, B, H, pooling, batch_first, with_c0, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    P = P_OF[pooling]
    shape = (B, T, P * H) if batch_first else (T, B, P * H)
    gates = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    c0 = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype) if with_c0 else None
    grad_h = torch.randn(shape[:2] + (H,), generator=g, dtype=torch.float64).to(dtype)
    grad_c = torch.randn(B, H, generator=g, dtype=torch.float64).to(dtype)
    return gates, c0, grad_h, grad_c


@pytest.mark.parametrize("pooling,batch_first,reverse,with_c0", CASES)
def test_forward_matches_reference(pooling, batch_first, reverse, with_c0):
    # H = 300: two work items of the kernel (256 + a ragged 44).
    gates, c0, _, _ = make_inputs(7, 3, 300, pooling, batch_first, with_c0)
    out = _cpu_kernels.forward(gates, c0, pooling, batch_first, reverse)
    assert out is not None, "the native kernel must take float32 CPU tensors"
    h, c_last = fo_pool(gates, c0, pooling, batch_first, reverse)
    h_ref, c_ref = fo_pool_ref(gates.double(), None if c0 is None else c0.double(), pooling, batch_first, reverse)
    torch.testing.assert_close(h, h_ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_last, c_ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[0], h, rtol=0, atol=0)


@pytest.mark.parametrize("pooling,batch_first,reverse,with_c0", CASES)
def test_gradients_match_autograd_of_reference(pooling, batch_first, reverse, with_c0):
    gates, c0, grad_h, grad_c = make_inputs(6, 2, 260, pooling, batch_first, with_c0, seed=1)
    g = gates.clone().requires_grad_()
    c = None if c0 is None else c0.clone().requires_grad_()
    h, c_last = fo_pool(g, c, pooling, batch_first, reverse)
    ((h * grad_h).sum() + (c_last * grad_c).sum()).backward()

    g64 = gates.double().requires_grad_()
    c64 = None if c0 is None else c0.double().requires_grad_()
    h_ref, c_ref = fo_pool_ref(g64, c64, pooling, batch_first, reverse)
    ((h_ref * grad_h.double()).sum() + (c_ref * grad_c.double()).sum()).backward()
    torch.testing.assert_close(g.grad, g64.grad.float(), rtol=1e-5, atol=2e-6)
    if c is not None:
        torch.testing.assert_close(c.grad, c64.grad.float(), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("pooling", list(P_OF))
def test_backward_matches_the_torch_path(pooling, monkeypatch):
    gates, c0, grad_h, grad_c = make_inputs(9, 4, 33, pooling, True, True, seed=2)
    native = fo_pool_module._fo_pool_backward_impl(grad_h, grad_c, gates, c0, pooling, True, True)
    monkeypatch.setattr(_cpu_kernels, "backward", lambda *a, **k: None)
    torch_dg, torch_gc0 = fo_pool_module._fo_pool_backward_impl(grad_h, grad_c, gates, c0, pooling, True, True)
    torch.testing.assert_close(native[0], torch_dg, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(native[1], torch_gc0, rtol=1e-5, atol=2e-6)
    # Without c0 there is no c0 gradient, on both paths.
    monkeypatch.undo()
    assert fo_pool_module._fo_pool_backward_impl(grad_h, grad_c, gates, None, pooling, True, True)[1] is None


def test_only_h_used_and_only_c_last_used():
    gates, c0, _, _ = make_inputs(5, 2, 8, "fo", False, True, seed=3)
    for pick in (0, 1):
        g = gates.clone().requires_grad_()
        c = c0.clone().requires_grad_()
        fo_pool(g, c, "fo")[pick].square().sum().backward()
        g64 = gates.double().requires_grad_()
        c64 = c0.double().requires_grad_()
        fo_pool_ref(g64, c64, "fo")[pick].square().sum().backward()
        torch.testing.assert_close(g.grad, g64.grad.float(), rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(c.grad, c64.grad.float(), rtol=1e-5, atol=2e-6)


def test_thread_count_does_not_change_results():
    # 40 * 8 * 520 elements: above the kernel's 2 * 65536 threshold for using a second thread.
    gates, c0, grad_h, grad_c = make_inputs(40, 8, 520, "ifo", False, True, seed=4)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(_cpu_kernels.forward(gates, c0, "ifo", False, False)
                        + _cpu_kernels.backward(grad_h, grad_c, gates, c0, "ifo", False, False))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)  # items are independent: bit-identical whatever the split


def test_non_contiguous_and_other_dtypes():
    gates, c0, _, _ = make_inputs(4, 3, 5, "fo", False, True, seed=5)
    strided = gates.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    assert not strided.is_contiguous()
    torch.testing.assert_close(fo_pool(strided, c0, "fo")[0], fo_pool(gates, c0, "fo")[0], rtol=0, atol=0)
    # float64 is not the native kernel's business: the op's PyTorch path answers.
    assert _cpu_kernels.forward(gates.double(), c0.double(), "fo", False, False) is None
    h64, _ = fo_pool(gates.double(), c0.double(), "fo")
    h_ref, _ = fo_pool_ref(gates.double(), c0.double(), "fo")
    torch.testing.assert_close(h64, h_ref)


def test_outputs_never_alias_inputs_and_opcheck():
    gates, c0, _, _ = make_inputs(3, 2, 4, "fo", True, True, seed=6)
    h, c_last = torch.ops.qrnn.fo_pool(gates, c0, "fo", True, False)
    for out in (h, c_last):
        for inp in (gates, c0):
            assert out.untyped_storage().data_ptr() != inp.untyped_storage().data_ptr()
    torch.library.opcheck(torch.ops.qrnn.fo_pool.default, (gates.requires_grad_(), c0.requires_grad_(), "fo", True, False))


@pytest.mark.parametrize("pooling", list(P_OF))
def test_forward_matches_the_torch_path(pooling, monkeypatch):
    gates, c0, _, _ = make_inputs(6, 3, 17, pooling, False, True, seed=7)
    h_native, c_native = fo_pool(gates, c0, pooling, False, True)
    monkeypatch.setattr(_cpu_kernels, "forward", lambda *a, **k: None)
    h_torch, c_torch = fo_pool(gates, c0, pooling, False, True)
    torch.testing.assert_close(h_native, h_torch, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(c_native, c_torch, rtol=1e-6, atol=1e-6)


def test_disabled_by_environment_falls_back():
    script = ("import torch; from qrnn_deploy.nn import _cpu_kernels, fo_pool, fo_pool_ref;"
              "assert not _cpu_kernels.available(); assert 'QRNN_CPU_KERNELS' in _cpu_kernels.unavailable_reason();"
              "g = torch.randn(3, 2, 6); torch.testing.assert_close(fo_pool(g)[0], fo_pool_ref(g)[0]); print('OK')")
    env = dict(os.environ, QRNN_CPU_KERNELS="0",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr
    assert "KernelWarning" not in out.stderr  # chosen on purpose: nothing to warn about


def test_a_missing_library_is_said_once_then_the_pytorch_path_runs(tmp_path):
    """Without libqrnn_kernels.so (a wheel install before `qrnn-deploy build-plugins`) training ran
    the several-times-slower PyTorch path without a word."""
    script = ("import warnings, torch; warnings.simplefilter('always');"
              "from qrnn_deploy.nn import fo_pool, fo_pool_ref;"
              "g = torch.randn(3, 2, 6, requires_grad=True); h, _ = fo_pool(g); h.sum().backward();"
              "torch.testing.assert_close(h, fo_pool_ref(g)[0]); fo_pool(torch.randn(2, 1, 3)); print('OK')")
    env = dict(os.environ, QRNN_KERNELS_LIBRARY=str(tmp_path / "libqrnn_kernels.so"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("QRNN_CPU_KERNELS", None)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "OK", out.stderr
    assert out.stderr.count("KernelWarning: native CPU FoPool kernel unavailable") == 1, out.stderr
    assert "QRNN_KERNELS_LIBRARY" in out.stderr and "fo_pool uses its PyTorch path" in out.stderr


@pytest.mark.parametrize("pooling", list(P_OF))
def test_non_finite_gates_behave_like_the_reference(pooling):
    """A NaN gate makes NaN outputs from there on (a diverged model shows it; nothing turns it
    into plausible numbers), exactly where fo_pool_ref has them; infinite gates saturate the
    activations (sigmoid 0 / 1, tanh -1 / 1) and stay finite."""
    P, H = P_OF[pooling], 5
    g = torch.randn(6, 3, P * H, generator=torch.Generator().manual_seed(1))
    g[2, 0, 1] = float("nan")             # z of (b=0, h=1) at t=2
    g[1, 1, H + 3] = float("inf")         # f of (b=1, h=3) at t=1
    g[3, 1, 0] = float("-inf")            # z of (b=1, h=0) at t=3
    g[0, 2, (P - 1) * H + 2] = float("-inf")  # the last gate block of (b=2, h=2) at t=0
    h, c = _cpu_kernels.forward(g, None, pooling, False, False)
    h_ref, c_ref = fo_pool_ref(g.double(), None, pooling)
    assert torch.equal(torch.isnan(h), torch.isnan(h_ref)) and torch.equal(torch.isnan(c), torch.isnan(c_ref))
    assert torch.isnan(h).any() and torch.isfinite(h[:, 1:]).all()
    ok = ~torch.isnan(h_ref)
    torch.testing.assert_close(h.double()[ok], h_ref[ok], rtol=1e-6, atol=1e-6)
