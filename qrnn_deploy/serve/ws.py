"""WebSocket `/v1/stream`: source pieces in, target tokens out (protocol in protocol.py and
docs/server.md).

One connection carries any number of sentences, one after another. Each "source" piece is
encoded on arrival; "end" starts decoding, and a pump task forwards that sentence's tokens while
the connection keeps reading (so "reset" can stop it and the next sentence can already stream
in). Pumps of consecutive sentences run in order, so a client sees sentence 1's done before any
token of sentence 2.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Optional

from starlette.websockets import WebSocket, WebSocketDisconnect

from qrnn_deploy.errors import QRNNError
from qrnn_deploy.serve.engine import EngineStopped, Job
from qrnn_deploy.serve.protocol import (CLOSE_IDLE, CLOSE_INTERNAL_ERROR, CLOSE_POLICY, CLOSE_TRY_AGAIN_LATER,
                                        ProtocolError, check_source_length, decode_frame, decode_options,
                                        parse_message)
from qrnn_deploy.serve.state import ServerState

log = logging.getLogger("qrnn_deploy.serve")


class _Close(Exception):
    def __init__(self, code: int):
        self.code = code


class _Stalled(Exception):
    """A message waited `send_timeout` seconds for the client to read; the connection was dropped."""


RAW_SEND = "qrnn_deploy.raw_send"


class RawSend:
    """ASGI middleware: keeps the server's own send callable of each WebSocket in its scope, so a
    connection whose client stopped reading can be dropped (`_abort`) without waiting for its
    socket buffers to drain, which a polite close would."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("websocket", "http"):
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def _abort(ws) -> None:
    """Drops the connection (of a WebSocket or an HTTP request) at once when the server exposes
    its transport (uvicorn's protocols do, as the owner of the send method); else the socket
    closes when the peer goes."""
    send = ws.scope.get(RAW_SEND)
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()


def token_payload(job: Job, evs: list, index: int) -> Optional[dict]:
    """One message for the tokens among `evs` (those that became final by the time the sender
    got to them: usually one; several when the network side fell behind or steps were shorter
    than the flush interval). None when there is no token."""
    toks = [e for e in evs if e["type"] == "token"]
    if not toks:
        return None
    return {"type": "token", "text": "".join(e["text"] for e in toks), "ids": [e["id"] for e in toks],
            "index": index, "ms": round((toks[-1]["t"] - job.t_end) * 1000, 3)}


def done_payload(job: Job, ev: dict, beam: int) -> dict:
    """The final message of one translation: text plus counts and timings (milliseconds)."""
    t_end = job.t_end or ev["t"]
    return {
        "type": "done", "text": ev["text"], "tokens": len(ev["ids"]), "steps": ev["steps"], "beam": beam,
        "source_chars": job.source_chars,
        "encode_ms": round(job.encode_seconds * 1000, 3),
        "first_token_ms": None if job.t_first is None else round((job.t_first - t_end) * 1000, 3),
        "decode_ms": round((ev["t"] - t_end) * 1000, 3),
    }


async def stream_endpoint(ws: WebSocket) -> None:
    st: ServerState = ws.app.state.serve
    await ws.accept()
    if not st.authorized(ws.headers, ws.query_params):
        st.metrics.errors.inc(kind="unauthorized")
        await _send_then_close(ws, {"type": "error", "code": "unauthorized",
                                    "message": "missing or wrong API key (Authorization: Bearer KEY, "
                                               "X-API-Key: KEY, or ?api_key=KEY)"}, CLOSE_POLICY)
        return
    slot = st.open_stream()
    if slot is None:
        code, message = st.refusal()
        st.metrics.errors.inc(kind=code)
        await _send_then_close(ws, {"type": "error", "code": code, "message": message}, CLOSE_TRY_AGAIN_LATER)
        return
    conn = StreamConnection(ws, st)
    watchdog = asyncio.ensure_future(conn.watch())
    close_code = None
    try:
        await conn.run()
    except _Close as c:
        close_code = c.code
    except (WebSocketDisconnect, RuntimeError, OSError, _Stalled):
        pass  # the client went away, or stopped reading, while we were sending
    except Exception:  # a bug: the client gets a message and a close, not a dropped connection
        log.exception("WebSocket connection failed")
        st.metrics.errors.inc(kind="internal")
        close_code = CLOSE_INTERNAL_ERROR
        await _send_within(ws, {"type": "error", "code": "internal",
                                "message": "internal server error; the connection is closed"}, st.cfg.send_timeout)
    finally:
        # Freed before the close: a client that no longer reads could hold the close (and with
        # it the slot and its translations) for as long as it likes.
        watchdog.cancel()
        await conn.cleanup()
        slot.release()
    if close_code is not None:
        await _close_within(ws, close_code, st.cfg.send_timeout)


