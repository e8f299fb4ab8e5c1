"""QRNN language model: embedding -> QRNN stack -> (optionally tied) softmax layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.nn.layers import QRNN, check_int, check_prob, check_token_ids, make_config


@dataclass
class LanguageModelConfig:
    vocab_size: int
    embed_size: int
    hidden_size: int
    num_layers: int
    window: Union[int, list] = 1
    pooling: str = "fo"
    zoneout: float = 0.0
    dropout: float = 0.0
    dense: bool = False
    tie_weights: bool = False


class QRNNLanguageModel(nn.Module):
    """tokens [B, T] -> logits [B, T, vocab_size]; streams with a carried per-layer state."""

    model_type = "language_model"
    config_class = LanguageModelConfig

    def __init__(self, vocab_size: int, embed_size: int, hidden_size: int, num_layers: int, **kw):
        super().__init__()
        cfg = self.config = make_config(LanguageModelConfig, "QRNNLanguageModel", vocab_size, embed_size,
                                        hidden_size, num_layers, **kw)
        for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
            check_int(getattr(cfg, name), f"QRNNLanguageModel: {name}")
        check_prob(cfg.dropout, "QRNNLanguageModel: dropout")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_size)
        self.qrnn = QRNN(cfg.embed_size, cfg.hidden_size, cfg.num_layers, cfg.window, cfg.pooling,
                         cfg.zoneout, cfg.dropout, cfg.dense)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.out = nn.Linear(self.qrnn.output_size, cfg.vocab_size)
        if cfg.tie_weights:
            if self.qrnn.output_size != cfg.embed_size:
                raise ConfigError(f"QRNNLanguageModel: tie_weights needs the QRNN output size "
                                  f"({self.qrnn.output_size}) to equal embed_size ({cfg.embed_size})")
            self.out.weight = self.embed.weight

    @classmethod
    def from_config(cls, cfg: LanguageModelConfig) -> "QRNNLanguageModel":
        d = dict(cfg.__dict__)
        return cls(d.pop("vocab_size"), d.pop("embed_size"), d.pop("hidden_size"), d.pop("num_layers"), **d)

    def init_state(self, batch_size: int):
        return self.qrnn.init_state(batch_size)

    def forward(self, tokens: torch.Tensor, state=None):
        check_token_ids(tokens, "tokens", self.config.vocab_size, "QRNNLanguageModel")
        y, state = self.qrnn(self.embed(tokens), state)
        return self.out(self.drop(y)), state
