"""QRNN classifier (the paper's sentiment model): densely connected QRNN, final output -> linear."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.nn.layers import QRNN, check_int, check_lengths, check_prob, check_token_ids, make_config


@dataclass
class ClassifierConfig:
    vocab_size: int
    embed_size: int
    hidden_size: int
    num_layers: int
    num_classes: int
    window: Union[int, list] = 2
    pooling: str = "fo"
    zoneout: float = 0.0
    dropout: float = 0.0
    dense: bool = True
    bidirectional: bool = False  # whole sequences only: a bidirectional stack cannot stream


class QRNNClassifier(nn.Module):
    """tokens [B, T] -> class logits [B, num_classes] from the stack output at the last step.

    With `lengths` [B] the last step of each padded sequence is its own (the QRNN is causal, so
    right padding never changes earlier outputs). Streaming gives a running prediction: the
    logits after each chunk are those of the prefix seen so far. A bidirectional stack's
    backward channels are read at step 0 instead, where its reverse layers have seen the whole
    row (at the last step they have seen only the last token).
    """

    model_type = "classifier"
    config_class = ClassifierConfig

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int,
                 num_classes: int, **kw):
        super().__init__()
        cfg = self.config = make_config(ClassifierConfig, "QRNNClassifier", vocab_size, embed_size, hidden_size,
                                        num_layers, num_classes, **kw)
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            check_int(getattr(cfg, name), f"QRNNClassifier: {name}")
        check_int(num_classes, "QRNNClassifier: num_classes", 2)
        check_prob(cfg.dropout, "QRNNClassifier: dropout")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        self.qrnn = QRNN(cfg.embed_size, cfg.hidden_size, cfg.num_layers, cfg.window, cfg.pooling,
                         cfg.zoneout, cfg.dropout, cfg.dense, cfg.bidirectional)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.out = nn.Linear(self.qrnn.output_size, cfg.num_classes)
        if cfg.bidirectional:  # which stack output channels are backward ones: [x?, (fwd, bwd) per layer]
            h, d = cfg.hidden_size, self.qrnn.output_size
            backward = torch.zeros(d, dtype=torch.bool)
            ends = [d] if not cfg.dense else [cfg.embed_size + 2 * h * (l + 1) for l in range(cfg.num_layers)]
            for end in ends:
                backward[end - h:end] = True
            self.register_buffer("_backward_channels", backward, persistent=False)

    @classmethod
    def from_config(cls, cfg: ClassifierConfig) -> "QRNNClassifier":
        d = dict(cfg.__dict__)
        return cls(d.pop("vocab_size"), d.pop("embed_size"), d.pop("hidden_size"), d.pop("num_layers"),
                   d.pop("num_classes"), **d)

    def init_state(self, batch_size: int):
        return self.qrnn.init_state(batch_size)

    def forward(self, tokens: torch.Tensor, state=None, lengths: Optional[torch.Tensor] = None):
        """tokens [B, T >= 1]; lengths [B] in [1, T] (each row's own last step) or None."""
        check_token_ids(tokens, "tokens", self.config.vocab_size, "QRNNClassifier")
        if tokens.shape[1] == 0:
            raise ConfigError("QRNNClassifier: tokens has no steps (T = 0): the logits are those of the last step")
        if lengths is not None:
            check_lengths(lengths, tokens.shape[0], tokens.shape[1], "QRNNClassifier")
        y, state = self.qrnn(self.embed(tokens), state, lengths=lengths if self.config.bidirectional else None)
        if lengths is None:
            last = y[:, -1]
        else:
            last = y[torch.arange(y.shape[0], device=y.device), lengths.to(y.device) - 1]
        if self.config.bidirectional:
            last = torch.where(self._backward_channels, y[:, 0], last)
        return self.out(self.drop(last)), state
