"""Timing harness: interleaved rounds, so that a noisy shared machine slows every contender alike.

Timing contenders one after another lets a burst of load from another process land on one of them
only; the ratios we report would then measure the neighbours, not the code. Here each round runs
every contender once (in a rotating order) and the figure of a contender is the median of its
rounds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass
class Timing:
    """Seconds per call of one contender: all samples, with the statistics we report."""

    samples: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return float(np.median(self.samples)) if self.samples else float("nan")

    @property
    def best(self) -> float:
        return float(np.min(self.samples)) if self.samples else float("nan")

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) if self.samples else float("nan")


def interleaved(fns: Sequence[Callable[[], object]], rounds: int, warmup: int = 1,
                budget_s: float = float("inf"), min_rounds: int = 2) -> list:
    """Times each of `fns` (no-argument callables) once per round for `rounds` rounds.

    Stops early once `budget_s` seconds of rounds have passed (but not before `min_rounds`).
    Returns one Timing per function, in the order of `fns`.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    out = [Timing() for _ in fns]
    start = time.perf_counter()
    n = len(fns)
    for r in range(rounds):
        # Rotate the order so no contender always runs right after the same neighbour (caches,
        # frequency changes after a heavy call).
        for j in range(n):
            i = (j + r) % n
            t = time.perf_counter()
            fns[i]()
            out[i].samples.append(time.perf_counter() - t)
        if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
            break
    return out


def per_call_latency(steps: Sequence[Callable[[], object]], tokens: int, blocks: int, warmup: int = 3,
                     budget_s: float = float("inf")) -> list:
    """Per-call latencies of stateful step functions (one decoding step each), interleaved in blocks.

    Each block runs `tokens` consecutive calls of one contender (its state carries on inside the
    step function); blocks rotate over contenders. Returns one Timing per contender with every
    call's latency, for p50 / p99.
    """
    for fn in steps:
        for _ in range(warmup):
            fn()
    out = [Timing() for _ in steps]
    start = time.perf_counter()
    n = len(steps)
    for r in range(blocks):
        for j in range(n):
            i = (j + r) % n
            fn, samples = steps[i], out[i].samples
            for _ in range(tokens):
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
        if r >= 1 and time.perf_counter() - start > budget_s:
            break
    return out
