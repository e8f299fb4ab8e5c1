"""The engine's results on their way to the event loop (serve/engine.py's worker threads put them).

A result is `(target, value)`: an asyncio.Future of a coroutine waiting for an encoder result
(value: its result or an exception), or a Job and one of its events (a dict: token, done, error),
which lands in the job's queue. Waking the event loop costs a self-pipe write and a GIL hand-over
between a worker thread and the loop, which under load costs more than a small model's step, so
the loop is woken sparingly:

- no wake-up while one is pending (the loop takes everything queued by then);
- when steps are short, tokens of steps that end within the flush interval of the last wake-up
  go out together. The interval is `flush_ms`, growing under load by FLUSH_PER_TRANSLATION per
  translation being decoded up to `flush_max_ms`: every wake-up sends one message per stream, and
  with many streams the messages (a system call and a GIL hand-over each) cost more than the
  model's steps;
- first tokens, done / error events and encoder results (`urgent`) are never held back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Optional

from qrnn_deploy.serve.config import flush_limit_ms
from qrnn_deploy.serve.metrics import ServerMetrics

FLUSH_PER_TRANSLATION = 1.25e-4  # s of flush interval per translation being decoded (32 -> 4 ms)


class Outbox:
    """Results of the worker threads waiting for the event loop `loop` (set before the first put)."""

    def __init__(self, metrics: ServerMetrics, flush_ms: float = 1.0, flush_max_ms: Optional[float] = None):
        self.metrics = metrics
        self.flush_s = flush_ms / 1000.0
        self.flush_max_s = flush_limit_ms(flush_ms, flush_max_ms) / 1000.0
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._items: list = []
        self._lock = threading.Lock()
        self._wake_pending = False  # a _take is scheduled on the loop and has not run yet
        self._last_wake = 0.0

    # -- worker threads ---------------------------------------------------------------------------

    def put(self, out: list, urgent: bool, decoding: int = 0, last_step: float = 0.0) -> None:
        """Queues results and wakes the loop unless they may wait: `decoding` translations are
        being decoded and the worker's last step took `last_step` seconds."""
        now = time.perf_counter()
        flush = min(self.flush_max_s, max(self.flush_s, decoding * FLUSH_PER_TRANSLATION))
        with self._lock:
            self._items.extend(out)
            if self._wake_pending:
                return
            if not urgent and (now - self._last_wake) + last_step < flush:
                return  # the next step ends within the flush interval: send both together
            self._wake_pending = True
            self._last_wake = now
        self._wake()

    def flush(self) -> None:
        """Wakes the loop for whatever waits (a worker about to sleep holds nothing back)."""
        with self._lock:
            if not self._items or self._wake_pending:
                return
            self._wake_pending = True
            self._last_wake = time.perf_counter()
        self._wake()

    def _wake(self) -> None:
        loop = self.loop
        try:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._take)
                return
        except RuntimeError:  # the loop closed meanwhile (process exit)
            pass
        with self._lock:  # nothing will take them: the next put must try again
            self._wake_pending = False

    # -- the event loop -----------------------------------------------------------------------------

    def _take(self) -> None:
        with self._lock:
            out, self._items = self._items, []
            self._wake_pending = False
        self._dispatch(out)

    def _dispatch(self, out: list) -> None:
        now = time.perf_counter()
        for target, value in out:
            if isinstance(target, asyncio.Future):
                if not target.done():
                    if isinstance(value, BaseException):
                        target.set_exception(value)
                    else:
                        target.set_result(value)
                continue
            job = target
            if job.closed:
                continue
            kind = value["type"]
            if kind == "token":
                if job.t_first is None:
                    job.t_first = now
                    if job.t_end is not None:
                        self.metrics.first_token_seconds.observe(now - job.t_end)
                job.n_tokens += 1
            elif kind in ("done", "error"):
                job.finished = True
                self.metrics.translations.inc(outcome="done" if kind == "done" else "error")
            value["t"] = now
            job.events.put_nowait(value)
