"""Prometheus metrics written by hand (text exposition format 0.0.4), safe across threads.

The engine's worker threads record step latencies and batch sizes while the event loop counts
streams and errors, so every metric takes a small lock. Only what `/metrics` needs is here:
counters and gauges (optionally with one set of labels) and cumulative histograms.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from typing import Iterable, Optional, Sequence


def _fmt(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count, per label set."""

    kind = "counter"

    def __init__(self, name, help, labelnames=()):
        super().__init__(name, help, labelnames)
        self._values: dict = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1.0, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = self._values.get(k, 0.0) + amount

    def value(self, **labels) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(Counter):
    """A value that goes up and down (set, inc, dec), per label set."""

    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        k = self._key(labels)
        with self._lock:
            self._values[k] = float(value)

    def dec(self, amount: float = 1.0, **labels) -> None:
        self.inc(-amount, **labels)


class Histogram(_Metric):
    """Cumulative buckets (le), _sum and _count; `buckets` are the finite upper bounds."""

    kind = "histogram"

    def __init__(self, name, help, buckets: Iterable[float]):
        super().__init__(name, help)
        self.bounds = sorted(float(b) for b in buckets) + [math.inf]
        self._counts = [0] * len(self.bounds)
        self._sum, self._n = 0.0, 0

    def observe(self, v: float) -> None:
        i = bisect.bisect_left(self.bounds, v)  # first bound >= v (le semantics)
        with self._lock:
            self._counts[i] += 1
            self._sum += v
            self._n += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._n

    def bucket_counts(self) -> list:
        """Observations per bucket (not cumulative), the last one for +Inf."""
        with self._lock:
            return list(self._counts)

    def lines(self) -> list:
        with self._lock:
            counts, s, n = list(self._counts), self._sum, self._n
        out, acc = self.header(), 0
        for b, c in zip(self.bounds, counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{_fmt(b)}"}} {acc}')
        out += [f"{self.name}_sum {_fmt(s)}", f"{self.name}_count {n}"]
        return out


class RateWindow:
    """Events per second over the last `window` seconds (for a tokens/s gauge that needs no PromQL)."""

    def __init__(self, window: float = 10.0):
        self.window = window
        self._events: deque = deque()  # (time, count)
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def add(self, n: int, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._events.append((now, n))
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._events and self._events[0][0] < now - self.window:
            self._events.popleft()

    def rate(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._events)
        span = min(self.window, max(now - self._start, 1e-9))
        return total / span


# Step latencies on CPU run from ~0.1 ms (tiny models) to ~100 ms (huge batches).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """Every metric of the server, exposed at /metrics."""

    def __init__(self):
        p = "qrnn_serve_"
        self.streams_open = Gauge(p + "streams_open", "Client streams open now (WebSocket connections and HTTP translations).")
        self.sessions = Gauge(p + "sessions", "Translations whose model state the engine holds now (encoder and decoder states).")
        self.decoding = Gauge(p + "decoding", "Translations being decoded now.")
        self.tokens = Counter(p + "tokens_total", "Target tokens decoded (final tokens handed to client streams).")
        self.tokens_per_second = Gauge(p + "tokens_per_second", "Target tokens per second over the last 10 seconds.")
        self.translations = Counter(p + "translations_total", "Translations finished, by outcome.", ["outcome"])
        self.errors = Counter(p + "errors_total", "Error messages and refusals sent to clients, by kind.", ["kind"])
        self.step_seconds = Histogram(p + "step_seconds", "Wall time of one batched decoder step (one runtime call).",
                                      LATENCY_BUCKETS)
        self.encode_seconds = Histogram(p + "encode_seconds", "Wall time of encoding one source piece.", LATENCY_BUCKETS)
        self.batch_size = Histogram(p + "batch_size", "Translations stepped together in one decoder call.", BATCH_BUCKETS)
        self.batch_rows = Histogram(p + "batch_rows", "Rows (live hypotheses) in one decoder call.", BATCH_BUCKETS)
        self.first_token_seconds = Histogram(p + "first_token_seconds",
                                             "Time from the end of the source to the first target token.",
                                             LATENCY_BUCKETS)
        self.draining = Gauge(p + "draining", "1 while the server drains streams before shutting down.")
        self._rate = RateWindow(10.0)

    def add_tokens(self, n: int) -> None:
        self.tokens.inc(n)
        self._rate.add(n)

    def exposition(self) -> str:
        self.tokens_per_second.set(self._rate.rate())
        ms = [self.streams_open, self.sessions, self.decoding, self.tokens, self.tokens_per_second,
              self.translations, self.errors, self.step_seconds, self.encode_seconds, self.batch_size,
              self.batch_rows, self.first_token_seconds, self.draining]
        lines = []
        for m in ms:
            lines += m.lines()
        return "\n".join(lines) + "\n"
