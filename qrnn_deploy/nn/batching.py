"""Length-bucketed batches of (source ids, target ids) and batched greedy decoding.

Pad id is 0 (`qrnn_deploy.vocab.PAD`); targets are `<s> y_1 .. y_n </s>`, split into the
teacher-forced decoder input `<s> y_1 .. y_n` and the output `y_1 .. y_n </s>`.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.vocab import BOS, EOS, PAD


def make_batches(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], max_tokens: int,
                 rng: random.Random, max_batch: int = 512, legacy_width: bool = False) -> list[list[int]]:
    """Index lists of batches holding pairs of similar length (padding wasted < a few %).

    Pairs are shuffled, then sorted by (target length, source length) inside pools of 100 batches'
    worth, cut into batches of at most `max_tokens` padded target+source symbols (as `collate`
    pads them: rows x (longest source + longest target + 1); a single pair longer than that is a
    batch of its own), and the batch order is shuffled. Deterministic for a given `rng` state.
    legacy_width: the width rule of runs saved before batching version 2, max(len(src) +
    len(tgt) + 1) over the pairs, which could exceed `max_tokens` by a few % (resumed old runs
    keep their batches).
    """
    idx = list(range(len(src)))
    rng.shuffle(idx)
    batches: list[list[int]] = []
    pool_size = max(1, 100 * max_tokens // 32)
    for p0 in range(0, len(idx), pool_size):
        pool = sorted(idx[p0:p0 + pool_size], key=lambda i: (len(tgt[i]), len(src[i])))
        cur: list[int] = []
        width, ms, mt = 0, 0, 0
        for i in pool:
            ls, lt = len(src[i]), len(tgt[i])
            w = max(width, ls + lt + 1) if legacy_width else max(ms, ls) + max(mt, lt) + 1
            if cur and (w * (len(cur) + 1) > max_tokens or len(cur) >= max_batch):
                batches.append(cur)
                cur, w, ms, mt = [], ls + lt + 1, 0, 0
            cur.append(i)
            width, ms, mt = w, max(ms, ls), max(mt, lt)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], batch: Sequence[int],
            device: torch.device | str = "cpu"):
    """(src [B, S], src_lengths [B], tgt_in [B, T], tgt_out [B, T]), right-padded with PAD."""
    B = len(batch)
    S = max(len(src[i]) for i in batch)
    T = max(len(tgt[i]) for i in batch) + 1
    s = torch.full((B, S), PAD, dtype=torch.long)
    ti = torch.full((B, T), PAD, dtype=torch.long)
    to = torch.full((B, T), PAD, dtype=torch.long)
    lengths = torch.empty(B, dtype=torch.long)
    for r, i in enumerate(batch):
        a, b = src[i], tgt[i]
        s[r, :len(a)] = torch.tensor(a, dtype=torch.long)
        lengths[r] = len(a)
        ti[r, 0] = BOS
        if b:
            ti[r, 1:len(b) + 1] = torch.tensor(b, dtype=torch.long)
            to[r, :len(b)] = torch.tensor(b, dtype=torch.long)
        to[r, len(b)] = EOS
    return s.to(device), lengths.to(device), ti.to(device), to.to(device)


@torch.no_grad()
def greedy_decode_batch(model, sources: Sequence[Sequence[int]], max_len=200,
                        batch_size: int = 64) -> list[list[int]]:
    """Greedy decoding of many sources at once; row by row the same rule as
    `QRNNSeq2Seq.greedy_decode` (argmax each step until </s>, which is not included).

    max_len: an int for every row, or a callable source length -> that row's max_len.

    Sources are sorted by length so each batch pads little; the encoder is causal, so right
    padding never changes a real position, and the attention mask hides the padding.
    """
    from qrnn_deploy.decoding import check_decode_options
    from qrnn_deploy.nn.layers import check_int

    check_int(batch_size, "greedy_decode_batch: batch_size")
    if not callable(max_len):
        check_decode_options(1, max_len, 1.0)
    was_training = model.training
    model.eval()
    try:
        return _greedy_decode_batch(model, sources, max_len, batch_size, check_decode_options)
    finally:
        model.train(was_training)


def _greedy_decode_batch(model, sources, max_len, batch_size: int, check_decode_options) -> list[list[int]]:
    device = next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    results: list[list[int]] = [[] for _ in sources]
    for b0 in range(0, len(order), batch_size):
        rows = order[b0:b0 + batch_size]
        B = len(rows)
        S = max(max(len(sources[i]) for i in rows), 1)
        src = torch.full((B, S), PAD, dtype=torch.long)
        lengths = torch.empty(B, dtype=torch.long)
        for r, i in enumerate(rows):
            ids = sources[i]
            if len(ids) == 0:
                raise ConfigError("greedy_decode_batch: empty source (nothing to translate)")
            try:
                src[r, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"greedy_decode_batch: source {i} is not a sequence of integer ids") from None
            lengths[r] = len(ids)
        src, lengths = src.to(device), lengths.to(device)
        memory, cond, _ = model.encode(src, None, lengths)
        mask = torch.arange(S, device=device)[None, :] < lengths[:, None]
        tok = torch.full((B, 1), BOS, dtype=torch.long, device=device)
        out = [[] for _ in rows]
        row_limits = [max_len(len(sources[i])) if callable(max_len) else max_len for i in rows]
        for n in row_limits:
            check_decode_options(1, n, 1.0)
        limits = torch.tensor(row_limits, device=device)
        done = limits <= 0
        state = None
        for step in range(int(limits.max())):
            logits, state = model.decode(tok, memory, mask, cond, state)
            nxt = logits[:, -1].argmax(-1)
            done |= nxt == EOS
            for r in (~done).nonzero().flatten().tolist():
                out[r].append(int(nxt[r]))
            done |= limits <= step + 1
            if bool(done.all()):
                break
            tok = nxt.unsqueeze(1)
        for r, i in enumerate(rows):
            results[i] = out[r]
    return results
