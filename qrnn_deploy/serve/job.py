"""One translation as the event loop sees it (`Job`), and what the engine needs from a model.

A Job is created by `Engine.open()` on the event loop; its model state lives in the engine's
worker threads (encoder, then decoder), which hand its results back through the job's asyncio
queue.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Optional, Protocol

from qrnn_deploy.errors import QRNNError, StreamError

if TYPE_CHECKING:
    from qrnn_deploy.serve.engine import Engine

log = logging.getLogger("qrnn_deploy.serve")


class TranslationModel(Protocol):
    """What the engine needs; `qrnn_deploy.runtime.Translator` has it."""

    def stream(self) -> Any:
        """A source stream: feed(text) -> source length, decoder(beam, max_len, length_penalty), close()."""

    def decode_batch(self) -> Any:
        """An object whose step(decoders) -> [new final token ids per decoder] makes one model call."""

    def token_text(self, tok: int) -> str:
        """The text of one target token."""


def _as_qrnn_error(e: Exception, what: str) -> QRNNError:
    """Errors handed to clients are QRNNErrors; anything else is a bug, logged with its traceback."""
    if isinstance(e, QRNNError):
        return e
    log.error("%s", what, exc_info=e)
    return StreamError(f"{what}: {type(e).__name__}: {e}")


class EngineStopped(QRNNError):
    """The engine is stopped (the server is shutting down)."""


class Job:
    """One translation (one source sentence). Created on the event loop by `Engine.open()`.

    Events arrive on `events` (an asyncio.Queue) as dicts: {"type": "token", "id", "text"},
    then {"type": "done", "ids", "text", "steps"} or {"type": "error", "message"}.
    """

    def __init__(self, engine: "Engine", jid: int):
        self.engine, self.id = engine, jid
        self.events: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.ended = False
        self.finished = False
        self.source_chars = 0
        self.encode_seconds = 0.0  # summed on the worker
        self.t_end: Optional[float] = None  # perf_counter when the source ended (loop side)
        self.t_first: Optional[float] = None
        self.n_tokens = 0
        self._sent = 0  # tokens the worker has produced for this job
        # Worker-owned model state: the encoder thread's until the source ends, then (once
        # _decoding is set, on the encoder thread) the decoder thread's.
        self._source = None
        self._decoder = None
        self._decoding = False
        self._source_error: Optional[QRNNError] = None  # set when a piece failed: the sentence is dropped

    async def feed(self, text: str) -> int:
        """Encodes one source piece (on the worker); returns the source length so far."""
        return await self.engine.feed(self, text)

    def feed_nowait(self, text: str) -> "asyncio.Future":
        """Posts one source piece without waiting; the future gives the source length so far."""
        return self.engine.feed_nowait(self, text)

    def end(self, beam: int = 1, max_len: int = 200, length_penalty: float = 1.0) -> None:
        self.engine.end(self, beam, max_len, length_penalty)

    def close(self) -> None:
        self.engine.close(self)

    async def results(self):
        """Yields this job's events until (and including) its done or error event."""
        async for evs in self.batches():
            for ev in evs:
                yield ev

    async def batches(self):
        """Yields lists of this job's events: each list is everything queued by then (at least
        one event), so tokens that became final together can go out in one message. Ends after
        the done or error event, which is always the last of its list."""
        q = self.events
        while True:
            evs = [await q.get()]
            while evs[-1]["type"] == "token" and not q.empty():
                evs.append(q.get_nowait())
            yield evs
            if evs[-1]["type"] in ("done", "error"):
                return
