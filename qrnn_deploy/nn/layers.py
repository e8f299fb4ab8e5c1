"""QRNN layers (Bradbury et al. 2017; DESIGN.md sections 1 and 3).

A layer is a masked (causal) convolution of window k over time producing the packed
pre-activation gates [Z | F | O | I], followed by `fo_pool`. Its streaming state is
`conv_state` [B, k-1, d_in] (the last k-1 inputs; None when k = 1) and `c` [B, H].
`forward` takes a chunk of any length T >= 1 plus a state and returns the next state, so feeding a
sequence chunk by chunk equals feeding it whole.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.nn.fo_pool import fo_pool, gate_count


def check_int(value, name: str, least: int = 1) -> int:
    """`value` as an int, or ConfigError when it is not an integer >= `least` (bools are not sizes)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def check_prob(value, name: str) -> float:
    """`value` as a float in [0, 1) (dropout, zoneout), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_tensor(x, name: str, floating: bool) -> None:
    """x is a torch.Tensor of floating (or, when not `floating`, integer) dtype, else ConfigError."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ok = x.is_floating_point() if floating else not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    if not ok:
        raise ConfigError(f"{name} must be {'a floating point' if floating else 'an integer'} tensor, got {x.dtype}")


def check_token_ids(tokens, name: str, vocab_size: int, where: str) -> None:
    """tokens: an integer tensor [B, T] of ids in [0, vocab_size), else ConfigError (an id out of
    range would be an IndexError). The range is checked on CPU tensors only: on a GPU the check
    would synchronise the device at every forward (a training step's worth of stalls), so there an
    out-of-range id stays the device-side assert PyTorch gives."""
    check_tensor(tokens, f"{where}: {name}", floating=False)
    if tokens.dim() != 2:
        raise ConfigError(f"{where}: {name} must be [B, T], got shape {list(tokens.shape)}")
    if tokens.device.type == "cpu" and tokens.numel() and bool(((tokens < 0) | (tokens >= vocab_size)).any()):
        lo, hi = int(tokens.min()), int(tokens.max())
        raise ConfigError(f"{where}: {name} ids must be in [0, {vocab_size}), got ids from {lo} to {hi}; "
                          f"map unknown symbols to <unk> (id 1)")


def check_lengths(lengths, B: int, T: int, where: str) -> None:
    """lengths: an integer tensor [B] with every value in [1, T], else ConfigError (0 or > T would
    index another step, or fail). Values are checked on CPU tensors only (no device sync)."""
    check_tensor(lengths, f"{where}: lengths", floating=False)
    if tuple(lengths.shape) != (B,):
        raise ConfigError(f"{where}: lengths must be [B] = [{B}], got shape {list(lengths.shape)}")
    if B and lengths.device.type == "cpu" and bool(((lengths < 1) | (lengths > T)).any()):
        raise ConfigError(f"{where}: lengths must be in [1, T = {T}], got {lengths.min().item()}..{lengths.max().item()}")


def make_config(config_class, where: str, *args, **kw):
    """config_class(*args, **kw), with an unknown option a ConfigError naming the known ones."""
    import dataclasses

    known = [f.name for f in dataclasses.fields(config_class)]
    unknown = [k for k in kw if k not in known]
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown}; the options are {known}")
    return config_class(*args, **kw)


def _autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled()


class QRNNState(NamedTuple):
    """Streaming state of one layer: conv_state [B, k-1, d_in] (None when k = 1), c [B, H]."""

    conv_state: Optional[torch.Tensor]
    c: torch.Tensor


