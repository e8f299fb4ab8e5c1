"""The engine: two worker threads own every translation's model state; decoder steps are batched.

The event loop never runs the model. Its coroutines post commands (feed a source piece, end the
source, close) and read results from per-translation queues. The work is split over two threads
so that encoding and decoding overlap (onnxruntime releases the GIL while a graph runs, so on a
machine with two or more cores the encoder graph runs beside the decoder graph):

- the ENCODER thread takes the commands in arrival order: source pieces are encoded at once
  (pieces of different translations that wait together go into one `feed_batch` call); at a
  translation's end it builds the decoder and hands the translation to the decoder thread;
- the DECODER thread runs ONE decoder step per iteration for every translation being decoded:
  all their rows go into one runtime call (`decode_batch().step(decoders)`; split only above
  `max_batch_rows`), and hands the tokens that became final back to the loop in one
  `call_soon_threadsafe` (serve/outbox.py: when the loop is woken, and what it does with them).

A translation belongs to the encoder thread until its source ends and to the decoder thread
after; a close is forwarded to whichever holds it, in order. Translations join and leave the
decoding batch between any two steps (continuous batching), so a stream never waits for another
to finish. When the decoder thread was idle and a translation arrives, it waits up to
`batch_wait_ms` for others to arrive too, so streams that end together start together.
Batched and lone decoding give the same tokens: the runtime pads memories with memory_mask = 0.

The model is anything with the three methods of `qrnn_deploy.runtime.Translator` used here
(`stream()`, `decode_batch()`, `token_text(id)`), so tests can plug in a scripted one. Its
encoder and decoder must tolerate running at the same time in two threads (onnxruntime sessions
do: `InferenceSession.run` is thread-safe, and the two threads use different sessions).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import Optional

from qrnn_deploy.errors import QRNNError, StreamError
from qrnn_deploy.serve.job import EngineStopped, Job, TranslationModel, _as_qrnn_error
from qrnn_deploy.serve.metrics import ServerMetrics
from qrnn_deploy.serve.outbox import FLUSH_PER_TRANSLATION, Outbox

__all__ = ["Engine", "EngineStopped", "FLUSH_PER_TRANSLATION", "Job", "TranslationModel"]

log = logging.getLogger("qrnn_deploy.serve")

class Engine:
    """Runs translations of `model` on two worker threads (encoder, decoder) with batched decoder steps.

    Use from one asyncio event loop: `start()` (inside the loop), `open()` -> Job, `stop()`.
    """

    def __init__(self, model: TranslationModel, metrics: Optional[ServerMetrics] = None,
                 batch_wait_ms: float = 1.0, max_batch_rows: int = 512, flush_ms: float = 1.0,
                 flush_max_ms: Optional[float] = None):
        self.model = model
        self.metrics = metrics or ServerMetrics()
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_batch_rows = max_batch_rows
        self._cv = threading.Condition()  # guards _cmds (loop -> encoder thread) and _stop
        self._cmds: list = []
        self._stop = False
        self._dcv = threading.Condition()  # guards _dcmds (encoder -> decoder thread) and _dstop
        self._dcmds: list = []
        self._dstop = False  # the decoder thread takes no more work (set after the encoder stops)
        self._dgone = False  # the decoder thread has exited: forwarding fails at once
        self._thread: Optional[threading.Thread] = None  # the encoder thread
        self._dthread: Optional[threading.Thread] = None  # the decoder thread
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ids = itertools.count(1)
        self._active: list = []  # jobs being decoded, in the order they joined (keeps batch caches warm)
        self._batches: list = []  # one DecodeBatch per chunk of max_batch_rows
        self._outbox = Outbox(self.metrics, flush_ms, flush_max_ms)  # results on their way to the loop
        self._last_step = 0.0  # seconds the last worker iteration's decoding took
        self.jobs_open = 0  # loop side: jobs opened and not closed
        self._free_lock = threading.Lock()  # _free runs on either worker, or on the loop once they stopped
        self._sourced: set = set()  # jobs holding model state (a source stream), until freed
        self._inflight: list = []  # the commands the encoder thread is applying (failed if it crashes)
        self.steps = 0

    # -- lifecycle (event loop) -----------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = self._outbox.loop = asyncio.get_running_loop()
        self._stop = False
        self._dstop = self._dgone = False
        self._dthread = threading.Thread(target=self._run_decoder, name="qrnn-serve-decoder", daemon=True)
        self._thread = threading.Thread(target=self._run, name="qrnn-serve-encoder", daemon=True)
        self._dthread.start()
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops both workers; translations still in them get an error event. The encoder thread
        stops first, so every translation it handed on is in the decoder thread's hands."""
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._dcv:
            self._dstop = True
            self._dcv.notify()
        if self._dthread is not None:
            self._dthread.join(timeout)
            self._dthread = None

    @property
    def running(self) -> bool:
        return (self._thread is not None and self._thread.is_alive() and self._dthread is not None
                and self._dthread.is_alive() and not self._stop)

    # -- commands (event loop) ------------------------------------------------------------------

    def open(self) -> Job:
        if not self.running:
            raise EngineStopped("the translation engine is not running (server shutting down)")
        self.jobs_open += 1
        return Job(self, next(self._ids))

    def _post(self, cmd: tuple) -> None:
        with self._cv:
            if self._stop:
                raise EngineStopped("the translation engine is stopping (server shutting down)")
            self._cmds.append(cmd)
            self._cv.notify()

    async def feed(self, job: Job, text: str) -> int:
        return await self.feed_nowait(job, text)

    def feed_nowait(self, job: Job, text: str) -> asyncio.Future:
        """Posts a source piece now (so it is ordered before any later end or close of the job)
        and returns a future for the source length after it (or the encoding error)."""
        if job.closed or job.ended:
            raise StreamError("this translation's source has ended; start a new one")
        fut = self._loop.create_future()
        job.source_chars += len(text)
        self._post(("feed", job, text, fut))
        return fut

    def end(self, job: Job, beam: int, max_len: int, length_penalty: float) -> None:
        if job.closed or job.ended:
            raise StreamError("this translation's source has already ended")
        job.ended = True
        job.t_end = time.perf_counter()
        self._post(("end", job, beam, max_len, length_penalty))

    def close(self, job: Job) -> None:
        """Frees the job's model state (idempotent); its later events are dropped."""
        if job.closed:
            return
        job.closed = True
        self.jobs_open -= 1
        if not job.finished:
            self.metrics.translations.inc(outcome="cancelled" if job.ended else "abandoned")
        try:
            self._post(("close", job))
        except EngineStopped:
            # No encoder thread will take the close. A source it held is freed here once that
            # thread is gone (its shutdown frees those it saw; this covers a close racing it).
            t = self._thread
            if not job._decoding and (t is None or not t.is_alive()):
                self._free(job)

    # -- the encoder thread -------------------------------------------------------------------

    def _take(self) -> Optional[list]:
        with self._cv:
            while not self._cmds and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            cmds, self._cmds = self._cmds, []
            return cmds

    def _run(self) -> None:
        try:
            while True:
                cmds = self._take()
                if cmds is None:
                    break
                out: list = []
                self._inflight = cmds
                self._apply_all(cmds, out)
                self._inflight = []
                if out:  # encoder results and errors: a coroutine is waiting for them
                    self._emit(out, True)
        except BaseException:  # a bug in the worker must not leave clients waiting forever
            log.exception("translation engine encoder thread crashed")
        finally:
            self._shutdown_encoder()

    def _shutdown_encoder(self) -> None:
        with self._cv:
            self._stop = True
            # After a crash, the batch being applied is answered too: its results were never sent.
            cmds, self._cmds, self._inflight = self._inflight + self._cmds, [], []
        out: list = []
        for cmd in cmds:
            job = cmd[1]
            if cmd[0] == "feed":
                out.append((cmd[3], EngineStopped("the server is shutting down")))
            elif cmd[0] == "end":
                out.append((job, {"type": "error", "message": "the server is shutting down"}))
            if job._decoding:
                self._to_decoder(("close", job))
            else:
                self._free(job)
        with self._free_lock:
            held = [job for job in self._sourced if not job._decoding]
        for job in held:  # sources of translations still arriving, with nothing queued
            self._free(job)
        if out:
            self._emit(out, True)

    def _to_decoder(self, cmd: tuple) -> bool:
        """Hands a command to the decoder thread; False when that thread is gone."""
        with self._dcv:
            if self._dgone:
                return False
            self._dcmds.append(cmd)
            self._dcv.notify()
            return True

    # -- the decoder thread -------------------------------------------------------------------

    def _dtake(self) -> Optional[list]:
        if not self._active:
            self._outbox.flush()  # nothing deferred may wait while the worker sleeps
        with self._dcv:
            while not self._dcmds and not self._active and not self._dstop:
                self._dcv.wait()
            if self._dstop:
                return None
            starting = sum(c[0] == "start" for c in self._dcmds)
            if not self._active and self.batch_wait > 0 and starting and self.jobs_open > starting:
                # Idle until now, and other translations are still open: let those whose sources
                # end together start together (bounded wait). A lone translation never waits.
                deadline = time.monotonic() + self.batch_wait
                while (left := deadline - time.monotonic()) > 0 and not self._dstop:
                    self._dcv.wait(left)
            cmds, self._dcmds = self._dcmds, []
            return cmds

    def _run_decoder(self) -> None:
        try:
            while True:
                cmds = self._dtake()
                if cmds is None:
                    break
                for cmd in cmds:
                    job = cmd[1]
                    if cmd[0] == "start" and not job.closed:
                        self._active.append(job)
                    else:  # "close", or a start whose close is already on its way
                        if job in self._active:
                            self._active.remove(job)
                        self._free(job)
                out: list = []
                urgent = False
                if self._active:
                    urgent = self._step(out)
                if not self._active and self._batches:  # idle: the batches' buffers and last decoders go
                    self._batches = []
                if out:
                    self._emit(out, urgent)
        except BaseException:  # a bug in the worker must not leave clients waiting forever
            log.exception("translation engine decoder thread crashed")
        finally:
            self._shutdown_decoder()

    def _shutdown_decoder(self) -> None:
        with self._cv:
            self._stop = True  # no new work from the loop (the encoder thread may still run)
            self._cv.notify()
        with self._dcv:
            self._dgone = True
            cmds, self._dcmds = self._dcmds, []
        out: list = []
        for cmd in cmds:
            if cmd[0] == "start":
                out.append((cmd[1], {"type": "error", "message": "the server is shutting down"}))
            self._free(cmd[1])
        for job in self._active:
            out.append((job, {"type": "error", "message": "the server is shutting down"}))
            self._free(job)
        self._active = []
        if out:
            self._emit(out, True)

    def _free(self, job: Job) -> None:
        """Frees the job's model state, once (idempotent, from any thread)."""
        with self._free_lock:
            source, job._source = job._source, None
            decoder, job._decoder = job._decoder, None
            self._sourced.discard(job)
        if source is not None:
            self.metrics.sessions.dec()
            try:
                source.close()
            except Exception:  # one failing close must not stop the worker freeing the rest
                log.exception("closing a translation's source stream failed")
        if decoder is not None:
            self.metrics.decoding.dec()

    def _apply_all(self, cmds: list, out: list) -> None:
        """Applies the commands taken together. Every source piece among them is encoded first, in
        one `feed_batch` call when the model has it (the pieces of one translation joined into
        one: encoding "ab" then "cd" is encoding "abcd"); then the ends and closes, in arrival
        order. A translation's pieces always arrive before its own end or close (the loop refuses
        pieces after those), so each translation still sees its commands in order; pieces of other
        translations are not held back behind an end, so the encoder makes one call per round
        instead of one between every two ends (at 32 streams that split most calls)."""
        pending: dict = {}  # job -> [job, [texts], [futures]], in arrival order
        rest = []
        for cmd in cmds:
            if cmd[0] != "feed":
                rest.append(cmd)
                continue
            item = pending.get(cmd[1])
            if item is None:
                pending[cmd[1]] = [cmd[1], [cmd[2]], [cmd[3]]]
            else:
                item[1].append(cmd[2])
                item[2].append(cmd[3])
        if pending:
            self._feed(list(pending.values()), out)
        for cmd in rest:
            self._apply(cmd, out)

    def _feed(self, items: list, out: list) -> None:
        """items: [job, [texts], [futures]]; every future of a job gets its source length after
        all of its texts (or the error)."""
        live = []
        for job, texts, futs in items:
            err = None
            if job.closed:
                err = StreamError("the translation was closed")
            elif job._source_error is not None:
                err = job._source_error  # an earlier piece failed: the sentence is dropped
            elif job._source is None:
                try:
                    job._source = self.model.stream()
                    with self._free_lock:
                        self._sourced.add(job)
                    self.metrics.sessions.inc()
                except Exception as e:
                    err = job._source_error = _as_qrnn_error(e, "opening a translation failed")
            if err is not None:
                out.extend((f, err) for f in futs)
            else:
                live.append((job, "".join(texts), futs))
        if not live:
            return
        feed_batch = getattr(self.model, "feed_batch", None)
        t0 = time.perf_counter()
        try:
            if len(live) > 1 and feed_batch is not None:
                lengths = feed_batch([(job._source, text) for job, text, _ in live])
            else:
                lengths = [job._source.feed(text) for job, text, _ in live]
        except Exception as e:  # QRNNError from the runtime, or a bug: the clients get a message
            # Some of these streams may have advanced before the failure, so none can be
            # trusted: every translation of the call fails (each client drops that sentence).
            err = _as_qrnn_error(e, "encoding failed")
            for job, _, futs in live:
                job._source_error = err
                out.extend((f, err) for f in futs)
            return
        dt = (time.perf_counter() - t0) / len(live)
        for (job, _, futs), n in zip(live, lengths):
            job.encode_seconds += dt
            self.metrics.encode_seconds.observe(dt)
            out.extend((f, int(n)) for f in futs)

    def _apply(self, cmd: tuple, out: list) -> None:
        kind, job = cmd[0], cmd[1]
        if kind == "close":
            if not job._decoding:
                self._free(job)
            elif not self._to_decoder(("close", job)):
                self._free(job)  # the decoder thread is gone (it has already failed the job)
            return
        if job.closed:
            return
        if kind == "end":
            _, _, beam, max_len, lp = cmd
            try:
                if job._source_error is not None:
                    raise StreamError(f"the source could not be encoded ({job._source_error})")
                if job._source is None:
                    raise StreamError("the source is empty: send some text before ending it")
                job._decoder = job._source.decoder(beam=beam, max_len=max_len, length_penalty=lp)
            except Exception as e:
                if not isinstance(e, QRNNError):
                    log.exception("starting the decoder failed")
                out.append((job, {"type": "error", "message": str(e)}))
                self._free(job)
                return
            self.metrics.decoding.inc()
            if job._decoder.done:  # max_len 0 or similar: nothing to decode
                out.append((job, self._done_event(job)))
                self._free(job)
                return
            job._decoding = True  # from now on the decoder thread owns it
            if not self._to_decoder(("start", job)):
                out.append((job, {"type": "error", "message": "the server is shutting down"}))
                self._free(job)

    def _done_event(self, job: Job) -> dict:
        d = job._decoder
        ids = [int(t) for t in (d.result or [])]
        return {"type": "done", "ids": ids, "text": "".join(self.model.token_text(t) for t in ids), "steps": d.steps}

    def _step(self, out: list) -> None:
        # Chunks of at most max_batch_rows rows; each chunk keeps its own DecodeBatch so the
        # padded context it caches stays valid between steps.
        chunks, cur, rows = [], [], 0
        for job in self._active:
            k = job._decoder.num_rows
            if cur and rows + k > self.max_batch_rows:
                chunks.append(cur)
                cur, rows = [], 0
            cur.append(job)
            rows += k
        if cur:
            chunks.append(cur)
        while len(self._batches) < len(chunks):
            self._batches.append(self.model.decode_batch())
        finished = []
        urgent = False
        t_start = time.perf_counter()
        for i, group in enumerate(chunks):
            decoders = [j._decoder for j in group]
            nrows = sum(d.num_rows for d in decoders)
            t0 = time.perf_counter()
            try:
                new = self._batches[i].step(decoders)
            except Exception as e:
                if not isinstance(e, QRNNError):
                    log.exception("decoder step failed")
                for j in group:
                    out.append((j, {"type": "error", "message": f"decoding failed: {e}"}))
                    finished.append(j)
                urgent = True
                self._batches[i] = self.model.decode_batch()
                continue
            dt = time.perf_counter() - t0
            self.steps += 1
            m = self.metrics
            m.step_seconds.observe(dt)
            m.batch_size.observe(len(group))
            m.batch_rows.observe(nrows)
            n_tok = 0
            for j, toks in zip(group, new):
                if toks:
                    if j._sent == 0:
                        urgent = True  # first-token latency is what a user waits for
                    for t in toks:
                        out.append((j, {"type": "token", "id": int(t), "text": self.model.token_text(int(t))}))
                    j._sent += len(toks)
                    n_tok += len(toks)
                if j._decoder.done:
                    out.append((j, self._done_event(j)))
                    finished.append(j)
                    urgent = True
            if n_tok:
                m.add_tokens(n_tok)
        if finished:
            gone = set(id(j) for j in finished)
            self._active = [j for j in self._active if id(j) not in gone]
            for j in finished:
                self._free(j)
        self._last_step = time.perf_counter() - t_start
        return urgent

    def _emit(self, out: list, urgent: bool) -> None:
        self._outbox.put(out, urgent, len(self._active), self._last_step)
