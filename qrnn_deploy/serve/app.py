"""The ASGI application: routes, access control, HTTP translation (JSON or server-sent events).

    app = create_app(load_bundle("bundle/").translator(), ServeConfig(max_streams=64))
    uvicorn.run(app)          # or qrnn_deploy.serve.server.run_server(...), which also drains

Routes: GET / (the live page), WS /v1/stream, POST /v1/translate, GET /healthz, GET /metrics,
GET /v1/status, GET /openapi.json. Every route but /healthz and the page (static, it asks for
the key) needs the API key when one is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from qrnn_deploy.errors import QRNNError
from qrnn_deploy.serve.config import ServeConfig
from qrnn_deploy.serve.engine import Engine, EngineStopped, TranslationModel
from qrnn_deploy.serve.guard import RequestGuard
from qrnn_deploy.serve.metrics import ServerMetrics
from qrnn_deploy.serve.openapi import openapi_spec
from qrnn_deploy.serve.protocol import ProtocolError, decode_options, shown
from qrnn_deploy.serve.state import ServerState
from qrnn_deploy.serve.ws import RawSend, _abort, done_payload, stream_endpoint, token_payload

STATIC = Path(__file__).parent / "static"


def _error(status: int, code: str, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _guard(endpoint):
    """Wraps an HTTP endpoint with the API-key check (401 with a hint on failure)."""

    async def guarded(request: Request):
        st: ServerState = request.app.state.serve
        if not st.authorized(request.headers, request.query_params):
            st.metrics.errors.inc(kind="unauthorized")
            return _error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY, "
                                               "X-API-Key: KEY, or ?api_key=KEY)",
                          headers={"WWW-Authenticate": "Bearer"})
        return await endpoint(request)

    guarded.__name__ = endpoint.__name__
    guarded.__doc__ = endpoint.__doc__
    return guarded


async def healthz(request: Request) -> Response:
    st: ServerState = request.app.state.serve
    ok = st.engine.running and not st.draining
    return JSONResponse({"status": "ok" if ok else ("draining" if st.draining else "stopped"),
                         "streams_open": st.streams_open}, status_code=200 if ok else 503)


async def prometheus(request: Request) -> Response:
    return PlainTextResponse(request.app.state.serve.metrics.exposition(),
                             media_type="text/plain; version=0.0.4; charset=utf-8")


async def status(request: Request) -> Response:
    return JSONResponse(request.app.state.serve.status())


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_spec(request.app.state.serve.cfg))


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body: at most `limit` bytes, all of it within `timeout` seconds (a client that
    trickles a body, or declares more than it sends, would hold its connection and buffer)."""
    try:
        return await asyncio.wait_for(_read_body_bytes(request, limit), timeout)
    except asyncio.TimeoutError:
        raise ProtocolError("request_timeout", f"the request body did not arrive within {timeout:g} s") from None


