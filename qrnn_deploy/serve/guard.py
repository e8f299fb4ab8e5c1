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
  127.x.y.z, [::1]), an IP address (rebinding needs a DNS name; `http://0.0.0.0:PORT`, which
  uvicorn prints, is fine), or one of `ServeConfig.allowed_hosts` in its Host header; a request
  without one (HTTP/1.0) passes: browsers always send it.
Other origins listed in `allowed_origins` may also use the HTTP API from their pages: the guard
answers their CORS preflights and marks the responses readable to them.
Refused: HTTP 403 with a JSON error; a WebSocket is closed before its handshake completes (the
client sees HTTP 403).
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                     (b"content-security-policy", b"frame-ancestors 'none'")]


def _bare(name: str) -> str:
    name = name.strip().lower()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name[:-1] if name.endswith(".") else name  # "localhost." is "localhost"


def is_loopback_host(name: str) -> bool:
    """Whether a host name or address (no port) is this machine's loopback."""
    name = _bare(name)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(_bare(name))
        return True
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
    if server[0] and is_loopback_host(str(server[0])) and host:
        name = _hostname(host)
        allowed = {_bare(h) for h in allowed_hosts}
        if not (is_loopback_host(name) or _is_ip(name) or _bare(name) in allowed or "*" in allowed_hosts):
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


CORS_HEADERS = [(b"access-control-allow-methods", b"GET, POST"),
                (b"access-control-allow-headers", b"Authorization, Content-Type, X-API-Key"),
                (b"access-control-max-age", b"600")]


def _cross_origin(scope: dict, allowed_origins: tuple):
    """The Origin of an allowed other site's request (bytes), else None."""
    headers = dict(scope.get("headers", ()))
    origin, host = headers.get(b"origin"), headers.get(b"host", b"")
    if origin is None:
        return None
    try:
        same = urlsplit(origin.decode("latin-1")).netloc.lower() == host.decode("latin-1").lower()
    except ValueError:
        return None
    if same:
        return None
    return origin if (origin.decode("latin-1") in allowed_origins or "*" in allowed_origins) else None


class RequestGuard:
    """ASGI middleware: `refusal` for every HTTP request and WebSocket, SECURITY_HEADERS on every
    HTTP response, and CORS for the allowed other origins (preflights answered here, before the
    API key is asked for, as browsers send none with them). `config` is read per request (a
    ServeConfig: allowed_origins, allowed_hosts); `on_refused(code)` counts refusals."""

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
            extra = list(SECURITY_HEADERS)
            cors = _cross_origin(scope, tuple(self.config.allowed_origins))
            if cors is not None:
                extra += [(b"access-control-allow-origin", cors), (b"vary", b"Origin")]
                if scope.get("method") == "OPTIONS":  # a preflight
                    await send({"type": "http.response.start", "status": 204, "headers": extra + CORS_HEADERS})
                    await send({"type": "http.response.body", "body": b""})
                    return

            async def send(message):
                if message["type"] == "http.response.start":
                    message = dict(message, headers=list(message.get("headers", ())) + extra)
                await inner(message)

        await self.app(scope, receive, send)
