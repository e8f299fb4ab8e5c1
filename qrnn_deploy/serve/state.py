"""Server-wide state shared by the HTTP and WebSocket handlers: settings, engine, stream slots,
access check, draining."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Optional

from qrnn_deploy.serve.config import ServeConfig
from qrnn_deploy.serve.engine import Engine, Job
from qrnn_deploy.serve.metrics import ServerMetrics


class Slot:
    """One open client stream (a WebSocket or an HTTP translation); release() is idempotent."""

    def __init__(self, state: "ServerState"):
        self.state, self.released = state, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.state.streams_open -= 1
            self.state.metrics.streams_open.dec()


class ServerState:
    """Everything a handler needs. `info` describes the model (shown by /v1/status)."""

    def __init__(self, engine: Engine, cfg: ServeConfig, metrics: ServerMetrics, info: Optional[dict] = None):
        self.engine, self.cfg, self.metrics = engine, cfg, metrics
        self.info = dict(info or {})
        self.streams_open = 0
        self.draining = False
        self.started = time.time()

    # -- access -----------------------------------------------------------------------------

    def authorized(self, headers, query_params) -> bool:
        """True when no key is set, or the request carries it (Authorization: Bearer, X-API-Key,
        or ?api_key=). Compared in constant time."""
        key = self.cfg.api_key
        if key is None:
            return True
        given = []
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given.append(auth[7:].strip())
        if "x-api-key" in headers:
            given.append(headers["x-api-key"])
        if "api_key" in query_params:
            given.append(query_params["api_key"])
        return any(hmac.compare_digest(g.encode(), key.encode()) for g in given)

    # -- streams ------------------------------------------------------------------------------

    def open_stream(self) -> Optional[Slot]:
        """A slot, or None when the server is full or draining (refuse with 1013 / 503)."""
        if self.draining or self.streams_open >= self.cfg.max_streams:
            return None
        self.streams_open += 1
        self.metrics.streams_open.inc()
        return Slot(self)

    def refusal(self) -> tuple[str, str]:
        """(code, message) for a refused stream."""
        if self.draining:
            return "draining", "the server is shutting down; connect to another instance or retry later"
        return "busy", (f"the server is at its limit of {self.cfg.max_streams} open streams; "
                        "retry in a moment")

    def open_job(self) -> Job:
        return self.engine.open()

    # -- shutdown -----------------------------------------------------------------------------

    async def drain(self, timeout: Optional[float] = None) -> bool:
        """Refuses new streams and translations, then waits until every translation in flight
        has finished (or `timeout` seconds). Returns True when none is left."""
        timeout = self.cfg.drain_timeout if timeout is None else timeout
        self.draining = True
        self.metrics.draining.set(1)
        deadline = time.monotonic() + timeout
        while self.engine.jobs_open > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.engine.jobs_open == 0

    def status(self) -> dict:
        m = self.metrics
        return {
            "status": "draining" if self.draining else "ok",
            "model": self.info,
            "streams_open": self.streams_open,
            "translations_open": self.engine.jobs_open,
            "sessions": int(m.sessions.value()),
            "decoding": int(m.decoding.value()),
            "decoder_steps": self.engine.steps,
            "tokens": int(m.tokens.value()),
            "uptime_s": round(time.time() - self.started, 3),
            "limits": self.cfg.public(),
        }