async def _read_body_bytes(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError("too_large", f"request body of {declared} bytes is over the limit of {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ProtocolError("too_large", f"request body is over the limit of {limit} bytes")
    return bytes(body)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read: what comes next is the
    disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _parse_translate(body: bytes, cfg: ServeConfig) -> tuple:
    try:
        d = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ProtocolError("bad_utf8", f"request body is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, and numbers over the digit limit
        raise ProtocolError("bad_json", f'malformed JSON ({e}); send {{"text": "..."}}') from None
    if not isinstance(d, dict) or not isinstance(d.get("text"), str):
        raise ProtocolError("bad_message", 'the body must be a JSON object with a string "text"')
    text = d["text"]
    if not text:
        raise ProtocolError("empty_source", '"text" is empty: nothing to translate')
    if len(text) > cfg.max_source_chars:
        raise ProtocolError("source_too_long", f'"text" has {len(text)} characters, over the limit of '
                                               f"{cfg.max_source_chars}; send a shorter sentence")
    stream = d.get("stream", False)
    if not isinstance(stream, bool):
        raise ProtocolError("bad_option", f'"stream" must be true or false, got {shown(stream)}')
    return (text, stream) + decode_options(d, cfg)


_STATUS = {"too_large": 413, "request_timeout": 408}


async def translate(request: Request) -> Response:
    """POST /v1/translate {"text", "beam"?, "max_len"?, "length_penalty"?, "stream"?}."""
    st: ServerState = request.app.state.serve
    try:
        body = await _read_body(request, st.cfg.max_message_bytes, st.cfg.send_timeout)
        text, stream, beam, max_len, lp = _parse_translate(body, st.cfg)
    except ProtocolError as e:
        st.metrics.errors.inc(kind=e.code)
        return _error(_STATUS.get(e.code, 400), e.code, e.message)
    except ClientDisconnect:
        return Response(status_code=400)
    slot = st.open_stream()
    if slot is None:
        code, message = st.refusal()
        st.metrics.errors.inc(kind=code)
        return _error(503, code, message, headers={"Retry-After": "1"})
    try:
        job = st.open_job()
    except EngineStopped as e:
        slot.release()
        return _error(503, "draining", str(e), headers={"Retry-After": "1"})

    def finish():
        job.close()
        slot.release()

    async def start():
        await job.feed(text)
        job.end(beam, max_len, lp)

    async def collect() -> Response:
        try:
            await start()
            tokens = []
            async for ev in job.results():
                if ev["type"] == "token":
                    tokens.append(ev["text"])
                elif ev["type"] == "done":
                    out = done_payload(job, ev, beam)
                    out.pop("type")
                    out["ids"], out["pieces"] = ev["ids"], tokens
                    return JSONResponse(out)
                else:
                    st.metrics.errors.inc(kind="translate_failed")
                    return _error(500, "translate_failed", ev["message"])
        except EngineStopped as e:
            st.metrics.errors.inc(kind="draining")
            return _error(503, "draining", str(e), headers={"Retry-After": "1"})
        except QRNNError as e:  # the runtime failed (the request itself was checked above)
            st.metrics.errors.inc(kind="translate_failed")
            return _error(500, "translate_failed", str(e))

    if not stream:
        # Raced against the client leaving: an abandoned request stops decoding at once instead
        # of holding its slot and a decoder row until max_len.
        work = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            finish()  # here, not in collect: a task cancelled before its first step runs nothing
        if work.cancelled():
            return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
        return work.result()

    async def events():
        try:
            await start()
            index = 0
            async for evs in job.batches():
                msg = token_payload(job, evs, index)
                if msg is not None:
                    msg.pop("type")
                    index += len(msg["ids"])
                    yield f"event: token\ndata: {json.dumps(msg, ensure_ascii=False)}\n\n"
                ev = evs[-1]
                if ev["type"] == "done":
                    payload = done_payload(job, ev, beam)
                    payload.pop("type")
                elif ev["type"] == "error":
                    st.metrics.errors.inc(kind="translate_failed")
                    payload = {"code": "translate_failed", "message": ev["message"]}
                else:
                    continue
                yield f"event: {ev['type']}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
        except QRNNError as e:
            st.metrics.errors.inc(kind="translate_failed")
            yield f"event: error\ndata: {json.dumps({'code': 'translate_failed', 'message': str(e)})}\n\n"
        finally:
            finish()

    # The background task frees the slot even if the client left before the body started.
    return _BoundedStream(request, st, events(), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                          background=BackgroundTask(finish))


class _BoundedStream(StreamingResponse):
    """An SSE response whose every send must complete within `send_timeout`: a client that keeps
    its connection open but stops reading is cut, and its slot and translation freed (by the
    background task), as on the WebSocket."""

    def __init__(self, request: Request, st: ServerState, content, **kw):
        super().__init__(content, **kw)
        self._request, self._st = request, st

    async def stream_response(self, send) -> None:
        limit = self._st.cfg.send_timeout

        async def bounded(message) -> None:
            try:
                await asyncio.wait_for(send(message), limit)
            except asyncio.TimeoutError:
                self._st.metrics.errors.inc(kind="send_timeout")
                _abort(self._request)
                raise _StalledClient() from None

        try:
            await super().stream_response(bounded)
        except _StalledClient:
            await self.body_iterator.aclose()


class _StalledClient(Exception):
    """An SSE client read nothing for send_timeout seconds; its connection was cut."""


def create_app(model: TranslationModel, cfg: Optional[ServeConfig] = None, info: Optional[dict] = None,
               metrics: Optional[ServerMetrics] = None) -> Starlette:
    """The server for `model` (a `qrnn_deploy.runtime.Translator`, or anything with its
    stream() / decode_batch() / token_text()). The engine threads start with the app's lifespan."""
    cfg = (cfg or ServeConfig()).validate()
    metrics = metrics or ServerMetrics()
    engine = Engine(model, metrics, batch_wait_ms=cfg.batch_wait_ms, max_batch_rows=cfg.max_batch_rows,
                    flush_ms=cfg.flush_ms, flush_max_ms=cfg.flush_limit_ms())
    state = ServerState(engine, cfg, metrics, info)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    routes = [
        Route("/", index, methods=["GET"]),  # a static page without secrets: it asks for the key
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", _guard(prometheus), methods=["GET"]),
        Route("/v1/status", _guard(status), methods=["GET"]),
        Route("/openapi.json", _guard(openapi), methods=["GET"]),
        Route("/v1/translate", _guard(translate), methods=["POST"]),
        WebSocketRoute("/v1/stream", stream_endpoint),
    ]
    guard = Middleware(RequestGuard, config=cfg, on_refused=lambda code: metrics.errors.inc(kind=code))
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[guard, Middleware(RawSend)])
    app.state.serve = state
    return app
