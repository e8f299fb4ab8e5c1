"""A server on a free loopback port in a background thread (for tests, benchmarks and notebooks).

    with ServerThread(create_app(translator)) as srv:
        ... connect to srv.ws_url("/v1/stream") or srv.url("/healthz") ...
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional

from qrnn_deploy.serve.server import make_server


class ServerThread:
    """Runs `app` (from create_app) under uvicorn in a daemon thread on 127.0.0.1:<free port>."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        self.app, self.host = app, host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.server = make_server(app, host, self.port, log_level=log_level)
        self.thread: Optional[threading.Thread] = None

    @property
    def state(self):
        return self.app.state.serve

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def ws_url(self, path: str = "/v1/stream") -> str:
        return f"ws://{self.host}:{self.port}{path}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="qrnn-serve-test", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def drain(self) -> None:
        """What SIGTERM does: drain, then shut down (returns at once; join() waits)."""
        loop = self.server._loop
        loop.call_soon_threadsafe(self.server.request_drain)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.join(timeout)

    def join(self, timeout: float = 10.0) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