async def _send_within(ws: WebSocket, obj: dict, limit: float) -> None:
    try:
        await asyncio.wait_for(ws.send_text(json.dumps(obj)), limit)
    except asyncio.TimeoutError:
        _abort(ws)
    except Exception:  # the client is gone
        pass


async def _close_within(ws: WebSocket, code: int, limit: float) -> None:
    """Closes with `code`; a client that does not take the close frame within `limit` seconds
    (its buffers full) is cut instead."""
    try:
        await asyncio.wait_for(ws.close(code), limit)
    except asyncio.TimeoutError:
        _abort(ws)
    except Exception:  # already closed by the peer
        pass


async def _send_then_close(ws: WebSocket, obj: dict, code: int) -> None:
    limit = ws.app.state.serve.cfg.send_timeout
    await _send_within(ws, obj, limit)
    await _close_within(ws, code, limit)


class StreamConnection:
    def __init__(self, ws: WebSocket, st: ServerState):
        self.ws, self.st, self.cfg = ws, st, st.cfg
        self.job: Optional[Job] = None  # the sentence whose source is arriving
        self.pumps: list = []  # tasks forwarding ended sentences, oldest first
        self._pump_jobs: dict = {}  # pump task -> its job (closed by drop_all if the task never ran)
        self.feeds: list = []  # futures of source pieces posted and not yet encoded
        self._send_lock = asyncio.Lock()
        self.stalled = False  # a send timed out: the connection is being dropped
        self._sending_since: Optional[float] = None  # time.monotonic() when the current send began

    def busy(self) -> bool:
        return self.decoding() or self.job is not None

    def decoding(self) -> bool:
        """Whether ended sentences of this connection are still being decoded or sent."""
        self.pumps = [p for p in self.pumps if not p.done()]
        if len(self._pump_jobs) > len(self.pumps):
            self._pump_jobs = {p: self._pump_jobs[p] for p in self.pumps}
        return bool(self.pumps)

    async def send(self, obj: dict) -> None:
        """Sends one message. A send still waiting for the client to read after `send_timeout`
        seconds (its socket buffers full) gets the connection dropped by the watchdog; later
        sends raise _Stalled."""
        async with self._send_lock:
            if self.stalled:
                raise _Stalled()
            self._sending_since = time.monotonic()
            try:
                await self.ws.send_text(json.dumps(obj, ensure_ascii=False))
            finally:
                self._sending_since = None

    async def watch(self) -> None:
        """The send watchdog (a task per connection; wrapping every send in a timeout would cost
        a timer per token): drops the connection when a send has waited over `send_timeout`."""
        limit = self.cfg.send_timeout
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            t = self._sending_since
            if t is not None and time.monotonic() - t > limit:
                self.stalled = True
                self.st.metrics.errors.inc(kind="send_timeout")
                log.info("a WebSocket client read nothing for %g s; dropping the connection", limit)
                _abort(self.ws)  # the waiting send fails, and the reader sees the disconnect
                await self.drop_all()  # frees the translations even where the server cannot abort
                return

    async def error(self, e: ProtocolError) -> None:
        self.st.metrics.errors.inc(kind=e.code)
        await self.send(e.to_json())

    async def run(self) -> None:
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), self.cfg.idle_timeout)
            except asyncio.TimeoutError:
                if self.decoding():
                    continue  # sentences of this client are being decoded: silence is fine
                await self.error(ProtocolError("idle_timeout", f"no message for {self.cfg.idle_timeout:g} s; "
                                                               "closing the connection"))
                raise _Close(CLOSE_IDLE) from None
            if msg["type"] == "websocket.disconnect":
                return
            try:
                data = msg.get("text")
                text = decode_frame(data if data is not None else msg.get("bytes"), self.cfg.max_message_bytes)
                await self.handle(parse_message(text))
            except ProtocolError as e:
                await self.error(e)

    async def handle(self, m: dict) -> None:
        kind = m["type"]
        if kind == "source":
            await self.source(m["text"])
        elif kind == "end":
            beam, max_len, lp = decode_options(m, self.cfg)
            if self.job is not None and self.job.source_chars == 0:  # only empty pieces so far
                self.job.close()
                self.job = None
            if self.job is None:
                raise ProtocolError("empty_source", 'nothing to translate: send {"type": "source", "text": ...} '
                                                    'before "end"')
            if self.busy() and len(self.pumps) >= self.cfg.max_queued_sentences:
                self.job.close()
                self.job = None
                raise ProtocolError("too_many_sentences",
                                    f"{len(self.pumps)} sentences of this connection are still being sent (the "
                                    f"limit is {self.cfg.max_queued_sentences}); read their tokens before ending "
                                    "more. The sentence was dropped")
            job, self.job = self.job, None
            try:
                job.end(beam, max_len, lp)
            except QRNNError as e:  # the engine is stopping
                job.close()
                raise ProtocolError("draining", f"{e}; the sentence was dropped") from None
            prev = self.pumps[-1] if self.pumps else None
            task = asyncio.ensure_future(self.pump(job, prev, beam))
            self.pumps.append(task)
            self._pump_jobs[task] = job
        elif kind == "reset":
            await self.drop_all()
            await self.send({"type": "reset"})
        elif kind == "ping":
            await self.settle()
            await self.send({"type": "pong"})

    async def source(self, text: str) -> None:
        if self.job is None:
            if self.st.draining:
                if self.decoding():  # sentences already ended finish first: the connection stays
                    raise ProtocolError("draining", "the server is shutting down: this piece was dropped; the "
                                                    "sentences already ended are still being translated")
                await self.error(ProtocolError("draining", "the server is shutting down; reconnect to another "
                                                           "instance or retry later"))
                raise _Close(CLOSE_TRY_AGAIN_LATER)
            try:
                self.job = self.st.open_job()
            except EngineStopped as e:
                await self.error(ProtocolError("draining", str(e)))
                raise _Close(CLOSE_TRY_AGAIN_LATER) from None
        err = check_source_length(self.job.source_chars, text, self.cfg)
        if err is not None:
            self.job.close()
            self.job = None
            raise err
        if not text:
            return
        # Not awaited: the next message is read at once, so the pieces of a fast client (or of
        # many clients) wait together in the engine and are encoded in one call. A failure
        # comes back through _fed.
        try:
            fut = self.job.feed_nowait(text)
        except QRNNError as e:
            self.job.close()
            self.job = None
            raise ProtocolError("source_failed", f"the source could not be encoded ({e}); the sentence was "
                                                 "dropped") from None
        job = self.job
        self.feeds = [f for f in self.feeds if not f.done()]
        self.feeds.append(fut)
        fut.add_done_callback(lambda f: self._fed(job, f))

    def _fed(self, job: Job, fut: asyncio.Future) -> None:
        """A piece was encoded, or failed. On the first failure of a sentence whose source is
        still arriving, the sentence is dropped and the client told (an ended sentence's failure
        reaches the client through its pump as translate_failed)."""
        if fut.cancelled() or fut.exception() is None or self.job is not job:
            return
        job.close()
        self.job = None
        e = ProtocolError("source_failed", f"the source could not be encoded ({fut.exception()}); the sentence "
                                           "was dropped")
        asyncio.ensure_future(self._report(e))

    async def _report(self, e: ProtocolError) -> None:
        try:
            await self.error(e)
        except Exception:  # the client is gone; the reader notices and cleans up
            pass

    async def settle(self) -> None:
        """Waits until every source piece posted so far is encoded (or failed)."""
        feeds, self.feeds = self.feeds, []
        if feeds:
            await asyncio.wait(feeds)

    async def pump(self, job: Job, prev: Optional[asyncio.Task], beam: int) -> None:
        """Forwards one ended sentence's tokens and its done (or error) message."""
        try:
            if prev is not None:
                await asyncio.wait([prev])
            index = 0
            async for evs in job.batches():
                msg = token_payload(job, evs, index)
                if msg is not None:
                    await self.send(msg)
                    index += len(msg["ids"])
                ev = evs[-1]
                if ev["type"] == "done":
                    await self.send(done_payload(job, ev, beam))
                elif ev["type"] == "error":
                    self.st.metrics.errors.inc(kind="translate_failed")
                    await self.send({"type": "error", "code": "translate_failed", "message": ev["message"]})
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the client is gone; the reader notices and cleans up
            log.debug("pump stopped: %s", e)
        finally:
            job.close()

    async def drop_all(self) -> None:
        if self.job is not None:
            self.job.close()
            self.job = None
        pumps, self.pumps = self.pumps, []
        jobs, self._pump_jobs = self._pump_jobs, {}
        for p in pumps:
            p.cancel()
            # A task cancelled before its first step never runs its body, so the pump's own
            # `finally` cannot be relied on to free the translation: close it here (idempotent).
            job = jobs.get(p)
            if job is not None:
                job.close()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)

    async def cleanup(self) -> None:
        """Frees every model state of this connection (client gone, closed or server stopping)."""
        await self.drop_all()


__all__ = ["stream_endpoint", "done_payload", "token_payload", "StreamConnection", "CLOSE_IDLE"]
