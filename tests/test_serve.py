"""`qrnn-deploy serve` against real servers on free loopback ports: the WebSocket protocol with a
real client (the `websockets` package), HTTP / SSE, access control, every limit and malformed
input, 50 concurrent streams, disconnects freeing state, draining (in-process and by SIGTERM).

The bundle is a small random seq2seq model (like tests/test_runtime.py's) whose translations vary
in length and content, so "the same tokens as the runtime" is a real check.
"""

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNSeq2Seq
from translators import random_translator
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.serve import ServeConfig, create_app
from qrnn_deploy.serve.metrics import Histogram, ServerMetrics
from qrnn_deploy.serve.testing import ServerThread
from qrnn_deploy.vocab import BOS, EOS, CharVocab

REPO = Path(__file__).resolve().parents[1]
VOCAB = CharVocab.build(["abcdefghijklmnop "])
MAX_LEN = 25
SOURCES = ["abc def gh", "hello", "a", "pop mop", "ijkl mnop abc", "dead beef", "gag", "ponm lkji hgfe"]


def make_model(seed: int = 0) -> QRNNSeq2Seq:
    """A random translator whose outputs depend on the source (see translators.py)."""
    return random_translator(len(VOCAB), len(VOCAB), seed)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "bundle"
    export_bundle(make_model(), out, fo_pool="portable", verify=False, vocab=VOCAB)
    return out


@pytest.fixture(scope="module")
def translator(bundle_dir):
    return load_bundle(bundle_dir, threads=1).translator()


@pytest.fixture(scope="module")
def expected(translator):
    """Direct runtime translations (greedy and beam 3), the reference for every server answer."""
    out = {(s, 1): translator.translate(s, max_len=MAX_LEN) for s in SOURCES}
    out.update({(s, 3): translator.translate(s, beam=3, max_len=MAX_LEN) for s in SOURCES})
    assert len({out[(s, 1)] for s in SOURCES}) >= 4  # the model's outputs really vary
    return out


@pytest.fixture(scope="module")
def server(translator):
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN, max_streams=80))) as srv:
        yield srv


class SlowTranslator:
    """The real translator with a delay in every decoder step, so a test can act mid-decoding."""

    def __init__(self, tr, delay: float):
        self.tr, self.delay = tr, delay

    def stream(self):
        return self.tr.stream()

    def token_text(self, t):
        return self.tr.token_text(t)

    def decode_batch(self):
        batch, delay = self.tr.decode_batch(), self.delay

        class Slow:
            def step(self, decoders):
                time.sleep(delay)
                return batch.step(decoders)

        return Slow()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def recv(ws):
    return json.loads(await ws.recv())


async def translate_ws(ws, pieces, **end):
    for p in pieces:
        await ws.send(json.dumps({"type": "source", "text": p}))
    await ws.send(json.dumps({"type": "end", **end}))
    tokens, n = [], 0  # message texts; tokens counted by ids
    while True:
        m = await recv(ws)
        if m["type"] == "token":
            assert m["index"] == n and len(m["ids"]) >= 1
            n += len(m["ids"])
            tokens.append(m["text"])
        elif m["type"] == "done":
            assert m["tokens"] == n
            return tokens, m
        else:
            raise AssertionError(f"unexpected message {m}")


def pieces_of(s: str, n: int = 3) -> list:
    k = max(1, len(s) // n)
    return [s[i:i + k] for i in range(0, len(s), k)]


def metric(text: str, name: str) -> float:
    """The value of an unlabelled sample `name` in a Prometheus exposition."""
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


# -- the WebSocket protocol ------------------------------------------------------------------------

def test_stream_in_pieces_equals_runtime(server, expected):
    async def main():
        async with connect(server.ws_url()) as ws:
            for s in SOURCES:  # many sentences on one connection
                tokens, done = await translate_ws(ws, pieces_of(s))
                assert done["text"] == "".join(tokens) == expected[(s, 1)]
                assert done["source_chars"] == len(s)
                assert done["first_token_ms"] is None or 0 <= done["first_token_ms"] <= done["decode_ms"]
            for s in SOURCES[:4]:
                tokens, done = await translate_ws(ws, pieces_of(s, 4), beam=3)
                assert done["text"] == "".join(tokens) == expected[(s, 3)] and done["beam"] == 3

    run(main())


def test_reset_ping_and_pipelined_sentences(server, expected):
    async def main():
        async with connect(server.ws_url()) as ws:
            await ws.send(json.dumps({"type": "source", "text": "zzzz qqq"}))
            await ws.send(json.dumps({"type": "reset"}))
            assert (await recv(ws)) == {"type": "reset"}
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws)) == {"type": "pong"}
            tokens, done = await translate_ws(ws, ["abc ", "def gh"])
            assert done["text"] == expected[("abc def gh", 1)]
            # two sentences sent back to back: the first's done comes before the second's tokens
            for s in SOURCES[:2]:
                await ws.send(json.dumps({"type": "source", "text": s}))
                await ws.send(json.dumps({"type": "end"}))
            texts, cur = [], ""
            while len(texts) < 2:
                m = await recv(ws)
                if m["type"] == "token":
                    cur += m["text"]
                else:
                    assert m["type"] == "done" and m["text"] == cur
                    texts.append(cur)
                    cur = ""
            assert texts == [expected[(s, 1)] for s in SOURCES[:2]]

    run(main())


