"""Browser-facing protection: other web origins and DNS rebinding are refused; every HTTP response
carries headers that keep browsers from sniffing or framing it.

A server on 127.0.0.1 without an API key is reachable from every web page the user opens: a page
of another origin may open `ws://127.0.0.1:PORT/v1/stream` (browsers do not apply CORS to
WebSockets) or post a form to `/v1/translate`; a page of a name the attacker re-points at
127.0.0.1 (DNS rebinding) is even same-origin. So:
- a request with an `Origin` header must come from the server's own origin (the Origin's host
  and port equal the Host header) or from one of `ServeConfig.allowed_origins`; requests
  without one (curl, scripts, the websockets library, same-origin navigations) pass;
- a request that arrived on a loopback address must name a loopback host (localhost,
  127.x.y.z, [::1]) or one of `ServeConfig.allowed_hosts` in its Host header.
Refused: HTTP 403 with a JSON error; a WebSocket is closed before its handshake completes (the
client sees HTTP 403).
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                     (b"content-security-policy", b"frame-ancestors 'none'")]


def is_loopback_host(name: str) -> bool:
    """Whether a host name or address (no port) is this machine's loopback."""
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _hostname(host_header: str) -> str:
    """The host part of a Host header value ("name:port", "[::1]:port", "name")."""
    try:
        return (urlsplit("//" + host_header).hostname or "").lower()
    except ValueError:
        return ""


def refusal(scope: dict, allowed_origins: tuple = (), allowed_hosts: tuple = ()) -> tuple:
    """(code, message) when the request must be refused, else ()."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
    host = headers.get("host", "")
    server = scope.get("server") or ("", None)
    if server[0] and is_loopback_host(str(server[0])):
        name = _hostname(host)
        if not (is_loopback_host(name) or name in {h.lower() for h in allowed_hosts} or "*" in allowed_hosts):
            return ("forbidden_host",
                    f"Host {host!r} is not a loopback name, and this request came over loopback (a guard "
                    f"against DNS rebinding); allow it with --allow-host {name or 'NAME'}")
    origin = headers.get("origin")
    if origin is not None and origin not in allowed_origins and "*" not in allowed_origins:
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            netloc = ""
        if not netloc or netloc != host.lower():
            return ("forbidden_origin",
                    f"requests from web origin {origin[:100]!r} are not allowed (only this server's own page); "
                    "allow it with --allow-origin ORIGIN")
    return ()


class RequestGuard:
    """ASGI middleware: `refusal` for every HTTP request and WebSocket, and SECURITY_HEADERS on
    every HTTP response. `config` is read per request (a ServeConfig: allowed_origins,
    allowed_hosts); `on_refused(code)` counts refusals."""

    def __init__(self, app, config, on_refused=None):
        self.app, self.config, self.on_refused = app, config, on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        why = refusal(scope, tuple(self.config.allowed_origins), tuple(self.config.allowed_hosts))
        if why:
            if self.on_refused is not None:
                self.on_refused(why[0])
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            body = json.dumps({"error": {"code": why[0], "message": why[1]}}).encode()
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())] + SECURITY_HEADERS})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http":
            inner = send

            async def send(message):
                if message["type"] == "http.response.start":
                    message = dict(message, headers=list(message.get("headers", ())) + SECURITY_HEADERS)
                await inner(message)

        await self.app(scope, receive, send)
