"""Running the app under uvicorn with a drain on SIGTERM / SIGINT.

uvicorn's own graceful shutdown closes WebSockets at once (code 1012), cutting translations in
the middle. `DrainingServer` first drains: on the first signal it refuses new streams and
sentences (healthz turns 503 so a load balancer stops sending), waits until every translation in
flight has sent its done (at most `drain_timeout` s), and only then lets uvicorn shut down. A
second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import Optional

import uvicorn

from qrnn_deploy.errors import BundleError
from qrnn_deploy.serve.config import ServeConfig
from qrnn_deploy.serve.state import ServerState

log = logging.getLogger("qrnn_deploy.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains `state` before shutting down."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self.drain_started = False
        self.drained: Optional[bool] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:
        if self.drain_started or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self.drain_started = True
        self._loop.call_soon_threadsafe(self.request_drain)

    def request_drain(self) -> None:
        """Starts the drain (from the event loop; tests call it directly)."""
        self.drain_started = True
        asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        n = self.state.engine.jobs_open
        log.info("draining: %d translation(s) in flight, waiting up to %.0f s", n, self.state.cfg.drain_timeout)
        self.drained = await self.state.drain()
        if not self.drained:
            log.warning("drain timeout: %d translation(s) still open are cut", self.state.engine.jobs_open)
        self.should_exit = True


class _InvalidUtf8Frame(logging.Filter):
    """uvicorn logs a text frame that is not UTF-8 as an ERROR with a traceback (it closes the
    connection with 1007, as RFC 6455 asks). That is a client's fault, and a client could fill
    the log with tracebacks: it becomes one WARNING line."""

    MSG = "Invalid UTF-8 sequence received from client."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == self.MSG:
            record.msg, record.args = "closed a WebSocket with 1007: the client sent a text frame that is not UTF-8", ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _RedactApiKey(logging.Filter):
    """uvicorn logs each WebSocket's path with its query string, and the page sends the API key
    as `?api_key=` (browsers cannot set headers on a WebSocket): the key would be in every log.
    A query parameter whose name decodes to api_key (any case, any percent-encoding, as the
    server reads it) gets the value ***."""

    PARAM = re.compile(r"([?&])([^=&\s\"'#]*)=([^&\s\"'#]*)")

    @classmethod
    def redact(cls, text: str) -> str:
        from urllib.parse import unquote_plus

        if "=" not in text:
            return text
        return cls.PARAM.sub(lambda m: f"{m[1]}{m[2]}=***" if unquote_plus(m[2]).lower() == "api_key" else m[0], text)

    def filter(self, record: logging.LogRecord) -> bool:
        # The arguments are redacted in place: uvicorn's access formatter unpacks them.
        if isinstance(record.msg, str):
            record.msg = self.redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self.redact(a) if isinstance(a, str) else a for k, a in record.args.items()}
        return True


def _install_log_filters() -> None:
    for name, kind in (("uvicorn.error", _InvalidUtf8Frame), ("uvicorn.error", _RedactApiKey),
                       ("uvicorn.access", _RedactApiKey)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


_HEAD_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                          b"content-length: 42\r\nconnection: close\r\n\r\n"
                          b"the request's headers did not come in time")


def head_timeout_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol (httptools where installed, else h11: what uvicorn's "auto"
    takes) with a deadline for each request's head. uvicorn has none: a connection that opens and
    sends nothing, or trickles its headers, is held for ever, and enough of them fill
    `limit_concurrency` so that every new client gets 503.

    The deadline runs from the connection's opening and from the end of each response (the next
    request on a kept-alive connection); the head must be complete by then, or the connection is
    closed, after a 408 when part of a head came. A request whose head came is not timed here
    (its body has `send_timeout`, its response the app's own limits); a connection upgraded to a
    WebSocket is no longer this protocol's."""
    import h11
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeadTimeoutProtocol(AutoHTTPProtocol):
        _head_timer: Optional[asyncio.TimerHandle] = None
        _head_bytes = False

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_deadline()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            # h11: bytes of a next request's head wait in its buffer. (Not any bytes: the body of a
            # request answered before it was read, e.g. 401 / 403 / 413, still comes after the
            # response, and is no head: it must not earn that response a 408 after it.)
            conn = getattr(self, "conn", None)
            if conn is not None and conn.their_state is h11.IDLE and conn.trailing_data[0]:
                self._head_bytes = True

        def on_message_begin(self) -> None:  # httptools: a request's first bytes were parsed
            self._head_bytes = True
            super().on_message_begin()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()

        def connection_lost(self, exc) -> None:
            self._cancel_head_deadline()
            super().connection_lost(exc)

        def _cancel_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _arm_head_deadline(self) -> None:
            self._cancel_head_deadline()
            if self.transport.is_closing():
                return
            self._head_bytes = False
            self._head_timer = asyncio.get_running_loop().call_later(seconds, self._head_deadline, self.cycle)

        def _head_deadline(self, cycle) -> None:
            self._head_timer = None
            transport = self.transport
            # A new cycle means a head came in time, an unfinished one a request being served (a
            # pipelined request's cycle can start before the deadline is armed); another protocol
            # means a WebSocket took over.
            if (transport.is_closing() or self.cycle is not cycle or transport.get_protocol() is not self
                    or (cycle is not None and not cycle.response_complete)):
                return
            if self._head_bytes:
                transport.write(_HEAD_TIMEOUT_RESPONSE)
            transport.close()

    return HeadTimeoutProtocol