def test_malformed_messages_keep_the_connection(server, expected):
    bad = [("{not json", "bad_json"), ("[1, 2]", "bad_message"), ('{"type": "sauce", "text": "a"}', "bad_type"),
           ('{"type": "source", "text": 5}', "bad_message"),
           ('{"type": "end", "beam": 99}', "bad_option"), ('{"type": "end", "max_len": 0}', "bad_option"),
           ('{"type": "end", "beam": "2"}', "bad_option"), (b"\xff\xfe\x00garbage", "bad_utf8"),
           ("[" * 20000 + "]" * 20000, "bad_json"), ('{"type": "end", "beam": "%s"}' % ("x" * 5000), "bad_option"),
           ('{"type": "%s"}' % ("y" * 5000), "bad_type")]

    async def main():
        async with connect(server.ws_url()) as ws:
            await ws.send(json.dumps({"type": "end"}))
            assert (await recv(ws))["code"] == "empty_source"
            await ws.send(json.dumps({"type": "source", "text": ""}))  # empty pieces only: still empty
            await ws.send(json.dumps({"type": "end"}))
            assert (await recv(ws))["code"] == "empty_source"
            await ws.send(json.dumps({"type": "source", "text": "abc "}))
            for frame, code in bad:
                await ws.send(frame)
                m = await recv(ws)
                assert m["type"] == "error" and m["code"] == code, (frame, m)
                assert 0 < len(m["message"]) < 400  # a client's value is not echoed whole
            # the sentence begun before the bad messages is intact; UTF-8 binary frames are read too
            await ws.send(json.dumps({"type": "source", "text": "def gh"}).encode())
            tokens, done = await translate_ws(ws, [])
            assert done["text"] == expected[("abc def gh", 1)]

    run(main())


def test_invalid_utf8_text_frame_closes_1007_and_frees_the_stream(translator):
    """A text frame that is not UTF-8 breaks the WebSocket protocol itself: the WebSocket layer
    closes with 1007 (binary frames get an error message instead, see above). It is logged as one
    warning line, not as an error with a traceback."""
    import logging

    from websockets.frames import Frame, Opcode

    class Keep(logging.Handler):
        records: list = []

        def emit(self, record):
            self.records.append(record)

    keep = Keep()
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        logging.getLogger("uvicorn.error").addHandler(keep)  # uvicorn's loggers do not propagate to the root

        async def main():
            async with connect(srv.ws_url()) as ws:
                ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"type": "source", "text": "\xff"}'))
                ws.send_data()
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1007

        run(main())
        assert wait_for(lambda: srv.state.streams_open == 0 and srv.state.engine.jobs_open == 0)
    logging.getLogger("uvicorn.error").removeHandler(keep)
    rec = [r for r in keep.records if "not UTF-8" in r.getMessage()]
    assert len(rec) == 1 and rec[0].levelno == logging.WARNING and rec[0].exc_info is None, keep.records
    assert not [r for r in keep.records if r.levelno >= logging.ERROR]


def test_unknown_characters_translate_like_the_runtime(server, translator):
    src = "Grüße, äöü! 漢字 abc"
    want = translator.translate(src, max_len=MAX_LEN)

    async def main():
        async with connect(server.ws_url()) as ws:
            _, done = await translate_ws(ws, [src[:5], src[5:]])
            assert done["text"] == want

    run(main())


# -- HTTP --------------------------------------------------------------------------------------

