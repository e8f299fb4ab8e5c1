"""QRNN encoder-decoder with attention (Bradbury et al. 2017, section 2.1; DESIGN.md section 1).

- Encoder: embedding -> L causal QRNN layers (unidirectional, so a source can stream).
- The encoder's last hidden state of layer l, linearly projected (V_l), is added to decoder layer
  l's gate pre-activations at every step: that is the `cond` of a QRNNLayer.
- Decoder: embedding -> L QRNN layers; the last one attends with its cell state c_t (before the
  output gate) over the encoder's top-layer states h_s:
      alpha = softmax_s(c_t . h_s),  k_t = sum_s alpha_s h_s,  h_t = o_t * (W_k k_t + W_c c_t)
  ('f' pooling has no output gate: h_t = W_k k_t + W_c c_t), then a linear layer gives logits.

`encode` / `decode` take chunks with carried states, exactly the two streaming graphs of the
bundle. `greedy_decode` and `beam_search` are the reference decoders the runtime must match.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.nn.fo_pool import fo_pool
from qrnn_deploy.nn.layers import (QRNNLayer, QRNNState, _per_layer, check_int, check_lengths, check_prob,
                                    check_tensor, check_token_ids, make_config)
from qrnn_deploy.decoding import beam_step, best_hypothesis, check_decode_options
from qrnn_deploy.vocab import BOS, EOS, PAD, SPECIALS


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    embed_size: int = 64
    hidden_size: int = 320
    num_layers: int = 4
    encoder_window: Union[int, list, None] = None  # None: the paper's 6 for layer 1, 2 above
    decoder_window: Union[int, list] = 2
    pooling: str = "fo"
    zoneout: float = 0.0
    dropout: float = 0.0


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """The model in eval mode inside, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _src_tensor(src_ids) -> torch.Tensor:
    """One source's ids (a list of ints) as [1, S], or ConfigError."""
    try:
        t = torch.as_tensor(src_ids)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"QRNNSeq2Seq: src_ids must be a list of token ids, got {type(src_ids).__name__}") from None
    if t.dim() != 1:
        raise ConfigError(f"QRNNSeq2Seq: src_ids must be a flat list of token ids, got shape {list(t.shape)}")
    return (t if t.numel() else t.long()).reshape(1, -1)  # [] is float: let encode say it is empty


class AttentionQRNNLayer(QRNNLayer):
    """The last decoder layer: QRNN pooling for c_t, then attention with c_t as the query."""

    def __init__(self, input_size: int, hidden_size: int, window: int, pooling: str, zoneout: float):
        super().__init__(input_size, hidden_size, window, pooling, zoneout)
        self.attn_k = nn.Linear(hidden_size, hidden_size)  # W_k (with the layer's output bias)
        self.attn_c = nn.Linear(hidden_size, hidden_size, bias=False)  # W_c

    def cell_gates(self, g: torch.Tensor) -> tuple[torch.Tensor, str, Optional[torch.Tensor]]:
        """Splits packed gates into (gates that give c_t through fo_pool, their pooling, o pre-act).

        c_t is the pooled cell state *before* the output gate, so the output gate is taken out:
        'fo' pools [Z | F] as 'f'; 'ifo' pools [Z | F | +inf | I] (o = 1 exactly, so h = c).
        """
        H = self.hidden_size
        if self.pooling == "f":
            return g, "f", None
        if self.pooling == "fo":
            return g[..., :2 * H], "f", g[..., 2 * H:3 * H]
        inf = torch.full_like(g[..., :H], float("inf"))
        return torch.cat([g[..., :2 * H], inf, g[..., 3 * H:]], -1), "ifo", g[..., 2 * H:3 * H]

    def forward(self, x, state: Optional[QRNNState], cond, memory, memory_mask):
        """x [B, T, d]; memory [B, S, H]; memory_mask [B, S] bool (True = a real source position)."""
        B, H = x.shape[0], self.hidden_size
        check_tensor(memory, "QRNNSeq2Seq: memory", floating=True)
        if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != H:
            raise ConfigError(f"QRNNSeq2Seq: memory must be [B, S, H] = [{B}, S, {H}], got {list(memory.shape)}")
        if memory_mask is not None and (not isinstance(memory_mask, torch.Tensor) or memory_mask.dtype != torch.bool
                                        or tuple(memory_mask.shape) != tuple(memory.shape[:2])):
            got = (f"{memory_mask.dtype} {list(memory_mask.shape)}" if isinstance(memory_mask, torch.Tensor)
                   else type(memory_mask).__name__)
            raise ConfigError(f"QRNNSeq2Seq: memory_mask must be a bool tensor [B, S] = {list(memory.shape[:2])} "
                              f"(True = a source position), got {got}")
        conv_state, c0 = (None, None) if state is None else self._check_state(state, x)
        g, conv_next = self.gates(x, conv_state, cond)
        cg, pooling, o_pre = self.cell_gates(g)
        c, c_last = fo_pool(cg, c0, pooling, batch_first=True)
        scores = torch.bmm(c, memory.transpose(1, 2))  # [B, T, S]
        if memory_mask is not None:
            scores = scores.masked_fill(~memory_mask.unsqueeze(1), float("-inf"))
        alpha = torch.softmax(scores, -1)
        k = torch.bmm(alpha, memory)
        h = self.attn_k(k) + self.attn_c(c)
        if o_pre is not None:
            h = torch.sigmoid(o_pre) * h
        if self.window > 1 and conv_next is None:
            conv_next = x.new_zeros(x.shape[0], self.window - 1, self.input_size)
        return h, QRNNState(conv_next, c_last)


