"""The FoPool operator (DESIGN.md section 2) in PyTorch: `fo_pool` and its specification `fo_pool_ref`.

`gates` hold the PRE-activation gates packed along the last axis as [Z | F | O | I]; the op applies
tanh / sigmoid itself and runs the recurrence

    c_t = f_t * c_{t-1} + (1 - f_t) * z_t     ('f', 'fo')
    c_t = f_t * c_{t-1} + i_t * z_t           ('ifo')
    h_t = o_t * c_t  ('fo', 'ifo');  h_t = c_t  ('f')

`fo_pool_ref` is the obvious loop over time and is the specification; `fo_pool` is the op that
training and export use (`torch.ops.qrnn.fo_pool`). On CPU its forward and backward are time
loops of single fused multiply-adds over [B, H] slices, with every activation computed in bulk;
its backward is an explicit reverse-time scan registered with `torch.library.register_autograd`.
The CUDA build (plugins/cuda) replaces both loops with the shared native kernels when available.
On float32 CPU tensors both run the shared native CPU kernel instead (plugins/common through
libqrnn_kernels.so, see `_cpu_kernels`) once `bash scripts/build_plugins.sh` has built it.
"""

from __future__ import annotations

from typing import Optional

import torch

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.nn import _cpu_kernels, _cuda_kernels

POOLING_GATES = {"f": 2, "fo": 3, "ifo": 4}


def gate_count(pooling: str) -> int:
    """P, the number of gate blocks packed in `gates` for `pooling` ('f' 2, 'fo' 3, 'ifo' 4)."""
    try:
        return POOLING_GATES[pooling]
    except (KeyError, TypeError):  # TypeError: an unhashable value such as a list
        raise ConfigError(f"unknown pooling {pooling!r}: use one of 'f', 'fo', 'ifo'") from None


def check_fo_pool_args(gates: torch.Tensor, c0: Optional[torch.Tensor], pooling: str,
                       batch_first: bool) -> tuple[int, int, int, int]:
    """Validates FoPool inputs; returns (T, B, P, H). Raises ConfigError naming the bad input."""
    P = gate_count(pooling)
    if not isinstance(gates, torch.Tensor) or gates.dim() != 3:
        shape = tuple(gates.shape) if isinstance(gates, torch.Tensor) else type(gates).__name__
        raise ConfigError(f"fo_pool: gates must have rank 3 ([T, B, P*H] or [B, T, P*H]), got {shape}")
    if not gates.is_floating_point():
        raise ConfigError(f"fo_pool: gates must be a floating point tensor, got {gates.dtype}")
    T, B = (gates.shape[1], gates.shape[0]) if batch_first else (gates.shape[0], gates.shape[1])
    last = gates.shape[2]
    if last % P != 0:
        raise ConfigError(f"fo_pool: last axis of gates ({last}) is not {P}*H for pooling {pooling!r}")
    H = last // P
    if c0 is not None:
        if not isinstance(c0, torch.Tensor) or not c0.is_floating_point():
            what = c0.dtype if isinstance(c0, torch.Tensor) else type(c0).__name__
            raise ConfigError(f"fo_pool: c0 must be a floating point tensor [B, H] or None, got {what}")
        if tuple(c0.shape) != (B, H):
            raise ConfigError(f"fo_pool: c0 must be [B, H] = [{B}, {H}], got {list(c0.shape)}")
        if c0.device != gates.device:
            raise ConfigError(f"fo_pool: c0 is on {c0.device} but gates are on {gates.device}")
    return T, B, P, H


def _time_first(x: torch.Tensor, batch_first: bool) -> torch.Tensor:
    return x.transpose(0, 1) if batch_first else x


def _activations(g: torch.Tensor, P: int, H: int):
    """(z, f, o, i) from time-first pre-activation gates; o and i are None when absent."""
    z = torch.tanh(g[..., :H])
    f = torch.sigmoid(g[..., H:2 * H])
    o = torch.sigmoid(g[..., 2 * H:3 * H]) if P >= 3 else None
    i = torch.sigmoid(g[..., 3 * H:4 * H]) if P == 4 else None
    return z, f, o, i


# ----------------------------------------------------------------------------------------------
# The specification.