def test_http_endpoints(server, expected):
    with httpx.Client(base_url=server.url(""), timeout=30) as c:
        r = c.post("/v1/translate", json={"text": "pop mop"})
        assert r.status_code == 200
        d = r.json()
        assert d["text"] == "".join(d["pieces"]) == expected[("pop mop", 1)] and len(d["ids"]) == d["tokens"]
        r = c.post("/v1/translate", json={"text": "ijkl mnop abc", "beam": 3})
        assert r.json()["text"] == expected[("ijkl mnop abc", 3)]
        # server-sent events
        with c.stream("POST", "/v1/translate", json={"text": "dead beef", "stream": True}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = [b for b in r.read().decode().split("\n\n") if b]
        parsed = [(e.split("\n")[0][len("event: "):], json.loads(e.split("\n")[1][len("data: "):])) for e in events]
        assert [k for k, _ in parsed[:-1]] == ["token"] * (len(parsed) - 1) and parsed[-1][0] == "done"
        assert "".join(p["text"] for k, p in parsed[:-1]) == parsed[-1][1]["text"] == expected[("dead beef", 1)]
        assert sum(len(p["ids"]) for k, p in parsed[:-1]) == parsed[-1][1]["tokens"]
        # bad requests
        for body, code, status in [(b"{", "bad_json", 400), (b'{"text": 3}', "bad_message", 400),
                                   (b'{"text": ""}', "empty_source", 400), (b'{"text": "a", "beam": 0}', "bad_option", 400),
                                   (b'{"text": "a", "stream": "yes"}', "bad_option", 400),
                                   (b'\xff{"text": "a"}', "bad_utf8", 400),
                                   (b"[" * 30000 + b"]" * 30000, "bad_json", 400),
                                   (b'{"text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "bad_json", 400)]:
            r = c.post("/v1/translate", content=body, headers={"content-type": "application/json"})
            assert r.status_code == status and r.json()["error"]["code"] == code, (body, r.text)
        assert c.get("/v1/translate").status_code == 405
        h = c.get("/healthz")
        assert h.status_code == 200 and h.json()["status"] == "ok"
        m = c.get("/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        for name in ["qrnn_serve_streams_open", "qrnn_serve_tokens_total", "qrnn_serve_step_seconds_count",
                     "qrnn_serve_batch_size_count", "qrnn_serve_tokens_per_second"]:
            assert metric(m.text, name) >= 0
        assert metric(m.text, "qrnn_serve_tokens_total") > 0
        assert 'qrnn_serve_errors_total{kind="bad_json"}' in m.text
        spec = c.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.") and "/v1/translate" in spec["paths"]
        assert {"200", "400", "401", "413", "500", "503"} <= set(spec["paths"]["/v1/translate"]["post"]["responses"])
        page = c.get("/")
        assert page.status_code == 200 and "/v1/stream" in page.text and "<script" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # no external resources
        st = c.get("/v1/status").json()
        assert st["streams_open"] == 0 and st["sessions"] == 0 and st["limits"]["max_len"] == MAX_LEN


def test_api_key_guards_everything_but_health(translator, expected):
    app = create_app(translator, ServeConfig(max_len=MAX_LEN, api_key="s3cret"))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url(""), timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        # The page is a static file without secrets: it loads without the key and asks for it.
        page = c.get("/")
        assert page.status_code == 200 and 'id="keybox"' in page.text and "s3cret" not in page.text
        for path in ["/metrics", "/v1/status", "/openapi.json"]:
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert c.post("/v1/translate", json={"text": "gag"}).status_code == 401
        r = c.post("/v1/translate?api_key=s3cret", json={"text": "gag"})
        assert r.json()["text"] == expected[("gag", 1)]

        async def main():
            async with connect(srv.ws_url()) as ws:
                m = await recv(ws)
                assert m["code"] == "unauthorized"
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1008
            async with connect(srv.ws_url("/v1/stream?api_key=s3cret")) as ws:
                assert (await translate_ws(ws, ["gag"]))[1]["text"] == expected[("gag", 1)]
            async with connect(srv.ws_url(), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
                assert (await translate_ws(ws, ["g", "ag"]))[1]["text"] == expected[("gag", 1)]

        run(main())


# -- limits ------------------------------------------------------------------------------------

def test_message_and_source_limits(translator, expected):
    cfg = ServeConfig(max_len=MAX_LEN, max_message_bytes=200, max_source_chars=30)
    with ServerThread(create_app(translator, cfg)) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": "a" * 300}))
                m = await recv(ws)
                assert m["code"] == "too_large" and "200" in m["message"]
                await ws.send(json.dumps({"type": "source", "text": "ab" * 120}).encode())  # binary too
                assert (await recv(ws))["code"] == "too_large"
                await ws.send(json.dumps({"type": "source", "text": "a" * 20}))
                await ws.send(json.dumps({"type": "source", "text": "b" * 20}))
                m = await recv(ws)
                assert m["code"] == "source_too_long" and "30" in m["message"]
                # the over-long sentence was dropped; the connection goes on
                _, done = await translate_ws(ws, ["hel", "lo"])
                assert done["text"] == expected[("hello", 1)] and done["source_chars"] == 5
                # frames far over the limit are cut by the WebSocket layer (1009)
                await ws.send("x" * (2 << 20))
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1009

        run(main())
        with httpx.Client(base_url=srv.url(""), timeout=30) as c:
            r = c.post("/v1/translate", content=json.dumps({"text": "a" * 300}))
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
            r = c.post("/v1/translate", json={"text": "a" * 31})
            assert r.status_code == 400 and r.json()["error"]["code"] == "source_too_long"
            assert wait_for(lambda: srv.state.engine.jobs_open == 0)
            assert c.get("/v1/status").json()["sessions"] == 0


def test_max_streams_refuses_with_1013_and_503(translator, expected):
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN, max_streams=2))) as srv:
        async def main():
            a = await connect(srv.ws_url())
            b = await connect(srv.ws_url())
            await a.send(json.dumps({"type": "ping"}))
            assert (await recv(a))["type"] == "pong"  # both accepted
            async with connect(srv.ws_url()) as c:
                m = await recv(c)
                assert m["type"] == "error" and m["code"] == "busy" and "2" in m["message"]
                with pytest.raises(ConnectionClosed) as e:
                    await c.recv()
                assert e.value.rcvd.code == 1013
            async with httpx.AsyncClient(base_url=srv.url(""), timeout=30) as h:
                r = await h.post("/v1/translate", json={"text": "gag"})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "busy"
                await b.close()
                for _ in range(200):  # the slot is freed once the server sees the close
                    if srv.state.streams_open < 2:
                        break
                    await asyncio.sleep(0.01)
                r = await h.post("/v1/translate", json={"text": "gag"})
                assert r.status_code == 200 and r.json()["text"] == expected[("gag", 1)]
            assert (await translate_ws(a, ["gag"]))[1]["text"] == expected[("gag", 1)]
            await a.close()

        run(main())


def test_idle_timeout_closes_with_4408(translator):
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN, idle_timeout=0.3))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": "abc"}))
                t0 = time.monotonic()
                m = await recv(ws)
                assert m["code"] == "idle_timeout"
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 4408 and time.monotonic() - t0 >= 0.25

        run(main())
        assert wait_for(lambda: srv.state.engine.jobs_open == 0 and srv.state.streams_open == 0)
        assert wait_for(lambda: srv.state.metrics.sessions.value() == 0)


def test_client_that_stops_reading_is_dropped(translator):
    """A client that sends sentences and never reads fills its socket buffers; after send_timeout
    the server drops the connection and frees its stream slot and translations (before this, a
    stuck send kept the slot forever and the idle timeout never fired)."""
    cfg = ServeConfig(max_len=MAX_LEN, send_timeout=0.5, idle_timeout=60, max_queued_sentences=10_000)
    srv = ServerThread(create_app(translator, cfg))
    srv.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted sockets inherit it
    with srv:
        async def main():
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect((srv.host, srv.port))
            s.setblocking(False)
            async with connect(srv.ws_url(), sock=s, max_queue=1, ping_interval=None) as ws:
                ws.transport.pause_reading()
                sent, deadline = 0, time.monotonic() + 30
                try:  # until the server drops us (or our own sends block: the server stopped reading)
                    while time.monotonic() < deadline and not srv.state.metrics.errors.value(kind="send_timeout"):
                        await asyncio.wait_for(ws.send(json.dumps({"type": "source", "text": SOURCES[-1]})), 2)
                        await asyncio.wait_for(ws.send(json.dumps({"type": "end"})), 2)
                        sent += 1
                except (asyncio.TimeoutError, ConnectionClosed, OSError):
                    pass
                assert sent > 0
                assert wait_for(lambda: srv.state.streams_open == 0, 10)
                ws.transport.abort()

        run(main())
        assert srv.state.metrics.errors.value(kind="send_timeout") == 1
        assert wait_for(lambda: srv.state.engine.jobs_open == 0 and srv.state.metrics.sessions.value() == 0
                        and srv.state.metrics.decoding.value() == 0)


