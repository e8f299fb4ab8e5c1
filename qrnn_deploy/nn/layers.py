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


class QRNNState(NamedTuple):
    """Streaming state of one layer: conv_state [B, k-1, d_in] (None when k = 1), c [B, H]."""

    conv_state: Optional[torch.Tensor]
    c: torch.Tensor


class QRNNLayer(nn.Module):
    """One QRNN layer: causal convolution of width `window` + fo/f/ifo pooling.

    The convolution weight is one linear map of the window [x_{t-k+1}; ...; x_t] (oldest first):
    `self.conv` is nn.Linear(window * input_size, P * hidden_size). A `reverse` layer reads the
    window [x_t; ...; x_{t+k-1}] and pools from the end; it cannot stream.
    """

    def __init__(self, input_size: int, hidden_size: int, window: int = 1, pooling: str = "fo",
                 zoneout: float = 0.0, reverse: bool = False, batch_first: bool = True):
        super().__init__()
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"QRNNLayer: window must be an integer >= 1, got {window!r}")
        if input_size < 1 or hidden_size < 1:
            raise ConfigError(f"QRNNLayer: input_size and hidden_size must be >= 1, got "
                              f"{input_size}, {hidden_size}")
        if not 0.0 <= zoneout < 1.0:
            raise ConfigError(f"QRNNLayer: zoneout must be in [0, 1), got {zoneout}")
        self.input_size, self.hidden_size, self.window = input_size, hidden_size, window
        self.pooling, self.zoneout, self.reverse, self.batch_first = pooling, zoneout, reverse, batch_first
        self.num_gates = gate_count(pooling)
        self.conv = nn.Linear(window * input_size, self.num_gates * hidden_size)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, window={self.window}, pooling={self.pooling!r}"
                + (f", zoneout={self.zoneout}" if self.zoneout else "") + (", reverse=True" if self.reverse else ""))

    def init_state(self, batch_size: int, device=None, dtype=None) -> QRNNState:
        """The zero state: the one place that says what a layer's state is."""
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
        H = self.hidden_size
        keep = torch.rand(g.shape[:-1] + (H,), device=g.device) >= self.zoneout
        inf = torch.tensor(float("inf"), dtype=g.dtype, device=g.device)
        parts = list(g.split(H, -1))
        parts[1] = torch.where(keep, parts[1], inf)
        if self.num_gates == 4:
            parts[3] = torch.where(keep, parts[3], -inf)
        return torch.cat(parts, -1)

    def forward(self, x: torch.Tensor, state: Optional[QRNNState] = None,
                cond: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, QRNNState]:
        """x: [B, T, d_in] ([T, B, d_in] if not batch_first); cond: [B, P*H] added to the gates.

        Returns y [B, T, H] (same layout as x) and the state after the chunk.
        """
        if x.dim() != 3:
            raise ConfigError(f"QRNNLayer: input must have rank 3, got shape {list(x.shape)}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ConfigError(f"QRNNLayer: input has {x.shape[-1]} features, expected {self.input_size}")
        if self.reverse:
            if state is not None:
                raise ConfigError("QRNNLayer: a reverse (backward-direction) layer cannot stream: "
                                  "it needs the whole sequence, so it takes no carried state")
            # The anti-causal window of x is the causal window of x reversed in time.
            g, _ = self.gates(x.flip(1), None, cond)
            y, c = fo_pool(g.flip(1), None, self.pooling, batch_first=True, reverse=True)
            return (y if self.batch_first else y.transpose(0, 1)), QRNNState(None, c)
        conv_state, c0 = (None, None) if state is None else state
        g, conv_next = self.gates(x, conv_state, cond)
        y, c = fo_pool(g, c0, self.pooling, batch_first=True)
        if self.window > 1 and conv_next is None:
            conv_next = x.new_zeros(x.shape[0], self.window - 1, self.input_size)
        return (y if self.batch_first else y.transpose(0, 1)), QRNNState(conv_next, c)


def _per_layer(value, num_layers: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ConfigError(f"QRNN: {name} lists {len(value)} values for {num_layers} layers")
        return list(value)
    return [value] * num_layers


class QRNN(nn.Module):
    """A stack of QRNN layers (batch-first), optionally densely connected and/or bidirectional.

    dense=True is the paper's densely connected variant: every layer's input is concatenated to
    its output before the next layer, so the stack's output is [x, y_1, ..., y_L] along features
    (`output_size` says how wide). bidirectional=True runs a reverse layer beside each forward
    layer and concatenates them; such a stack cannot stream (no carried state).
    `forward(x, state=None, cond=None)` returns (y, state) with one QRNNState per layer
    (bidirectional: per layer a pair (forward, backward)).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 window: Union[int, Sequence[int]] = 1, pooling: str = "fo", zoneout: float = 0.0,
                 dropout: float = 0.0, dense: bool = False, bidirectional: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"QRNN: num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"QRNN: dropout must be in [0, 1), got {dropout}")
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
                cond: Optional[Sequence[Optional[torch.Tensor]]] = None):
        """x [B, T, input_size]; state: list of QRNNState or None; cond: per-layer [B, P*H] or None."""
        if x.dim() != 3:
            raise ConfigError(f"QRNN: input must be [B, T, features], got shape {list(x.shape)}")
        if self.bidirectional and state is not None:
            raise ConfigError("QRNN: a bidirectional stack cannot stream: it takes no carried state")
        if state is not None and len(state) != self.num_layers:
            raise ConfigError(f"QRNN: state has {len(state)} layers, expected {self.num_layers}")
        cond = cond if cond is not None else [None] * self.num_layers
        new_state = []
        inp = x
        for l, layer in enumerate(self.layers):
            y, s = layer(inp, None if state is None else state[l], cond[l])
            if self.bidirectional:
                yb, sb = self.reverse_layers[l](inp, None, cond[l])
                y, s = torch.cat([y, yb], -1), (s, sb)
            new_state.append(s)
            if self.dropout is not None and l < self.num_layers - 1:
                y = self.dropout(y)
            inp = torch.cat([inp, y], -1) if self.dense else y
        return inp, new_state