def fo_pool_ref(gates: torch.Tensor, c0: Optional[torch.Tensor] = None, pooling: str = "fo",
                batch_first: bool = False, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference FoPool: the plain loop over time. Same arguments and results as `fo_pool`.

    gates: [T, B, P*H] ([B, T, P*H] if batch_first); c0: [B, H] or None (zeros).
    Returns h (layout of gates, H wide) and c_last [B, H]. Differentiable by autograd.
    """
    T, B, P, H = check_fo_pool_args(gates, c0, pooling, batch_first)
    g = _time_first(gates, batch_first)
    c = torch.zeros(B, H, dtype=gates.dtype, device=gates.device) if c0 is None else c0
    hs = [None] * T
    steps = range(T - 1, -1, -1) if reverse else range(T)
    for t in steps:
        gt = g[t]
        z = torch.tanh(gt[:, :H])
        f = torch.sigmoid(gt[:, H:2 * H])
        if pooling == "ifo":
            i = torch.sigmoid(gt[:, 3 * H:4 * H])
            c = f * c + i * z
        else:
            c = f * c + (1 - f) * z
        hs[t] = c if pooling == "f" else torch.sigmoid(gt[:, 2 * H:3 * H]) * c
    h = torch.stack(hs, 0) if T > 0 else g.new_zeros(0, B, H)
    return _time_first(h, batch_first), c


# ----------------------------------------------------------------------------------------------
# The fast CPU path: bulk activations, one fused multiply-add per step, explicit backward.


def _scan_forward(g: torch.Tensor, c0: Optional[torch.Tensor], P: int, H: int):
    """Time-first, already time-ordered gates (float32/64). Returns (z, f, o, i, cs) with cs[t] = c_t."""
    z, f, o, i = _activations(g, P, H)
    a = i * z if P == 4 else (1 - f) * z  # the input term of c_t = f_t * c_{t-1} + a_t
    T = g.shape[0]
    cs = torch.empty_like(a)
    prev = c0
    for t in range(T):
        if prev is None:
            cs[t].copy_(a[t])
        else:
            torch.addcmul(a[t], f[t], prev, out=cs[t])
        prev = cs[t]
    return z, f, o, i, cs


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16 / bf16 storage, fp32 arithmetic (DESIGN.md section 2).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _prepare(gates, c0, batch_first, reverse):
    cdt = _compute_dtype(gates.dtype)
    g = _time_first(gates, batch_first).to(cdt)
    if reverse:
        g = g.flip(0)
    c0c = None if c0 is None else c0.to(cdt)
    return g, c0c


def _fo_pool_forward_impl(gates, c0, pooling, batch_first, reverse):
    T, B, P, H = check_fo_pool_args(gates, c0, pooling, batch_first)
    if T == 0 or B == 0 or H == 0:  # nothing to compute (the native kernels refuse H = 0)
        h = torch.empty(gates.shape[:2] + (H,), dtype=gates.dtype, device=gates.device)
        # The gates' dtype, as when there are steps (c0 may be wider, e.g. float32 with half gates).
        c_last = c0.to(gates.dtype, copy=True) if c0 is not None else gates.new_zeros(B, H)
        return h, c_last
    if gates.is_cuda:  # the plugins/cuda kernels; None when they cannot be built (warned once)
        out = _cuda_kernels.forward(gates, c0, pooling, batch_first, reverse)
        if out is not None:
            return out
    else:  # float32 CPU: the shared native kernel (plugins/common); None when not built
        out = _cpu_kernels.forward(gates, c0, pooling, batch_first, reverse)
        if out is not None:
            return out
    g, c0c = _prepare(gates, c0, batch_first, reverse)
    z, f, o, i, cs = _scan_forward(g, c0c, P, H)
    h = cs if P == 2 else o * cs
    c_last = cs[-1].to(gates.dtype, copy=True)
    if reverse:
        h = h.flip(0)
    h = _time_first(h, batch_first).to(gates.dtype)
    return h.contiguous(), c_last.contiguous()


def _fo_pool_backward_impl(grad_h, grad_c_last, gates, c0, pooling, batch_first, reverse):
    """Gradients of (h, c_last) w.r.t. (gates, c0): recompute the forward scan, then walk time back."""
    T, B, P, H = check_fo_pool_args(gates, c0, pooling, batch_first)
    if T == 0 or B == 0 or H == 0:
        gc0 = None if c0 is None else grad_c_last.to(c0.dtype).clone()
        return torch.zeros_like(gates), gc0
    if gates.is_cuda:
        out = _cuda_kernels.backward(grad_h, grad_c_last, gates, c0, pooling, batch_first, reverse)
        if out is not None:
            return out
    else:
        out = _cpu_kernels.backward(grad_h, grad_c_last, gates, c0, pooling, batch_first, reverse)
        if out is not None:
            return out
    g, c0c = _prepare(gates, c0, batch_first, reverse)
    cdt = g.dtype
    z, f, o, i, cs = _scan_forward(g, c0c, P, H)
    gh = _time_first(grad_h, batch_first).to(cdt)
    if reverse:
        gh = gh.flip(0)
    # dL/dc_t from h_t directly; the scan below adds the path through c_{t+1}.
    dc = gh * o if P >= 3 else gh.clone()
    dc[-1] += grad_c_last.to(cdt)
    for t in range(T - 2, -1, -1):
        dc[t].addcmul_(f[t + 1], dc[t + 1])
    if c0c is None:
        c_prev = torch.cat([cs.new_zeros(1, B, H), cs[:-1]], 0)
    else:
        c_prev = torch.cat([c0c.unsqueeze(0), cs[:-1]], 0)
    dg = torch.empty(T, B, P * H, dtype=cdt, device=g.device)
    if P == 4:
        dz = dc * i
        df = dc * c_prev
        dg[..., 3 * H:].copy_(dc * z * i * (1 - i))
    else:
        dz = dc * (1 - f)
        df = dc * (c_prev - z)
    dg[..., :H].copy_(dz * (1 - z * z))
    dg[..., H:2 * H].copy_(df * f * (1 - f))
    if P >= 3:
        dg[..., 2 * H:3 * H].copy_(gh * cs * o * (1 - o))
    gc0 = None if c0 is None else (dc[0] * f[0]).to(c0.dtype)
    if reverse:
        dg = dg.flip(0)
    dg = _time_first(dg, batch_first).to(gates.dtype)
    return dg.contiguous(), gc0


# ----------------------------------------------------------------------------------------------
# Registration as torch.ops.qrnn.fo_pool.


@torch.library.custom_op("qrnn::fo_pool", mutates_args=())
def _fo_pool_op(gates: torch.Tensor, c0: Optional[torch.Tensor], pooling: str, batch_first: bool,
                reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _fo_pool_forward_impl(gates, c0, pooling, batch_first, reverse)


@_fo_pool_op.register_fake
def _(gates, c0, pooling, batch_first, reverse):
    P = gate_count(pooling)
    H = gates.shape[-1] // P
    B = gates.shape[0] if batch_first else gates.shape[1]
    h = gates.new_empty(gates.shape[:2] + (H,))
    return h, gates.new_empty(B, H)


@torch.library.custom_op("qrnn::fo_pool_backward", mutates_args=())
def _fo_pool_backward_op(grad_h: torch.Tensor, grad_c_last: torch.Tensor, gates: torch.Tensor,
                         c0: Optional[torch.Tensor], pooling: str, batch_first: bool,
                         reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    dg, gc0 = _fo_pool_backward_impl(grad_h, grad_c_last, gates, c0, pooling, batch_first, reverse)
    # A custom op cannot return None: an empty tensor stands for "no c0".
    return dg, (gc0 if gc0 is not None else gates.new_empty(0))


@_fo_pool_backward_op.register_fake
def _(grad_h, grad_c_last, gates, c0, pooling, batch_first, reverse):
    return torch.empty_like(gates), (torch.empty_like(c0) if c0 is not None else gates.new_empty(0))


def _setup_context(ctx, inputs, output):
    gates, c0, pooling, batch_first, reverse = inputs
    ctx.save_for_backward(gates, c0)
    ctx.args = (pooling, batch_first, reverse)


def _backward(ctx, grad_h, grad_c_last):
    gates, c0 = ctx.saved_tensors
    pooling, batch_first, reverse = ctx.args
    H = gates.shape[-1] // gate_count(pooling)
    B = gates.shape[0] if batch_first else gates.shape[1]
    if grad_h is None:
        grad_h = gates.new_zeros(gates.shape[:2] + (H,))
    if grad_c_last is None:
        grad_c_last = gates.new_zeros(B, H)
    dg, gc0 = torch.ops.qrnn.fo_pool_backward(grad_h.contiguous(), grad_c_last.contiguous(), gates,
                                             c0, pooling, batch_first, reverse)
    return dg, (gc0 if c0 is not None else None), None, None, None


_fo_pool_op.register_autograd(_backward, setup_context=_setup_context)


def fo_pool(gates: torch.Tensor, c0: Optional[torch.Tensor] = None, pooling: str = "fo",
            batch_first: bool = False, reverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """FoPool (DESIGN.md section 2): fused activations + fo-pooling recurrence.

    gates: [T, B, P*H] pre-activations packed [Z | F | O | I] ([B, T, P*H] if batch_first),
        P = 2 ('f'), 3 ('fo'), 4 ('ifo'); float32, float64, float16 or bfloat16.
    c0: [B, H] cell state before the first processed step, or None for zeros.
    reverse: process t = T-1 .. 0 (backward directions).
    Returns (h, c_last): h has the layout of gates with H on the last axis; c_last [B, H] is the
    cell state after the last processed step. Gradients reach gates and c0.
    """
    check_fo_pool_args(gates, c0, pooling, batch_first)
    return torch.ops.qrnn.fo_pool(gates, c0, pooling, bool(batch_first), bool(reverse))