def test_dropping_sentences_whose_pumps_never_ran_frees_them(translator):
    """A connection dropped (send timeout, disconnect, reset) right after ending sentences
    cancels pump tasks that have not taken a first step; such a task never runs its body, so
    drop_all itself must close their translations (before, under load, one stayed open for good
    and CI caught it)."""
    from qrnn_deploy.serve import Engine
    from qrnn_deploy.serve.state import ServerState
    from qrnn_deploy.serve.ws import StreamConnection

    class Socket:  # never sent to: the pumps are cancelled before they run
        async def send_text(self, text):
            raise AssertionError("nothing is sent")

    async def main():
        cfg = ServeConfig(max_len=MAX_LEN).validate()
        metrics = ServerMetrics()
        e = Engine(translator, metrics)
        st = ServerState(e, cfg, metrics)
        e.start()
        try:
            conn = StreamConnection(Socket(), st)
            for text in SOURCES[:3]:
                await conn.handle({"type": "source", "text": text})
                await conn.handle({"type": "end"})
            assert e.jobs_open == 3 and len(conn.pumps) == 3
            assert not any(p.done() for p in conn.pumps)  # no pump has had a step yet
            await conn.drop_all()
            assert e.jobs_open == 0 and not conn.decoding()
            for _ in range(500):
                if metrics.sessions.value() == 0 and metrics.decoding.value() == 0:
                    break
                await asyncio.sleep(0.01)
            assert metrics.sessions.value() == 0 and metrics.decoding.value() == 0
        finally:
            e.stop()

    run(main())


def test_idle_timeout_waits_for_sentences_being_decoded(translator, expected):
    """Silence while an ended sentence is decoded is not idleness, even when the client has
    already started the next sentence's source."""
    src = _long_source(translator, SOURCES)
    cfg = ServeConfig(max_len=MAX_LEN, idle_timeout=0.25)
    with ServerThread(create_app(SlowTranslator(translator, 0.06), cfg)) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": src}))
                await ws.send(json.dumps({"type": "end"}))
                await ws.send(json.dumps({"type": "source", "text": "gag"}))  # the next one starts
                text = ""
                while (m := await recv(ws))["type"] == "token":
                    text += m["text"]
                assert m["type"] == "done" and m["text"] == text == translator.translate(src, max_len=MAX_LEN)
                assert m["decode_ms"] > 250  # longer than the idle timeout
                m = await recv(ws)  # then the half-sent sentence is idle: closed
                assert m["code"] == "idle_timeout"

        run(main())


# -- concurrency, disconnects, drain -----------------------------------------------------------------

def test_50_concurrent_streams_are_batched_and_correct(server, expected):
    hist = server.state.metrics.batch_size
    single0, total0 = hist.bucket_counts()[0], hist.count

    async def client(i):
        s = SOURCES[i % len(SOURCES)]
        async with connect(server.ws_url()) as ws:
            tokens, done = await translate_ws(ws, pieces_of(s, 2 + i % 3))
            return s, "".join(tokens), done["text"]

    async def main():
        return await asyncio.gather(*(client(i) for i in range(50)))

    for s, streamed, text in run(main()):
        assert streamed == text == expected[(s, 1)]
    # batching happened: some decoder calls stepped several translations at once
    single, total = hist.bucket_counts()[0] - single0, hist.count - total0
    assert total > 0 and single < total, "every decoder call stepped one translation: no batching"
    assert wait_for(lambda: server.state.metrics.sessions.value() == 0)


def test_split_batches_with_beams_match_runtime(translator, expected):
    """Beam 3 for 12 streams at once with at most 4 rows per decoder call: the engine splits the
    batch into several runtime calls and every stream still gets the runtime's own translation."""
    cfg = ServeConfig(max_len=MAX_LEN, beam=3, max_beam=3, max_batch_rows=4)
    with ServerThread(create_app(translator, cfg)) as srv:
        async def one(i):
            s = SOURCES[i % len(SOURCES)]
            async with connect(srv.ws_url()) as ws:
                tokens, done = await translate_ws(ws, pieces_of(s))
                return s, "".join(tokens), done["text"]

        async def main():
            return await asyncio.gather(*(one(i) for i in range(12)))

        for s, streamed, text in run(main()):
            assert streamed == text == expected[(s, 3)]
        rows = srv.state.metrics.batch_rows.bucket_counts()
        bounds = srv.state.metrics.batch_rows.bounds
        assert sum(rows) > 0 and all(c == 0 for b, c in zip(bounds, rows) if b > 4)


class FailingTranslator(SlowTranslator):
    """Decoder steps fail after `ok` successful ones (a runtime error mid-translation)."""

    def __init__(self, tr, ok: int):
        super().__init__(tr, 0.0)
        self.ok = ok

    def decode_batch(self):
        batch, parent = self.tr.decode_batch(), self

        class Failing:
            def step(self, decoders):
                if parent.ok <= 0:
                    from qrnn_deploy.errors import StreamError

                    raise StreamError("graph 'decoder' failed: simulated")
                parent.ok -= 1
                return batch.step(decoders)

        return Failing()


