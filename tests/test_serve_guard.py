"""Browser-facing protection of the server (found by a security review: any web page the user
opened could use a server on 127.0.0.1 through a WebSocket; DNS rebinding reached its HTTP API;
the API key was written to the log; slow clients held connections). Every test here failed
before its fix."""

import asyncio
import json
import logging
import socket
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.export import export_bundle
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.serve import ServeConfig, create_app
from qrnn_deploy.serve.guard import is_loopback_host, refusal
from qrnn_deploy.serve.server import _RedactApiKey, uvicorn_config
from qrnn_deploy.serve.testing import ServerThread
from test_serve import MAX_LEN, VOCAB, make_model, recv, run


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_guard") / "bundle"
    export_bundle(make_model(), out, fo_pool="portable", verify=False, vocab=VOCAB)
    return load_bundle(out, threads=1).translator()


async def _translate_ws(url, **kw):
    async with connect(url, **kw) as ws:
        await ws.send(json.dumps({"type": "source", "text": "abc"}))
        await ws.send(json.dumps({"type": "end"}))
        while True:
            m = await recv(ws)
            if m["type"] == "done":
                return m


def test_websocket_from_another_web_origin_is_refused(translator):
    cfg = ServeConfig(max_len=MAX_LEN, allowed_origins=("https://app.example.com",))
    with ServerThread(create_app(translator, cfg)) as srv:
        own = f"http://127.0.0.1:{srv.port}"

        async def main():
            with pytest.raises(InvalidStatus) as e:
                await _translate_ws(srv.ws_url(), origin="http://evil.example")
            assert e.value.response.status_code == 403
            with pytest.raises(InvalidStatus):
                await _translate_ws(srv.ws_url(), origin="null")  # sandboxed frames, file:// pages
            assert (await _translate_ws(srv.ws_url(), origin=own))["type"] == "done"  # the server's page
            assert (await _translate_ws(srv.ws_url(), origin="https://app.example.com"))["type"] == "done"
            assert (await _translate_ws(srv.ws_url()))["type"] == "done"  # no Origin: not a browser page

        run(main())
        assert srv.state.metrics.errors.value(kind="forbidden_origin") == 2


def test_http_from_another_origin_or_a_rebound_host_name_is_refused(translator):
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        body = {"text": "abc"}
        r = httpx.post(srv.url("/v1/translate"), json=body, headers={"Origin": "http://evil.example"}, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
        # DNS rebinding: the attacker's name resolves to 127.0.0.1, so its page is same-origin.
        evil = f"rebind.attacker.example:{srv.port}"
        for path in ("/v1/status", "/"):
            r = httpx.get(srv.url(path), headers={"Host": evil}, timeout=30)
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host", path
            assert "--allow-host rebind.attacker.example" in r.json()["error"]["message"]
        r = httpx.post(srv.url("/v1/translate"), json=body, headers={"Host": evil, "Origin": "http://" + evil},
                       timeout=30)
        assert r.status_code == 403
        for host in (f"localhost:{srv.port}", f"127.0.0.1:{srv.port}", "127.0.0.1"):
            r = httpx.post(srv.url("/v1/translate"), json=body, headers={"Host": host}, timeout=30)
            assert r.status_code == 200, host
        r = httpx.post(srv.url("/v1/translate"), json=body, timeout=30,
                       headers={"Origin": f"http://127.0.0.1:{srv.port}"})
        assert r.status_code == 200
    cfg = ServeConfig(max_len=MAX_LEN, allowed_hosts=("mybox",))
    with ServerThread(create_app(translator, cfg)) as srv:
        r = httpx.get(srv.url("/v1/status"), headers={"Host": f"MyBox:{srv.port}"}, timeout=30)
        assert r.status_code == 200


def test_responses_carry_nosniff_and_no_framing(translator):
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        for r in (httpx.get(srv.url("/"), timeout=30), httpx.get(srv.url("/v1/status"), timeout=30),
                  httpx.post(srv.url("/v1/translate"), content=b"{", timeout=30),
                  httpx.get(srv.url("/v1/status"), headers={"Host": "x.example"}, timeout=30)):
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["x-frame-options"] == "DENY"
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]