def uvicorn_config(app, cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
                   log_level: str = "info", access_log: bool = False) -> uvicorn.Config:
    # The app answers over-size messages with an error and keeps the connection; frames far over
    # the limit are cut by the WebSocket layer itself (close 1009) before they are buffered.
    # loop="asyncio": uvicorn would take uvloop where it is installed; measured here it was no
    # faster at 32 streams and 6-10% slower at one (docs/benchmarks.md), so the loop is the same
    # everywhere.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            lifespan="on", loop="asyncio", ws="websockets-sansio",
                            ws_max_size=max(4 * cfg.max_message_bytes, 1 << 20), ws_per_message_deflate=False,
                            timeout_graceful_shutdown=5, http=head_timeout_protocol(cfg.header_timeout),
                            # Connections (idle, half-sent or open) beyond this get 503; silent
                            # ones are closed after header_timeout. Streams are refused before it.
                            limit_concurrency=2 * cfg.max_streams + 64)
    _install_log_filters()  # after Config, which (re)configures uvicorn's loggers
    return config


def make_server(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                access_log: bool = False) -> DrainingServer:
    """A DrainingServer for an app made by `create_app` (run it with `.run()` or `await .serve()`)."""
    state: ServerState = app.state.serve
    return DrainingServer(uvicorn_config(app, state.cfg, host, port, log_level, access_log), state)


def check_listen(host: str, port: int) -> None:
    """ConfigError when this process cannot listen on host:port (in use, no such address):
    uvicorn would log it among its start-up lines and exit with status 3."""
    import socket

    from qrnn_deploy.errors import ConfigError

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind(addr)
    except (OSError, OverflowError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}") from None


def run_server(bundle, cfg: Optional[ServeConfig] = None, host: str = "127.0.0.1", port: int = 8000,
               threads: Optional[int] = None, backend: str = "onnxruntime", log_level: str = "info",
               access_log: bool = False, switch_interval: float = 2e-4) -> None:
    """Loads a seq2seq bundle and serves it until SIGTERM / SIGINT (then drains)."""
    from qrnn_deploy.runtime import load_bundle
    from qrnn_deploy.serve.app import create_app

    # The engine threads and the event loop share the GIL. After a thread releases it for a system
    # call (the loop writes a socket per token), it usually takes it straight back; the other
    # thread then waits for the forced switch, 5 ms by default: far longer than a decoder step.
    # A dedicated server process can afford a shorter interval.
    check_listen(host, port)  # a port in use is one error line, before the bundle loads
    sys.setswitchinterval(switch_interval)
    b = load_bundle(bundle, backend=backend, threads=threads)
    tr = b.translator()
    if tr.src_vocab is None or tr.tgt_vocab is None:
        # Every request is text: without a vocabulary each one would fail.
        raise BundleError(f"{b.path}: this bundle has no vocabulary, so it cannot translate text; export it from "
                          "a checkpoint that carries one")
    m = b.manifest
    info = {"bundle": str(b.path), "model_type": m.model_type, "fo_pool": m.fo_pool, "backend": backend,
            "config": m.config}
    app = create_app(tr, cfg, info=info)
    make_server(app, host, port, log_level, access_log).run()
