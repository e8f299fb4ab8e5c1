"""Decoding rules shared by every decoder of the project (PyTorch reference, Python runtime;
the C++ runtime re-implements exactly these). numpy only: the runtime imports it without torch."""

from __future__ import annotations

import math

import numpy as np

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.limits import LENGTH_PENALTY_RANGE, MAX_BEAM, MAX_DECODE_LEN
from qrnn_deploy.vocab import EOS


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def check_decode_options(beam, max_len, length_penalty) -> None:
    """beam: an integer in [1, MAX_BEAM] (1 = greedy); max_len: an integer in [0, MAX_DECODE_LEN]
    (0 decodes nothing); length_penalty: a number in LENGTH_PENALTY_RANGE. Raises ConfigError
    naming the bad one."""
    if not _is_int(beam) or not 1 <= beam <= MAX_BEAM:
        raise ConfigError(f"beam must be an integer in [1, {MAX_BEAM}] (1 = greedy), got {beam!r}")
    if not _is_int(max_len) or not 0 <= max_len <= MAX_DECODE_LEN:
        raise ConfigError(f"max_len must be an integer in [0, {MAX_DECODE_LEN}], got {max_len!r}")
    lo, hi = LENGTH_PENALTY_RANGE
    if not _is_finite(length_penalty) or not lo <= length_penalty <= hi:
        # Bounded: (len + 1) ** length_penalty must neither overflow nor vanish for any max_len.
        raise ConfigError(f"length_penalty must be a number in [{lo:g}, {hi:g}] (1.0 = divide by length), "
                          f"got {length_penalty!r}")


def beam_step(scores, logp, beam: int, n_finished: int, last_step: bool):
    """One beam-search expansion: the exact rule every decoder of this project implements.

    scores: [K] summed log-probs of the live hypotheses; logp: [K, V] float64 log-probs of the
    next symbol. Candidates (score_k + logp[k, v]) are ranked best first, ties to the lower flat
    index k*V + v. Walking the best 2*beam in order: a </s> candidate ranked within the first
    `beam` finishes (while fewer than `beam` hypotheses are finished in all); any other candidate
    becomes live while fewer than `beam` are live. On the last step (max_len reached) live
    candidates finish instead, their symbol included. Once `beam` hypotheses are finished,
    nothing stays live.
    Returns (live [(score, parent, symbol)], finished [(score, parent, symbol)]); a finished
    symbol of </s> is not part of the hypothesis' tokens.
    """
    if not _is_int(beam) or beam < 1:
        raise ConfigError(f"beam must be an integer >= 1, got {beam!r}")
    if getattr(logp, "ndim", None) != 2 or len(scores) != logp.shape[0]:
        raise ConfigError(f"beam_step: logp must be [K, V] with K = len(scores) = {len(scores)}, "
                          f"got shape {list(np.shape(logp))}")
    K, V = logp.shape
    total = (np.asarray(scores, dtype=np.float64)[:, None] + logp).reshape(-1)
    order = np.argsort(-total, kind="stable")[:2 * beam]
    live, fin = [], []
    for rank, flat in enumerate(order):
        p, t = divmod(int(flat), V)
        s = float(total[flat])
        if t == EOS:
            if rank < beam and n_finished + len(fin) < beam:
                fin.append((s, p, t))
        elif len(live) < beam:
            live.append((s, p, t))
    if last_step:
        fin += live[:max(0, beam - n_finished - len(fin))]
        live = []
    if n_finished + len(fin) >= beam:
        live = []
    return live, fin


def best_hypothesis(finished, length_penalty: float) -> list[int]:
    """The finished hypothesis with the best score / (len + 1) ** length_penalty (+1 counts the
    end symbol); ties go to the one finished first."""
    if not _is_finite(length_penalty):  # nan would rank nothing: an empty result
        raise ConfigError(f"length_penalty must be a finite number, got {length_penalty!r}")
    best, best_score = [], -math.inf
    for s, seq in finished:
        norm = s / ((len(seq) + 1) ** length_penalty)
        if norm > best_score:
            best, best_score = seq, norm
    return best