def test_a_body_that_never_arrives_in_full_gets_408(translator):
    """A client that declares 100 bytes and sends 9 held its connection and buffer forever."""
    cfg = ServeConfig(max_len=MAX_LEN, send_timeout=0.5)
    with ServerThread(create_app(translator, cfg)) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"text\":")
            t0 = time.monotonic()
            reply = b""
            while b"request_timeout" not in reply and time.monotonic() - t0 < 20:
                part = s.recv(65536)  # the status line and the body may come in separate reads
                if not part:
                    break
                reply += part
            assert time.monotonic() - t0 < 20  # not held open: it used to wait forever
        reply = reply.decode()
        assert reply.startswith("HTTP/1.1 408") and '"request_timeout"' in reply, reply


def test_stream_option_error_does_not_echo_a_huge_value(translator):
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        r = httpx.post(srv.url("/v1/translate"), json={"text": "abc", "stream": "x" * 30000}, timeout=30)
        assert r.status_code == 400 and len(r.content) < 400 and "(30002 characters)" in r.json()["error"]["message"]


def test_the_api_key_is_not_logged():
    f = _RedactApiKey()
    # uvicorn's WebSocket line and access line (whose formatter unpacks the arguments)
    rec = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, '%s - "WebSocket %s" [accepted]',
                            ("127.0.0.1:5", "/v1/stream?x=1&api_key=s3cret&y=2"), None)
    assert f.filter(rec) and rec.getMessage() == '127.0.0.1:5 - "WebSocket /v1/stream?x=1&api_key=***&y=2" [accepted]'
    rec = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", "/v1/status?api_key=s3cret", "1.1", 200), None)
    assert f.filter(rec) and len(rec.args) == 5 and "s3cret" not in rec.getMessage()


def test_config_checks_and_connection_bound():
    with pytest.raises(ConfigError, match="allowed_origins"):
        ServeConfig(allowed_origins=("evil.example",)).validate()
    with pytest.raises(ConfigError, match="allowed_hosts"):
        ServeConfig(allowed_hosts=("host:8000",)).validate()
    ServeConfig(allowed_origins=("*",), allowed_hosts=("*", "mybox")).validate()
    assert uvicorn_config(object(), ServeConfig(max_streams=10)).limit_concurrency == 84
    for name in ("localhost", "127.0.0.1", "127.3.2.1", "::1", "[::1]", "app.localhost"):
        assert is_loopback_host(name)
    for name in ("0.0.0.0", "example.com", "", "10.0.0.1"):
        assert not is_loopback_host(name)
    # Connections that did not arrive on loopback are not held to loopback host names.
    scope = {"headers": [(b"host", b"mybox.lan:8000")], "server": ("192.168.1.5", 8000)}
    assert refusal(scope) == ()


def test_ip_literal_hosts_and_requests_without_host_are_not_refused():
    """Rebinding needs a DNS name: IP literals (http://0.0.0.0:PORT, which uvicorn prints),
    localhost. and HTTP/1.0 requests without a Host header were refused with 403."""
    loop = ("127.0.0.1", 8000)
    for host in (b"0.0.0.0:8000", b"[::ffff:127.0.0.1]:8000", b"localhost.:8000", b"192.168.1.4:8000", b"[::]:8000"):
        assert refusal({"headers": [(b"host", host)], "server": loop}) == (), host
    assert refusal({"headers": [], "server": loop}) == ()
    assert refusal({"headers": [(b"host", b"evil.example.:8000")], "server": loop})[0] == "forbidden_host"
    assert refusal({"headers": [(b"host", b"MyBox.:8000")], "server": loop}, allowed_hosts=("mybox",)) == ()