class QRNNLayer(nn.Module):
    """One QRNN layer: causal convolution of width `window` + fo/f/ifo pooling.

    The convolution weight is one linear map of the window [x_{t-k+1}; ...; x_t] (oldest first):
    `self.conv` is nn.Linear(window * input_size, P * hidden_size). A `reverse` layer is the
    forward layer run on the time-reversed sequence: it reads the window
    [x_{t+k-1}; ...; x_t] (farthest first, the same weight layout) and pools from the end; it
    cannot stream.
    """

    def __init__(self, input_size: int, hidden_size: int, window: int = 1, pooling: str = "fo",
                 zoneout: float = 0.0, reverse: bool = False, batch_first: bool = True):
        super().__init__()
        check_int(window, "QRNNLayer: window")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (input_size, hidden_size)):
            raise ConfigError(f"QRNNLayer: input_size and hidden_size must be integers >= 1, got "
                              f"{input_size!r}, {hidden_size!r}")
        zoneout = check_prob(zoneout, "QRNNLayer: zoneout")
        self.input_size, self.hidden_size, self.window = input_size, hidden_size, window
        self.pooling, self.zoneout, self.reverse, self.batch_first = pooling, zoneout, reverse, batch_first
        self.num_gates = gate_count(pooling)
        self.conv = nn.Linear(window * input_size, self.num_gates * hidden_size)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, pooling={self.pooling!r}"
                + (f", zoneout={self.zoneout}" if self.zoneout else "") + (", reverse=True" if self.reverse else ""))

    def init_state(self, batch_size: int, device=None, dtype=None) -> QRNNState:
        """The zero state: the one place that says what a layer's state is."""
        check_int(batch_size, "QRNNLayer.init_state: batch_size", least=0)
        w = self.conv.weight
        device, dtype = device or w.device, dtype or w.dtype
        conv = (torch.zeros(batch_size, self.window - 1, self.input_size, device=device, dtype=dtype)
                if self.window > 1 else None)
        return QRNNState(conv, torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype))

    def windows(self, x: torch.Tensor, conv_state: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """x [B, T, d_in] -> ([B, T, k*d_in] windows oldest first, next conv_state [B, k-1, d_in])."""
        k = self.window
        if k == 1:
            return x, None
        B, T, d = x.shape
        if conv_state is None:
            conv_state = x.new_zeros(B, k - 1, d)
        xp = torch.cat([conv_state, x], 1)  # [B, k-1+T, d]
        win = torch.cat([xp[:, j:j + T] for j in range(k)], -1)
        return win, xp[:, T:]

    def gates(self, x: torch.Tensor, conv_state: Optional[torch.Tensor] = None,
              cond: Optional[torch.Tensor] = None):
        """Pre-activation gates [B, T, P*H] of batch-first x, and the next conv_state."""
        win, conv_next = self.windows(x, conv_state)
        g = self.conv(win)
        if cond is not None:
            check_tensor(cond, "QRNNLayer: cond", floating=True)
            if cond.shape != (x.shape[0], g.shape[-1]):
                raise ConfigError(f"QRNNLayer: cond must be [B, P*H] = [{x.shape[0]}, {g.shape[-1]}], "
                                  f"got {list(cond.shape)}")
            g = g + cond.unsqueeze(1)
        if self.training and self.zoneout > 0:
            g = self._zoneout(g)
        return g, conv_next

    def _zoneout(self, g: torch.Tensor) -> torch.Tensor:
        # Zoneout is dropout on (1 - f) without rescaling: a zoned-out unit gets f = 1 and keeps
        # its previous cell value. fo_pool takes pre-activations, so f = 1 is written as +inf
        # (sigmoid(inf) = 1 exactly, and its gradient is exactly 0). For 'ifo' the input gate of
        # a zoned-out unit is closed too (-inf), otherwise i*z would still change the cell.
        # (The native float32 CPU kernel's division-free arithmetic keeps it to within an ulp
        # for 'fo' / 'ifo', not bit for bit: within its 1e-6 contract.)
        H = self.hidden_size
        keep = torch.rand(g.shape[:-1] + (H,), device=g.device) >= self.zoneout
        inf = torch.tensor(float("inf"), dtype=g.dtype, device=g.device)
        parts = list(g.split(H, -1))
        parts[1] = torch.where(keep, parts[1], inf)
        if self.num_gates == 4:
            parts[3] = torch.where(keep, parts[3], -inf)
        return torch.cat(parts, -1)

    def _check_state(self, state, x: torch.Tensor) -> QRNNState:
        """state as (conv_state, c): a pair whose conv_state is [B, k-1, d_in] of x's dtype (or None).
        A wrong conv_state would silently shift the window; c is checked by fo_pool."""
        name = type(self).__name__
        if not isinstance(state, tuple) or len(state) != 2:
            raise ConfigError(f"{name}: state must be a QRNNState(conv_state, c) (from init_state or a "
                              f"previous call), got {type(state).__name__}")
        conv_state, c = state
        if conv_state is not None and self.window > 1:
            want = (x.shape[0], self.window - 1, self.input_size)
            if not isinstance(conv_state, torch.Tensor) or tuple(conv_state.shape) != want:
                got = list(conv_state.shape) if isinstance(conv_state, torch.Tensor) else type(conv_state).__name__
                raise ConfigError(f"{name}: conv_state must be [B, k-1, d_in] = {list(want)}, got {got}")
            if conv_state.dtype != x.dtype and not _autocast():
                raise ConfigError(f"{name}: conv_state is {conv_state.dtype} but the input is {x.dtype}")
        return QRNNState(conv_state, c)

    def forward(self, x: torch.Tensor, state: Optional[QRNNState] = None,
                cond: Optional[torch.Tensor] = None,
                lengths: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, QRNNState]:
        """x: [B, T, d_in] ([T, B, d_in] if not batch_first); cond: [B, P*H] added to the gates.
        lengths [B] (reverse layers): each row's real steps, padding after them. A forward layer
        needs none (it is causal: padding at the end changes no real step); a reverse layer
        then starts each row at its own last real step, and its state is the cell at step 0.

        Returns y [B, T, H] (same layout as x) and the state after the chunk.
        """
        check_tensor(x, "QRNNLayer: input", floating=True)
        if x.dim() != 3:
            raise ConfigError(f"QRNNLayer: input must have rank 3, got shape {list(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ConfigError(f"QRNNLayer: input has {x.shape[-1]} features, expected {self.input_size}")
        w = self.conv.weight
        if x.dtype != w.dtype and not _autocast():
            raise ConfigError(f"QRNNLayer: input is {x.dtype} but the weights are {w.dtype}; convert one "
                              f"(x.to({w.dtype}) or model.to({x.dtype}))")
        if self.reverse:
            if state is not None:
                raise ConfigError("QRNNLayer: a reverse (backward-direction) layer cannot stream: "
                                  "it needs the whole sequence, so it takes no carried state")
            if lengths is not None:
                y, c = self._reverse_within(x, cond, lengths)
                return (y if self.batch_first else y.transpose(0, 1)), QRNNState(None, c)
            # The anti-causal window of x is the causal window of x reversed in time.
            g, _ = self.gates(x.flip(1), None, cond)
            y, c = fo_pool(g.flip(1), None, self.pooling, batch_first=True, reverse=True)
            return (y if self.batch_first else y.transpose(0, 1)), QRNNState(None, c)
        conv_state, c0 = (None, None) if state is None else self._check_state(state, x)
        g, conv_next = self.gates(x, conv_state, cond)
        y, c = fo_pool(g, c0, self.pooling, batch_first=True)
        if self.window > 1 and conv_next is None:
            conv_next = x.new_zeros(x.shape[0], self.window - 1, self.input_size)
        return (y if self.batch_first else y.transpose(0, 1)), QRNNState(conv_next, c)


    def _reverse_within(self, x: torch.Tensor, cond, lengths: torch.Tensor):
        """The reverse layer on right-padded rows: each row reversed within its own length (the
        padding stays behind it), then the causal computation, then reversed back, so a row's
        real steps never see its padding. On padded steps the gates keep the cell (f = 1, i = 0),
        so the final cell is the one at step 0."""
        B, T = x.shape[0], x.shape[1]
        check_lengths(lengths, B, T, "QRNNLayer")
        t = torch.arange(T, device=x.device)[None, :]
        L = lengths.to(x.device)[:, None]
        idx = torch.where(t < L, L - 1 - t, t)  # [B, T], its own inverse
        flip = lambda a: a.gather(1, idx[..., None].expand_as(a))  # noqa: E731
        g, _ = self.gates(flip(x), None, cond)
        H, P = self.hidden_size, gate_count(self.pooling)
        keep = torch.zeros(P * H, dtype=g.dtype, device=g.device)
        keep[H:2 * H] = float("inf")  # f = sigmoid(+inf) = 1
        if P == 4:
            keep[3 * H:] = float("-inf")  # i = sigmoid(-inf) = 0
        hold = torch.zeros(P * H, dtype=torch.bool, device=g.device)
        hold[H:2 * H] = True
        hold[3 * H:] = P == 4
        g = torch.where((t >= L)[..., None] & hold, keep, g)
        y, c = fo_pool(g, None, self.pooling, batch_first=True)
        return flip(y), c


def _per_layer(value, num_layers: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ConfigError(f"QRNN: {name} lists {len(value)} values for {num_layers} layers")
        return list(value)
    return [value] * num_layers


class QRNN(nn.Module):
    """A stack of QRNN layers (batch-first), optionally densely connected and/or bidirectional.

    dense=True is the paper's densely connected variant: every layer's input is concatenated to
    its output before the next layer. The paper then uses the last layer's output alone as the
    encoder result; this stack returns the whole concatenation [x, y_1, ..., y_L] along features
    (`output_size` says how wide), of which y_L is the last `hidden_size` (bidirectional: 2 x)
    channels. Dropout acts between layers: a layer's output is dropped where it feeds later
    layers, and returned undropped, so a head that drops the stack output drops each part once.
    bidirectional=True runs a reverse layer beside each forward layer and concatenates them
    ([forward, backward] per layer); such a stack cannot stream (no carried state).
    `forward(x, state=None, cond=None)` returns (y, state) with one QRNNState per layer
    (bidirectional: per layer a pair (forward, backward)).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 window: Union[int, Sequence[int]] = 1, pooling: str = "fo", zoneout: float = 0.0,
                 dropout: float = 0.0, dense: bool = False, bidirectional: bool = False):
        super().__init__()
        check_int(num_layers, "QRNN: num_layers")
        dropout = check_prob(dropout, "QRNN: dropout")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.windows = _per_layer(window, num_layers, "window")
        self.pooling, self.dense, self.bidirectional = pooling, dense, bidirectional
        dirs = 2 if bidirectional else 1
        self.layers = nn.ModuleList()
        self.reverse_layers = nn.ModuleList() if bidirectional else None
        d = input_size
        for k in self.windows:
            self.layers.append(QRNNLayer(d, hidden_size, k, pooling, zoneout))
            if bidirectional:
                self.reverse_layers.append(QRNNLayer(d, hidden_size, k, pooling, zoneout, reverse=True))
            d = d + dirs * hidden_size if dense else dirs * hidden_size
        self.output_size = d
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def init_state(self, batch_size: int, device=None, dtype=None) -> list[QRNNState]:
        if self.bidirectional:
            raise ConfigError("QRNN: a bidirectional stack cannot stream, so it has no carried state")
        return [layer.init_state(batch_size, device, dtype) for layer in self.layers]

    def forward(self, x: torch.Tensor, state: Optional[list] = None,
                cond: Optional[Sequence[Optional[torch.Tensor]]] = None, lengths: Optional[torch.Tensor] = None):
        """x [B, T, input_size]; state: list of QRNNState or None; cond: per-layer [B, P*H] or None;
        lengths [B]: real steps of right-padded rows (a bidirectional stack needs them so its
        reverse layers start at each row's own end; forward layers are causal and ignore them)."""
        check_tensor(x, "QRNN: input", floating=True)
        if x.dim() != 3:
            raise ConfigError(f"QRNN: input must be [B, T, features], got shape {list(x.shape)}")
        if self.bidirectional and state is not None:
            raise ConfigError("QRNN: a bidirectional stack cannot stream: it takes no carried state")
        if state is not None and (not isinstance(state, (list, tuple)) or len(state) != self.num_layers):
            got = f"{len(state)} layers" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ConfigError(f"QRNN: state must be a list of one QRNNState per layer ({self.num_layers}), got {got}")
        if cond is not None and (not isinstance(cond, (list, tuple)) or len(cond) != self.num_layers):
            got = f"{len(cond)} entries" if isinstance(cond, (list, tuple)) else type(cond).__name__
            raise ConfigError(f"QRNN: cond must be a list of one [B, P*H] tensor (or None) per layer "
                              f"({self.num_layers}), got {got}")
        cond = cond if cond is not None else [None] * self.num_layers
        new_state = []
        inp = x
        # Dense and dropping: the returned concatenation keeps the undropped outputs (the next
        # layers' input holds dropped ones), so a head's own dropout is the only one they get.
        parts = [x] if self.dense and self.dropout is not None and self.training else None
        for l, layer in enumerate(self.layers):
            y, s = layer(inp, None if state is None else state[l], cond[l])
            if self.bidirectional:
                yb, sb = self.reverse_layers[l](inp, None, cond[l], lengths)
                y, s = torch.cat([y, yb], -1), (s, sb)
            new_state.append(s)
            if parts is not None:
                parts.append(y)
            if self.dropout is not None and l < self.num_layers - 1:
                y = self.dropout(y)
            inp = torch.cat([inp, y], -1) if self.dense else y
        return (torch.cat(parts, -1) if parts is not None else inp), new_state