class QRNNSeq2Seq(nn.Module):
    """Paper-faithful QRNN encoder-decoder. See the module docstring."""

    model_type = "seq2seq"
    config_class = Seq2SeqConfig

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, **kw):
        super().__init__()
        cfg = self.config = make_config(Seq2SeqConfig, "QRNNSeq2Seq", src_vocab_size, tgt_vocab_size, **kw)
        for name in ("src_vocab_size", "tgt_vocab_size"):
            # ids 0..3 are <pad> <unk> <s> </s>: decoding starts from <s> and stops at </s>.
            check_int(getattr(cfg, name), f"QRNNSeq2Seq: {name} (the special symbols included)", len(SPECIALS))
        for name in ("embed_size", "hidden_size", "num_layers"):
            check_int(getattr(cfg, name), f"QRNNSeq2Seq: {name}")
        check_prob(cfg.dropout, "QRNNSeq2Seq: dropout")
        L, H = cfg.num_layers, cfg.hidden_size
        if cfg.encoder_window is None:
            cfg.encoder_window = [6] + [2] * (L - 1)
        self.enc_windows = _per_layer(cfg.encoder_window, L, "encoder_window")
        self.dec_windows = _per_layer(cfg.decoder_window, L, "decoder_window")
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.embed_size)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.embed_size)
        self.encoder = nn.ModuleList(
            QRNNLayer(cfg.embed_size if l == 0 else H, H, self.enc_windows[l], cfg.pooling, cfg.zoneout)
            for l in range(L))
        self.decoder = nn.ModuleList(
            QRNNLayer(cfg.embed_size if l == 0 else H, H, self.dec_windows[l], cfg.pooling, cfg.zoneout)
            for l in range(L - 1))
        self.decoder.append(AttentionQRNNLayer(cfg.embed_size if L == 1 else H, H, self.dec_windows[-1],
                                               cfg.pooling, cfg.zoneout))
        P = self.decoder[0].num_gates
        self.cond_proj = nn.ModuleList(nn.Linear(H, P * H, bias=False) for _ in range(L))  # V_l
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.out = nn.Linear(H, cfg.tgt_vocab_size)

    @classmethod
    def from_config(cls, cfg: Seq2SeqConfig) -> "QRNNSeq2Seq":
        d = dict(cfg.__dict__)
        return cls(d.pop("src_vocab_size"), d.pop("tgt_vocab_size"), **d)

    # -- states ------------------------------------------------------------------------------

    def init_encoder_state(self, batch_size: int) -> list[QRNNState]:
        return [layer.init_state(batch_size) for layer in self.encoder]

    def init_decoder_state(self, batch_size: int) -> list[QRNNState]:
        return [layer.init_state(batch_size) for layer in self.decoder]

    # -- the two streaming halves -------------------------------------------------------------

    def encode(self, src: torch.Tensor, state: Optional[list] = None, lengths: Optional[torch.Tensor] = None):
        """src [B, Tc] ids -> (memory [B, Tc, H], cond: per layer [B, P*H], state).

        cond_l = V_l h^l at the last step (each row's `lengths - 1` when given: right padding).
        Feed chunks with the returned state; cond of the last chunk is the one the decoder uses.
        """
        check_token_ids(src, "src", self.config.src_vocab_size, "QRNNSeq2Seq")
        if src.shape[1] == 0:
            raise ConfigError("QRNNSeq2Seq: src chunk is empty")
        if state is not None and (not isinstance(state, (list, tuple)) or len(state) != len(self.encoder)):
            raise ConfigError(f"QRNNSeq2Seq: the encoder state must be a list of {len(self.encoder)} QRNNStates")
        if lengths is not None:
            check_lengths(lengths, src.shape[0], src.shape[1], "QRNNSeq2Seq")
        x = self.src_embed(src)
        B = src.shape[0]
        rows = torch.arange(B, device=src.device)
        last = (lengths.to(src.device) - 1) if lengths is not None else None
        new_state, cond = [], []
        for l, layer in enumerate(self.encoder):
            x, s = layer(x, None if state is None else state[l])
            new_state.append(s)
            h_last = x[:, -1] if last is None else x[rows, last]
            cond.append(self.cond_proj[l](h_last))
            if l < len(self.encoder) - 1:
                x = self.drop(x)
        return x, cond, new_state

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, memory_mask: Optional[torch.Tensor],
               cond: list, state: Optional[list] = None):
        """tgt [B, Tc] ids (teacher-forced inputs: <s> y_1 ...) -> (logits [B, Tc, V], state)."""
        check_token_ids(tgt, "tgt", self.config.tgt_vocab_size, "QRNNSeq2Seq")
        L = len(self.decoder)
        if not isinstance(cond, (list, tuple)) or len(cond) != L:
            got = f"{len(cond)} entries" if isinstance(cond, (list, tuple)) else type(cond).__name__
            raise ConfigError(f"QRNNSeq2Seq: cond must be a list of {L} tensors [B, P*H] (from encode), got {got}")
        if state is not None and (not isinstance(state, (list, tuple)) or len(state) != L):
            raise ConfigError(f"QRNNSeq2Seq: the decoder state must be a list of {L} QRNNStates")
        x = self.tgt_embed(tgt)
        new_state = []
        for l, layer in enumerate(self.decoder):
            s = None if state is None else state[l]
            if l < L - 1:
                x, s = layer(x, s, cond[l])
                x = self.drop(x)
            else:
                x, s = layer(x, s, cond[l], memory, memory_mask)
            new_state.append(s)
        return self.out(self.drop(x)), new_state

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Training pass on right-padded batches: logits [B, T_tgt, V] for the next target symbols."""
        memory, cond, _ = self.encode(src, None, src_lengths)
        mask = torch.arange(src.shape[1], device=src.device)[None, :] < src_lengths.to(src.device)[:, None]
        logits, _ = self.decode(tgt_in, memory, mask, cond)
        return logits

    # -- reference decoders (the runtime must give the same tokens) ------------------------------

    @torch.no_grad()
    def greedy_decode(self, src_ids: list[int], max_len: int = 200) -> list[int]:
        """Greedy decoding of one source: the argmax symbol each step until </s> (not included).
        Runs in eval mode (no zoneout or dropout), whatever mode the model is in."""
        check_decode_options(1, max_len, 1.0)
        with _eval_mode(self):
            return self._greedy_decode(src_ids, max_len)

    def _greedy_decode(self, src_ids, max_len: int) -> list[int]:
        memory, cond, _ = self.encode(_src_tensor(src_ids))
        state, tok, out = None, BOS, []
        for _ in range(max_len):
            logits, state = self.decode(torch.tensor([[tok]]), memory, None, cond, state)
            tok = int(logits[0, -1].argmax())
            if tok == EOS:
                break
            out.append(tok)
        return out

    @torch.no_grad()
    def beam_search(self, src_ids: list[int], beam: int = 4, max_len: int = 200,
                    length_penalty: float = 1.0) -> list[int]:
        """Beam search of one source (the rule is `beam_step`). Returns the best tokens (no </s>).
        Runs in eval mode (no zoneout or dropout), whatever mode the model is in."""
        check_decode_options(beam, max_len, length_penalty)
        with _eval_mode(self):
            return self._beam_search(src_ids, beam, max_len, length_penalty)

    def _beam_search(self, src_ids, beam: int, max_len: int, length_penalty: float) -> list[int]:
        memory, cond, _ = self.encode(_src_tensor(src_ids))
        live: list[tuple[float, list[int]]] = [(0.0, [])]  # (sum of log-probs, tokens)
        finished: list[tuple[float, list[int]]] = []
        state = None
        for step in range(max_len):
            K = len(live)
            toks = torch.tensor([[seq[-1] if seq else BOS] for _, seq in live])
            logits, state = self.decode(toks, memory.expand(K, -1, -1), None,
                                        [c.expand(K, -1) for c in cond], state)
            logp = torch.log_softmax(logits[:, -1].double(), -1).numpy()
            live_next, fin = beam_step([s for s, _ in live], logp, beam, len(finished), step + 1 == max_len)
            finished += [(s, live[p][1] + ([] if t == EOS else [t])) for s, p, t in fin]
            if not live_next:
                break
            live = [(s, live[p][1] + [t]) for s, p, t in live_next]
            idx = torch.tensor([p for _, p, _ in live_next])
            state = [QRNNState(None if st.conv_state is None else st.conv_state[idx], st.c[idx]) for st in state]
        return best_hypothesis(finished, length_penalty)