def test_runtime_failure_is_an_error_message_and_frees_state(translator, expected):
    src = _long_source(translator, SOURCES)
    tr = FailingTranslator(translator, ok=2)
    with ServerThread(create_app(tr, ServeConfig(max_len=MAX_LEN))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": src}))
                await ws.send(json.dumps({"type": "end"}))
                kinds = []
                while True:
                    m = await recv(ws)
                    kinds.append(m["type"])
                    if m["type"] == "error":
                        assert m["code"] == "translate_failed" and "simulated" in m["message"]
                        break
                assert kinds[-1] == "error" and "done" not in kinds
                tr.ok = 10 ** 6  # the runtime recovers: the same connection translates again
                _, done = await translate_ws(ws, ["gag"])
                assert done["text"] == expected[("gag", 1)]

        run(main())
        assert wait_for(lambda: srv.state.metrics.sessions.value() == 0)
        assert srv.state.metrics.translations.value(outcome="error") == 1


class GatedTranslator(SlowTranslator):
    """Holds the engine's encoder thread inside the first stream() until `gate` is set, so the
    pieces posted meanwhile queue up; records the texts of every feed_batch call."""

    def __init__(self, tr):
        import threading

        super().__init__(tr, 0.0)
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def stream(self):
        if not self.gate.is_set():
            self.entered.set()
            self.gate.wait(10)
        return self.tr.stream()

    def feed_batch(self, items):
        self.calls.append([text for _, text in items])
        return self.tr.feed_batch(items)


async def _hold_encoder(engine, model: GatedTranslator, text: str):
    """Opens a job and feeds `text`; returns (job, future) once the encoder thread is held."""
    job = engine.open()
    fut = job.feed_nowait(text)
    for _ in range(1000):
        if model.entered.is_set():
            break
        await asyncio.sleep(0.01)
    return job, fut


async def _finish(jobs) -> list:
    """Ends each job (greedy) and returns its done text, in order."""
    texts = []
    for j in jobs:
        j.end(1, MAX_LEN, 1.0)
        async for ev in j.results():
            if ev["type"] == "done":
                texts.append(ev["text"])
        j.close()
    return texts


def test_engine_encodes_pieces_of_many_translations_together(translator):
    """Source pieces of different translations that wait together are encoded by one
    Translator.feed_batch call, with the same translations as alone."""
    from qrnn_deploy.serve import Engine

    model = GatedTranslator(translator)
    sources = ["abcd", "efgh", "ijkl", "mnop", "ab"]

    async def main():
        e = Engine(model)
        e.start()
        try:
            first, f0 = await _hold_encoder(e, model, "dead beef")
            jobs = [e.open() for _ in sources]
            futs = [asyncio.ensure_future(j.feed(s)) for j, s in zip(jobs, sources)]
            await asyncio.sleep(0.05)  # let the futures post their commands
            model.gate.set()
            assert await asyncio.gather(f0, *futs) == [9] + [len(s) for s in sources]
            return await _finish([first] + jobs)
        finally:
            e.stop()

    texts = run(main())
    assert [len(c) for c in model.calls] == [5]
    assert texts == [translator.translate(s, max_len=MAX_LEN) for s in ["dead beef"] + sources]


def test_engine_joins_waiting_pieces_of_one_translation(translator):
    """Pieces of one translation that wait together are encoded as one text (and pieces of
    several translations in one feed_batch call); every piece's future gets the source length
    after all of them, and the translations equal the runtime's on the joined sources."""
    from qrnn_deploy.serve import Engine

    model = GatedTranslator(translator)

    async def main():
        e = Engine(model)
        e.start()
        try:
            first, f0 = await _hold_encoder(e, model, "gag")
            a, b = e.open(), e.open()
            futs = [a.feed_nowait("ab"), b.feed_nowait("fe"), a.feed_nowait("cd"), a.feed_nowait("e"),
                    b.feed_nowait("ed")]
            model.gate.set()
            assert await asyncio.gather(f0, *futs) == [3, 5, 4, 5, 5, 4]
            return await _finish([first, a, b])
        finally:
            e.stop()

    texts = run(main())
    assert model.calls == [["abcde", "feed"]]
    assert texts == [translator.translate(s, max_len=MAX_LEN) for s in ["gag", "abcde", "feed"]]


class _TakingLoop:
    """An event loop stand-in for Outbox: counts wake-ups and takes the outbox at once."""

    def __init__(self):
        self.wakes = 0

    def is_closed(self):
        return False

    def call_soon_threadsafe(self, fn):
        self.wakes += 1
        fn.__self__._wake_pending = False


def test_flush_interval_grows_with_the_streams_being_decoded():
    """Tokens of a short step wait for the next one while the flush interval allows: 1 ms with
    one stream, 1/8 ms more per stream under load up to flush_max_ms; first tokens never wait."""
    from qrnn_deploy.serve.metrics import ServerMetrics
    from qrnn_deploy.serve.outbox import Outbox

    def woke(box, streams, since_wake, step, urgent=False):
        box._last_wake = time.perf_counter() - since_wake
        before = box.loop.wakes
        box.put([("job", {"type": "token"})], urgent, streams, step)
        return box.loop.wakes > before

    box = Outbox(ServerMetrics(), flush_ms=1.0, flush_max_ms=4.0)
    box.loop = _TakingLoop()
    assert not woke(box, 1, 0.0002, 0.0002)  # 0.4 ms < 1 ms: held for the next step
    assert woke(box, 1, 0.0009, 0.0002)  # the next step would end after 1 ms
    assert not woke(box, 32, 0.0025, 0.001)  # 32 streams: 4 ms
    assert woke(box, 32, 0.0031, 0.001)
    assert not woke(box, 16, 0.0012, 0.0005)  # 16 streams: 2 ms
    assert woke(box, 16, 0.0016, 0.0005)
    assert woke(box, 500, 0.0031, 0.001)  # never beyond flush_max_ms
    assert woke(box, 32, 0.0, 0.0001, urgent=True)  # first tokens, done, errors: at once
    fixed = Outbox(ServerMetrics(), flush_ms=1.0, flush_max_ms=1.0)  # --flush-max-ms = --flush-ms: no growth
    fixed.loop = _TakingLoop()
    assert woke(fixed, 32, 0.0009, 0.0002)
    with pytest.raises(Exception, match="flush_max_ms must be in"):
        ServeConfig(flush_ms=2.0, flush_max_ms=1.0).validate()
    assert ServeConfig(flush_ms=10.0).validate().flush_limit_ms() == 10.0


def test_outbox_results_put_before_the_loop_is_set_still_wake_it_later():
    """A put with no event loop yet left a wake-up marked pending for ever: no later result woke
    the loop."""
    from qrnn_deploy.serve.metrics import ServerMetrics
    from qrnn_deploy.serve.outbox import Outbox

    box = Outbox(ServerMetrics())
    box.put([("job", {"type": "token"})], urgent=True)
    box.loop = _TakingLoop()
    box.put([("job", {"type": "done"})], urgent=True)
    assert box.loop.wakes == 1

class FailingSource(SlowTranslator):
    """Source pieces containing '!' fail to encode (a runtime error while encoding)."""

    def stream(self):
        ts = self.tr.stream()

        class Failing:
            def feed(self, text):
                if "!" in text:
                    from qrnn_deploy.errors import StreamError

                    raise StreamError("graph 'encoder' failed: simulated")
                return ts.feed(text)

            def __getattr__(self, name):
                return getattr(ts, name)

        return Failing()


def test_encoding_failure_drops_the_sentence_and_keeps_the_connection(translator, expected):
    with ServerThread(create_app(FailingSource(translator, 0.0), ServeConfig(max_len=MAX_LEN))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                # a failing piece while the source arrives: source_failed, the sentence dropped
                await ws.send(json.dumps({"type": "source", "text": "ga"}))
                await ws.send(json.dumps({"type": "source", "text": "g!"}))
                await ws.send(json.dumps({"type": "ping"}))
                got = [await recv(ws), await recv(ws)]
                err = [m for m in got if m["type"] == "error"]
                assert sorted(m["type"] for m in got) == ["error", "pong"]
                assert err[0]["code"] == "source_failed" and "simulated" in err[0]["message"]
                # a failing piece right before "end": either the failure is known before "end"
                # (source_failed, then "end" finds no source: empty_source, in either order) or
                # the ended sentence fails as a whole (translate_failed)
                await ws.send(json.dumps({"type": "source", "text": "!"}))
                await ws.send(json.dumps({"type": "end"}))
                codes = set()
                while codes != {"translate_failed"} and codes != {"source_failed", "empty_source"}:
                    m = await recv(ws)
                    assert m["type"] == "error" and m["code"] in ("source_failed", "translate_failed",
                                                                  "empty_source"), m
                    codes.add(m["code"])
                # the same connection translates again
                _, done = await translate_ws(ws, ["ga", "g"])
                assert done["text"] == expected[("gag", 1)]

        run(main())
        assert wait_for(lambda: srv.state.metrics.sessions.value() == 0)
        # over HTTP the runtime's failure is the server's: 500, not 400
        r = httpx.post(srv.url("/v1/translate"), json={"text": "g!g"}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["code"] == "translate_failed", r.text
        assert httpx.post(srv.url("/v1/translate"), json={"text": "gag"}, timeout=30).json()["text"] == \
            expected[("gag", 1)]


def _long_source(translator, candidates):
    return max(candidates, key=lambda s: len(translator.translate(s, max_len=MAX_LEN)))


def test_disconnect_mid_stream_frees_state(translator):
    src = _long_source(translator, SOURCES)
    assert len(translator.translate(src, max_len=MAX_LEN)) >= 6
    app = create_app(SlowTranslator(translator, 0.1), ServeConfig(max_len=MAX_LEN))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url(""), timeout=30) as c:
        async def main():
            # 1. gone while its source is arriving: the encoder state is held, then freed
            ws = await connect(srv.ws_url())
            await ws.send(json.dumps({"type": "source", "text": src}))
            await ws.send(json.dumps({"type": "ping"}))
            assert (await recv(ws))["type"] == "pong"  # the piece is encoded by now
            assert c.get("/v1/status").json()["sessions"] == 1
            ws.transport.abort()  # no close handshake: like a dropped network
            # 2. gone in the middle of decoding
            ws = await connect(srv.ws_url())
            await ws.send(json.dumps({"type": "source", "text": src}))
            await ws.send(json.dumps({"type": "end"}))
            assert (await recv(ws))["type"] == "token"
            assert c.get("/v1/status").json()["decoding"] == 1
            await ws.close()

        run(main())
        assert wait_for(lambda: c.get("/v1/status").json()["sessions"] == 0)
        st = c.get("/v1/status").json()
        assert st["decoding"] == 0 and st["translations_open"] == 0 and st["streams_open"] == 0
        text = c.get("/metrics").text
        assert metric(text, "qrnn_serve_sessions") == 0
        assert 'qrnn_serve_translations_total{outcome="cancelled"} 1' in text
        assert 'qrnn_serve_translations_total{outcome="abandoned"} 1' in text


def test_reset_stops_a_sentence_being_decoded(translator, expected):
    src = _long_source(translator, SOURCES)
    with ServerThread(create_app(SlowTranslator(translator, 0.08), ServeConfig(max_len=MAX_LEN))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": src}))
                await ws.send(json.dumps({"type": "end"}))
                assert (await recv(ws))["type"] == "token"
                await ws.send(json.dumps({"type": "reset"}))
                while (m := await recv(ws))["type"] == "token":
                    pass  # tokens already on their way before the reset
                assert m == {"type": "reset"}
                assert wait_for(lambda: srv.state.metrics.decoding.value() == 0, 2)
                _, done = await translate_ws(ws, ["gag"])  # nothing of the old sentence follows
                assert done["text"] == expected[("gag", 1)]

        run(main())
        assert wait_for(lambda: srv.state.metrics.sessions.value() == 0)
        assert srv.state.metrics.translations.value(outcome="cancelled") == 1


def test_queued_sentences_limit_and_sse_disconnect(translator, expected):
    """A client that ends sentences without reading their tokens is stopped at
    max_queued_sentences; an SSE client that leaves mid-stream frees its state."""
    src = _long_source(translator, SOURCES)
    cfg = ServeConfig(max_len=MAX_LEN, max_queued_sentences=2)
    with ServerThread(create_app(SlowTranslator(translator, 0.05), cfg)) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                for _ in range(3):
                    await ws.send(json.dumps({"type": "source", "text": src}))
                    await ws.send(json.dumps({"type": "end"}))
                texts, cur, errors = [], "", []
                while len(texts) < 2:
                    m = await recv(ws)
                    if m["type"] == "token":
                        cur += m["text"]
                    elif m["type"] == "done":
                        assert m["text"] == cur
                        texts.append(cur)
                        cur = ""
                    else:
                        errors.append(m["code"])
                assert errors == ["too_many_sentences"]
                assert texts == [expected[(src, 1)]] * 2
                _, done = await translate_ws(ws, ["gag"])  # usable again once read
                assert done["text"] == expected[("gag", 1)]

        run(main())
    # steps slow enough that the sentence is surely still decoding when the client leaves
    with ServerThread(create_app(SlowTranslator(translator, 0.15), cfg)) as srv:
        with httpx.Client(base_url=srv.url(""), timeout=30) as c:
            with c.stream("POST", "/v1/translate", json={"text": src, "stream": True}) as r:
                first = next(r.iter_lines())
                assert first == "event: token"
                assert c.get("/v1/status").json()["decoding"] == 1
            assert wait_for(lambda: c.get("/v1/status").json()["sessions"] == 0)
            st = c.get("/v1/status").json()
            assert st["translations_open"] == 0 and st["streams_open"] == 0


def test_drain_finishes_streams_in_flight_then_stops(translator):
    src = _long_source(translator, SOURCES)
    want = translator.translate(src, max_len=MAX_LEN)
    srv = ServerThread(create_app(SlowTranslator(translator, 0.05), ServeConfig(max_len=MAX_LEN))).start()
    try:
        async def main():
            ws = await connect(srv.ws_url())
            await ws.send(json.dumps({"type": "source", "text": src}))
            await ws.send(json.dumps({"type": "end"}))
            first = await recv(ws)
            assert first["type"] == "token"
            srv.drain()
            await asyncio.sleep(0.05)
            async with connect(srv.ws_url()) as late:  # refused while draining
                assert (await recv(late))["code"] == "draining"
            async with httpx.AsyncClient(base_url=srv.url(""), timeout=30) as h:
                assert (await h.get("/healthz")).status_code == 503
            tokens = [first["text"]]
            while True:
                m = await recv(ws)
                if m["type"] == "done":
                    break
                tokens.append(m["text"])
            assert "".join(tokens) == m["text"] == want  # the stream in flight completed
            with pytest.raises(ConnectionClosed):
                await ws.recv()  # then the server shut down

        run(main())
        srv.join(10)
        assert not srv.thread.is_alive()
        assert srv.server.drained is True
    finally:
        srv.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_drains_on_sigterm(bundle_dir, translator):
    """`qrnn-deploy serve` in a subprocess: SIGTERM with a sentence in flight lets it finish, then
    the process exits 0."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "qrnn_deploy", "serve", str(bundle_dir), "--port", str(port),
                             "--max-len", str(MAX_LEN), "--threads", "1", "--log-level", "warning"],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _healthy(base), timeout=60), proc.stdout.read1().decode() if proc.poll() else ""

        async def main():
            async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
                await ws.send(json.dumps({"type": "source", "text": "abc "}))
                await ws.send(json.dumps({"type": "ping"}))
                assert (await recv(ws))["type"] == "pong"
                proc.send_signal(signal.SIGTERM)  # the sentence is in flight: its source is half sent
                await asyncio.sleep(0.3)
                assert proc.poll() is None
                _, done = await translate_ws(ws, ["def gh"])
                return done["text"]

        assert run(main()) == translator.translate("abc def gh", max_len=MAX_LEN)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _healthy(base) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


# -- pieces ------------------------------------------------------------------------------------

def test_metrics_exposition_format():
    h = Histogram("x_seconds", "help", [0.1, 1])
    for v in (0.05, 0.5, 5):
        h.observe(v)
    assert h.lines()[2:] == ['x_seconds_bucket{le="0.1"} 1', 'x_seconds_bucket{le="1"} 2',
                             'x_seconds_bucket{le="+Inf"} 3', "x_seconds_sum 5.55", "x_seconds_count 3"]
    m = ServerMetrics()
    m.errors.inc(kind='we"ird')
    text = m.exposition()
    assert 'qrnn_serve_errors_total{kind="we\\"ird"} 1' in text
    assert text.count("# TYPE") == text.count("# HELP") >= 10


def test_serve_imports_no_torch(bundle_dir):
    """Arrows: serve -> runtime only. Loading the server and translating never imports torch."""
    code = ("import sys, qrnn_deploy.serve, qrnn_deploy.serve.app; from qrnn_deploy.runtime import load_bundle; "
            f"tr = load_bundle({str(bundle_dir)!r}).translator(); qrnn_deploy.serve.create_app(tr); "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('qrnn_deploy.nn', 'qrnn_deploy.export'))]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# -- the web page in headless Chromium ---------------------------------------------------------------

CHROMIUM = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if os.path.exists(p)), None)


class CDP:
    """A minimal Chrome DevTools Protocol client over the `websockets` package."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method, **params):
        self.n += 1
        await self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            m = json.loads(await self.ws.recv())
            if m.get("id") == self.n:
                if "error" in m:
                    raise AssertionError(f"{method}: {m['error']}")
                return m["result"]

    async def eval(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")

    async def open_translator_page(self, url):
        """Loads the server's page at `url`, waits until it is connected, focuses the source box."""
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.until("document.getElementById('conn') && document.getElementById('conn').className === 'ok'")
        await self.eval("document.getElementById('src').focus()")

    async def until(self, expr, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.eval(expr):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}")


@contextlib.contextmanager
def headless_chromium(tmp_path):
    """Debian's headless Chromium on a fresh profile; yields the DevTools WebSocket URL of its page."""
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-component-update", "--no-first-run",
                             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                             "--window-size=1280,900", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        assert wait_for(lambda: port_file.exists() and port_file.read_text().strip(), timeout=60), \
            "chromium did not open its DevTools port"
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        yield next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_web_page_in_headless_chromium(translator, tmp_path):
    """Type a sentence on the page, see the tokens arrive one by one with their latency, screenshot."""
    src = _long_source(translator, SOURCES)
    want = translator.translate(src, max_len=MAX_LEN)
    app = create_app(SlowTranslator(translator, 0.02), ServeConfig(max_len=MAX_LEN))
    with ServerThread(app) as srv, headless_chromium(tmp_path) as page_ws:

        async def main():
            async with connect(page_ws, max_size=None) as ws:
                cdp = CDP(ws)
                await cdp.open_translator_page(srv.url("/"))
                await cdp.eval("window.arrivals = []; new MutationObserver(() => window.arrivals.push("
                               "[performance.now(), document.getElementById('out').children.length])).observe("
                               "document.getElementById('out'), {childList: true})")
                for piece in pieces_of(src, 3):  # typed in pieces, each sent as a source message
                    await cdp.call("Input.insertText", text=piece)
                    await asyncio.sleep(0.05)
                assert wait_for(lambda: srv.state.metrics.sessions.value() == 1)  # encoded while typing
                for kind in ("keyDown", "keyUp"):
                    await cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                                   windowsVirtualKeyCode=13)
                await cdp.until("document.body.dataset.done === '1'")
                out = await cdp.eval("document.getElementById('out').textContent")
                spans = await cdp.eval("[...document.querySelectorAll('#out span.tok')].map(s => s.title)")
                bars = await cdp.eval("document.querySelectorAll('#bars div').length")
                first = await cdp.eval("document.getElementById('s-first').textContent")
                ntok = await cdp.eval("document.body.dataset.tokens")
                arrivals = await cdp.eval("window.arrivals")
                hist = await cdp.eval("document.querySelector('#hist tr td:nth-child(2)').textContent")
                shot = await cdp.call("Page.captureScreenshot", format="png")
                return out, spans, bars, first, ntok, arrivals, hist, shot["data"]

        out, spans, bars, first, ntok, arrivals, hist, png = run(main())
    assert out == hist == want
    assert len(spans) == bars >= 3 and int(ntok) == len(want) and all(" ms after the previous" in t for t in spans)
    assert float(first) > 0
    # tokens arrived over time, one decoder step (>= 20 ms here) apart, not all at once
    assert len({round(t) for t, _ in arrivals}) >= 3 and arrivals[-1][0] - arrivals[0][0] >= 40
    import base64

    art = REPO / "test-artifacts"
    art.mkdir(exist_ok=True)
    (art / "serve_page.png").write_bytes(base64.b64decode(png))
    assert (art / "serve_page.png").stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_web_page_queues_sentences_keeps_text_fits_phones_and_asks_for_the_key(translator, tmp_path):
    """Found by a review of the page in headless Chromium: a second sentence ended while the first
    was decoding showed the first's translation under the second's source; a refused sentence
    lost its text; the page scrolled sideways at 375 px; with --api-key the page itself was a
    401 with no way to enter the key."""
    src = _long_source(translator, SOURCES)
    want_long, want_short = translator.translate(src, max_len=MAX_LEN), translator.translate("abc", max_len=MAX_LEN)
    plain = create_app(SlowTranslator(translator, 0.01), ServeConfig(max_len=MAX_LEN, max_message_bytes=1024,
                                                                       max_source_chars=300))
    keyed = create_app(translator, ServeConfig(max_len=MAX_LEN, api_key="s3cret"))
    failing_tr = FailingTranslator(translator, ok=0)
    failing = create_app(failing_tr, ServeConfig(max_len=MAX_LEN))
    with ServerThread(plain) as srv, ServerThread(keyed) as ksrv, ServerThread(failing) as fsrv, \
            headless_chromium(tmp_path) as page_ws:

        async def enter(cdp):
            for kind in ("keyDown", "keyUp"):
                await cdp.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                               windowsVirtualKeyCode=13)

        async def main():
            async with connect(page_ws, max_size=None) as ws:
                cdp = CDP(ws)
                await cdp.open_translator_page(srv.url("/"))
                # Two sentences, the second ended while the first is still being decoded.
                await cdp.call("Input.insertText", text=src)
                await enter(cdp)
                await cdp.until("document.getElementById('out').textContent.length > 0")
                await cdp.call("Input.insertText", text="abc")
                await enter(cdp)
                await cdp.until("document.body.dataset.done === '2'")
                rows = await cdp.eval("[...document.querySelectorAll('#hist tr')].map(r => "
                                      "[r.children[0].textContent, r.children[1].textContent])")
                # A sentence the page cannot send keeps its text.
                await cdp.eval("document.getElementById('beam').value = '0'")
                await cdp.call("Input.insertText", text="abc")
                await enter(cdp)
                kept = await cdp.eval("[document.getElementById('src').value, "
                                      "document.getElementById('err').textContent]")
                # Characters are counted as the server counts them (code points, not UTF-16 units),
                # and pieces fit --max-message-bytes even where JSON escapes them to 6 bytes.
                await cdp.eval("document.getElementById('beam').value = ''")
                await cdp.eval("document.getElementById('clear').click()")
                await cdp.call("Input.insertText", text="ab" + "\U0001F600" * 200)
                emoji_err = await cdp.eval("document.getElementById('err').textContent")
                await cdp.eval("document.getElementById('clear').click()")
                before = srv.state.metrics.errors.value(kind="too_large")
                await cdp.call("Input.insertText", text="\u0001" * 250)
                await asyncio.sleep(1.0)
                too_large = srv.state.metrics.errors.value(kind="too_large") - before
                await cdp.eval("document.getElementById('clear').click()")
                # A phone-sized screen: no sideways scrolling.
                await cdp.call("Emulation.setDeviceMetricsOverride", width=375, height=800, deviceScaleFactor=1,
                               mobile=True)
                await asyncio.sleep(0.3)
                width = await cdp.eval("document.documentElement.scrollWidth")
                await cdp.call("Emulation.clearDeviceMetricsOverride")
                # A translation that fails on the server leaves the queue and gives its text back;
                # the next one is shown under its own source.
                await cdp.open_translator_page(fsrv.url("/"))
                await cdp.call("Input.insertText", text="abc")
                await enter(cdp)
                await cdp.until("document.getElementById('err').textContent.includes('simulated')")
                failed_box = await cdp.eval("document.getElementById('src').value")
                failing_tr.ok = 10 ** 6
                await enter(cdp)
                await cdp.until("document.body.dataset.done === '1'")
                failed_rows = await cdp.eval("[...document.querySelectorAll('#hist tr')].map(r => "
                                             "[r.children[0].textContent, r.children[1].textContent])")
                # A server with a key: the page loads, asks, connects with the key typed in.
                await cdp.call("Page.navigate", url=ksrv.url("/"))
                await cdp.until("document.getElementById('keybox').classList.contains('show')")
                await cdp.eval("document.getElementById('key').value = 's3cret'; "
                               "document.getElementById('keybox').requestSubmit()")
                await cdp.until("document.getElementById('conn').className === 'ok'")
                # ?api_key= works once and leaves the address bar.
                await cdp.call("Page.navigate", url=ksrv.url("/?api_key=s3cret"))
                await cdp.until("document.getElementById('conn').className === 'ok' && location.search === ''")
                return rows, kept, width, emoji_err, too_large, failed_box, failed_rows

        rows, kept, width, emoji_err, too_large, failed_box, failed_rows = run(main())
    assert rows == [["abc", want_short], [src, want_long]]  # newest first, each with its own translation
    assert kept[0] == "abc" and "beam must be a whole number" in kept[1]
    assert width <= 375
    assert emoji_err == "" and too_large == 0
    assert failed_box == "abc" and failed_rows == [["abc", want_short]]

