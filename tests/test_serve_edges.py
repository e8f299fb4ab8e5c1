"""Server paths found by review where a connection was dropped without a message, a resource
(stream slot, translation, model state) stayed held, or a drain cut a translation it had
promised to finish. Every test here failed before its fix."""

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from qrnn_deploy.export import export_bundle
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.serve import Engine, ServeConfig, create_app
from qrnn_deploy.serve.metrics import ServerMetrics
from qrnn_deploy.serve.testing import ServerThread
from test_serve import MAX_LEN, VOCAB, SlowTranslator, make_model, recv, run, wait_for

LONG = "ponm lkji hgfe"  # a source the test model translates to the full MAX_LEN tokens


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_edges") / "bundle"
    export_bundle(make_model(), out, fo_pool="portable", verify=False, vocab=VOCAB)
    return load_bundle(out, threads=1).translator()


def _freed(st) -> bool:
    return (st.streams_open == 0 and st.engine.jobs_open == 0 and st.metrics.sessions.value() == 0
            and st.metrics.decoding.value() == 0)


def test_a_number_over_the_digit_limit_is_bad_json(translator):
    """json.loads raises a plain ValueError for an integer of over 4300 digits: it escaped the
    WebSocket handler (connection dropped, no message) and was a bare 500 over HTTP."""
    huge = '{"type": "source", "text": "abc", "n": ' + "9" * 5000 + "}"
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(huge)
                m = await recv(ws)
                assert m["type"] == "error" and m["code"] == "bad_json" and "digits" in m["message"]
                await ws.send(json.dumps({"type": "ping"}))  # the connection goes on
                assert (await recv(ws))["type"] == "pong"

        run(main())
        r = httpx.post(srv.url("/v1/translate"), content='{"text": "abc", "n": ' + "9" * 5000 + "}", timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
        assert wait_for(lambda: _freed(srv.state))


def test_an_unexpected_error_is_a_message_and_a_1011_close(translator, monkeypatch):
    """A bug in a handler (here injected) ends the connection with an `internal` error message
    and close code 1011, and frees what the connection held."""
    from qrnn_deploy.serve import ws as ws_module

    real = ws_module.StreamConnection.handle

    async def handle(self, m):
        if m["type"] == "ping":
            raise ValueError("injected bug")
        return await real(self, m)

    monkeypatch.setattr(ws_module.StreamConnection, "handle", handle)
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": "abc"}))
                await ws.send(json.dumps({"type": "ping"}))
                m = await recv(ws)
                assert m["type"] == "error" and m["code"] == "internal"
                with pytest.raises(ConnectionClosed) as e:
                    await ws.recv()
                assert e.value.rcvd.code == 1011

        run(main())
        assert wait_for(lambda: _freed(srv.state))
        assert srv.state.metrics.errors.value(kind="internal") == 1


def test_an_idle_engine_keeps_no_decode_batches(translator):
    """The cached DecodeBatch objects (padded context buffers, references to the last decoders
    and their memories) are dropped once nothing is being decoded."""
    with ServerThread(create_app(translator, ServeConfig(max_len=MAX_LEN))) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                for text in ("abc def gh", "hello"):
                    await ws.send(json.dumps({"type": "source", "text": text}))
                    await ws.send(json.dumps({"type": "end", "beam": 3}))
                while (await recv(ws))["type"] != "done":
                    pass
                while (await recv(ws))["type"] != "done":
                    pass

        run(main())
        assert srv.state.engine.steps > 0
        assert wait_for(lambda: srv.state.engine._batches == [])


def test_a_close_the_client_never_takes_frees_everything_first(translator, monkeypatch):
    """The idle-timeout close was awaited before the connection's translations and slot were
    freed, and nothing bounded it: a client that stopped reading held them for good. Here the
    close frame never goes out at all (an injected close that waits forever)."""
    from starlette.websockets import WebSocket

    async def close_never(self, code=1000, reason=None):
        await asyncio.sleep(3600)

    monkeypatch.setattr(WebSocket, "close", close_never)
    cfg = ServeConfig(max_len=MAX_LEN, idle_timeout=0.3, send_timeout=0.5)
    with ServerThread(create_app(translator, cfg)) as srv:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": "abc"}))  # a sentence arriving
                m = await recv(ws)
                assert m["code"] == "idle_timeout"
                t0 = time.monotonic()
                with pytest.raises(ConnectionClosed):  # cut after send_timeout instead of closed
                    await asyncio.wait_for(ws.recv(), 10)
                assert time.monotonic() - t0 < 5

        run(main())
        assert wait_for(lambda: _freed(srv.state))


def test_a_drain_finishes_a_sentence_while_the_next_one_starts(translator):
    """While draining, a client that sent the first piece of its next sentence was closed with
    1013, which cancelled the sentence still being decoded: the drain cut a translation it had
    promised to finish. The piece is now refused with `draining` and the sentence finishes."""
    want = translator.translate(LONG, max_len=MAX_LEN)
    srv = ServerThread(create_app(SlowTranslator(translator, 0.03), ServeConfig(max_len=MAX_LEN))).start()
    try:
        async def main():
            async with connect(srv.ws_url()) as ws:
                await ws.send(json.dumps({"type": "source", "text": LONG}))
                await ws.send(json.dumps({"type": "end"}))
                first = await recv(ws)
                assert first["type"] == "token"
                srv.drain()
                await asyncio.sleep(0.05)
                await ws.send(json.dumps({"type": "source", "text": "gag"}))
                text, codes = first["text"], []
                try:
                    while True:
                        m = await recv(ws)
                        if m["type"] == "token":
                            text += m["text"]
                        elif m["type"] == "error":
                            codes.append(m["code"])
                        elif m["type"] == "done":
                            assert m["text"] == want
                            return text, codes
                except ConnectionClosed:
                    raise AssertionError(f"closed before done; errors {codes}") from None

        text, codes = run(main())
        assert text == want and codes == ["draining"]
        srv.join(10)
        assert srv.state.metrics.translations.value(outcome="cancelled") == 0
    finally:
        srv.stop()


def test_an_abandoned_http_request_stops_decoding(translator):
    """A JSON POST /v1/translate whose client left kept its slot, its translation and a decoder
    row until the translation ended (max_len steps)."""
    with ServerThread(create_app(SlowTranslator(translator, 0.1), ServeConfig(max_len=MAX_LEN))) as srv:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(srv.url("/v1/translate"), json={"text": LONG}, timeout=0.3)
        assert wait_for(lambda: _freed(srv.state), 1.5)
        assert srv.state.engine.steps < MAX_LEN
        assert srv.state.metrics.translations.value(outcome="done") == 0
        # The server goes on: the next request is answered in full.
        r = httpx.post(srv.url("/v1/translate"), json={"text": "gag"}, timeout=30)
        assert r.status_code == 200 and r.json()["text"] == translator.translate("gag", max_len=MAX_LEN)


class _Tracking:
    """The translator, counting the source streams closed (and able to fail closing them)."""

    def __init__(self, tr, fail_close: bool = False):
        self.tr, self.fail_close, self.closed = tr, fail_close, 0

    def stream(self):
        s = self.tr.stream()
        real = s.close

        def close():
            self.closed += 1
            real()
            if self.fail_close:
                raise RuntimeError("injected close failure")

        s.close = close
        return s

    def decode_batch(self):
        return self.tr.decode_batch()

    def token_text(self, t):
        return self.tr.token_text(t)


def test_stopping_the_engine_frees_sources_still_arriving(translator):
    """A translation whose source was open in the encoder thread with nothing queued kept its
    model state after Engine.stop(), and its later close() was dropped."""
    model = _Tracking(translator)

    async def main():
        m = ServerMetrics()
        e = Engine(model, m)
        e.start()
        job = e.open()
        assert await job.feed("abc def") == 7
        assert m.sessions.value() == 1
        e.stop()
        job.close()
        return e, m

    e, m = run(main())
    assert model.closed == 1 and m.sessions.value() == 0 and e.jobs_open == 0


def test_a_failing_close_does_not_stop_the_encoder(translator):
    """An exception from closing one translation's source killed the encoder thread, and every
    later command waited for an answer that never came."""
    model = _Tracking(translator, fail_close=True)

    async def main():
        e = Engine(model, ServerMetrics())
        e.start()
        try:
            a, b = e.open(), e.open()
            await a.feed("abc")
            await b.feed("gag")
            a.close()
            b.end(1, MAX_LEN, 1.0)
            evs = [ev async for ev in b.results()]
            assert evs[-1]["type"] == "done" and e.running
            b.close()
        finally:
            e.stop()

    run(main())


def test_commands_in_hand_when_the_encoder_crashes_are_answered(translator, monkeypatch):
    """A crash of the encoder thread (a bug, injected here) lost the batch of commands it was
    applying: a translation ended in that batch never got an event, and its client waited
    forever. They now get the shutdown error like the commands still queued."""
    async def main():
        e = Engine(translator, ServerMetrics())
        real = e._apply

        def apply(cmd, out):
            if cmd[0] == "end":
                raise RuntimeError("injected bug")
            return real(cmd, out)

        monkeypatch.setattr(e, "_apply", apply)
        e.start()
        try:
            job = e.open()
            await job.feed("abc")
            job.end(1, MAX_LEN, 1.0)
            evs = await asyncio.wait_for(_all(job), 5)
            assert evs[-1]["type"] == "error" and "shutting down" in evs[-1]["message"]
            job.close()
        finally:
            e.stop()
        return e

    e = run(main())
    assert e.metrics.sessions.value() == 0 and e.jobs_open == 0


async def _all(job) -> list:
    return [ev async for ev in job.results()]


def test_an_sse_client_that_stops_reading_is_cut(translator, monkeypatch):
    """A streamed POST /v1/translate whose client kept the connection open but read nothing held
    its slot and translation as long as it liked; it is now cut after --send-timeout. The stall
    is injected into uvicorn's send (a real one needs more output than the socket and transport
    buffers hold)."""
    import importlib

    for name in ("uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl"):
        try:
            cycle = importlib.import_module(name).RequestResponseCycle
        except ImportError:
            continue
        real = cycle.send

        async def send(self, message, real=real):
            if message.get("type") == "http.response.body" and message.get("body", b"").startswith(b"event: token"):
                if getattr(self, "_sent_tokens", 0) >= 1:
                    await asyncio.sleep(3600)  # the client's buffers are full from here on
                self._sent_tokens = getattr(self, "_sent_tokens", 0) + 1
            return await real(self, message)

        monkeypatch.setattr(cycle, "send", send)
    cfg = ServeConfig(max_len=MAX_LEN, send_timeout=0.5)
    with ServerThread(create_app(SlowTranslator(translator, 0.1), cfg)) as srv:  # decoding outlasts the cut
        with httpx.Client(timeout=30) as c:
            with c.stream("POST", srv.url("/v1/translate"), json={"text": LONG, "stream": True}) as r:
                assert r.status_code == 200
                assert wait_for(lambda: srv.state.metrics.errors.value(kind="send_timeout") == 1, 10)
                assert wait_for(lambda: _freed(srv.state), 5)
                with pytest.raises(httpx.HTTPError):  # cut: the body never completes
                    for _ in r.iter_bytes():
                        pass
        assert srv.state.metrics.translations.value(outcome="done") == 0