def test_allowed_origins_may_use_the_http_api_from_their_pages(translator):
    """--allow-origin admitted WebSockets only: fetch() from the allowed site failed its CORS
    preflight (405) and could not read responses."""
    cfg = ServeConfig(max_len=MAX_LEN, allowed_origins=("https://app.example.com",), api_key="k")
    with ServerThread(create_app(translator, cfg)) as srv:
        pre = httpx.options(srv.url("/v1/translate"), timeout=30, headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "Authorization" in pre.headers["access-control-allow-headers"]
        r = httpx.post(srv.url("/v1/translate"), json={"text": "abc"}, timeout=30,
                       headers={"Origin": "https://app.example.com", "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = httpx.post(srv.url("/v1/translate"), json={"text": "abc"}, timeout=30, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # not a cross-origin call
        r = httpx.options(srv.url("/v1/translate"), timeout=30, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403


def test_a_percent_encoded_key_name_is_redacted_too():
    f = _RedactApiKey()
    rec = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", "/v1/status?api%5Fkey=s3cret&API_K%65Y=x2", "1.1", 200), None)
    assert f.filter(rec) and "s3cret" not in rec.getMessage() and "x2" not in rec.getMessage()


def _read_until_closed(s: socket.socket, limit: float) -> tuple:
    """(bytes read, seconds) until the server closes the connection or `limit` passes."""
    t0, reply = time.monotonic(), b""
    s.settimeout(limit)
    try:
        while True:
            part = s.recv(65536)
            if not part:
                break
            reply += part
    except socket.timeout:
        pass
    return reply, time.monotonic() - t0


def test_connections_that_never_send_a_whole_head_are_closed(translator):
    """uvicorn has no deadline for a request's head: silent or trickling connections were held for
    ever (enough of them fill limit_concurrency, and every new client gets 503)."""
    cfg = ServeConfig(max_len=MAX_LEN, header_timeout=0.5)
    with ServerThread(create_app(translator, cfg)) as srv:
        addr = ("127.0.0.1", srv.port)
        with socket.create_connection(addr) as silent, socket.create_connection(addr) as partial:
            partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: never ends
            reply, took = _read_until_closed(silent, 10)
            assert reply == b"" and took < 5  # closed with nothing said: nothing was asked
            reply, took = _read_until_closed(partial, 10)
            assert reply.startswith(b"HTTP/1.1 408") and b"did not come in time" in reply and took < 5
        # Kept alive: a request in time is answered; the next head has its own deadline.
        with socket.create_connection(addr) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(0.3)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            reply, took = _read_until_closed(s, 10)
            assert reply.startswith(b"HTTP/1.1 200") and reply.count(b"HTTP/1.1 408") == 1 and took < 5
        # A WebSocket and an HTTP request that outlast the deadline are not cut by it.

        async def main():
            async with connect(srv.ws_url()) as ws:
                await asyncio.sleep(1.2)
                await ws.send(json.dumps({"type": "source", "text": "abc"}))
                await ws.send(json.dumps({"type": "end"}))
                while (await recv(ws))["type"] != "done":
                    pass
        run(main())
        with socket.create_connection(addr) as s:  # its body comes slowly, within send_timeout
            s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 15\r\nConnection: close\r\n\r\n{\"text\":")
            time.sleep(1.2)
            s.sendall(b" \"abc\"}")
            reply, _ = _read_until_closed(s, 20)
            assert reply.startswith(b"HTTP/1.1 200") and b"\"text\"" in reply, reply[:300]
        # Pipelined: the second request's head comes with the first; its body later than the
        # deadline armed when the first response ended (the second's cycle had already begun).
        with socket.create_connection(addr) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                      b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 15\r\nConnection: close\r\n\r\n{\"text\":")
            time.sleep(1.2)
            s.sendall(b" \"abc\"}")
            reply, _ = _read_until_closed(s, 20)
            assert reply.count(b"HTTP/1.1 200") == 2 and b"408" not in reply, reply[:600]
    with pytest.raises(ConfigError, match="header_timeout"):
        ServeConfig(header_timeout=0).validate()


def test_a_request_answered_before_its_body_came_gets_no_408_after_its_answer(translator):
    """The guard answers 403 (or 401 / 413) without reading the body; the body still coming after
    that answer counted as "part of a head", so the head deadline then wrote a second, unasked
    response: 408 "the request's headers did not come in time"."""
    cfg = ServeConfig(max_len=MAX_LEN, header_timeout=0.5)
    with ServerThread(create_app(translator, cfg)) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: rebound.example\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 30\r\n\r\n{\"text\":")
            time.sleep(0.2)
            s.sendall(b" \"ab")  # more of the body, after the answer
            reply, took = _read_until_closed(s, 10)
        assert reply.startswith(b"HTTP/1.1 403") and b"forbidden_host" in reply, reply[:300]
        assert b"408" not in reply and took < 5, reply
