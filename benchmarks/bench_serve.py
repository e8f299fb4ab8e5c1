"""Load test of `qrnn-deploy serve` on loopback, beside the raw runtime step measured in the same run.

A paper-shaped translator (4 layers of 320, embed 64, encoder windows [6, 2, 2, 2], decoder window
2; random weights with </s> suppressed so every sentence decodes --tokens steps, or the shipped
de-en checkpoint when it exists) is exported to a bundle and served by `qrnn-deploy serve` in a
subprocess (onnxruntime, --threads 1 unless --threads says otherwise). For N = 1, 8, 32, 128
concurrent WebSocket clients, each client streams German sentences for --seconds: the source in
pieces, then "end", then reads the tokens until "done", and starts the next sentence. Reported
per N:

- tokens/s over all clients, and the ratio to N = 1 (batching: target >= 5x at 32),
- per-token latency p50 / p99: the gap between consecutive token arrivals at the client (tokens
  that arrive in one message, having become final together, count with a gap of 0),
- time per output token (TPOT) p50: (done - first token) / (tokens - 1) per sentence,
- first-token latency p50 / p99 after the source ends ("end" sent -> first token received),
- errors (error messages, refused or dropped connections), server RSS before / after,
- from the server's /metrics and /proc: translations per decoder call, CPU cores used, share of
  time in decoder and encoder calls.

Baseline in the same run: the raw runtime, `DecodeBatch.step` of one greedy translation (and of
N together), in this process on the same bundle and thread count; for 1 stream, blocks of the
same sentences alternate between the raw runtime and the server. A second baseline per N, the
raw pipeline: the whole workload (pieces encoded with `feed_batch`, then DecodeBatch steps) of N
streams in one thread of this process, no server, no network: the ceiling of the work itself on
one core, encoding included (which batching cannot shrink much); and the same with each
iteration's encoding in a second thread beside the decoding (the server engine's split without
the server: its ceiling on this machine). The load generator's own CPU is
reported too: it shares the machine with the server. The per-token server overhead
at 1 stream is the server's TPOT over the raw runtime's time per token (medians over the same
sentences; target <= 1.2), and the server process's CPU per token over the raw thread's.

    python3 benchmarks/bench_serve.py [--seconds 8 --tokens 60 --clients 1,8,32,128 --rounds 30 --threads 1]
                                      [--quantize int8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "Guten Morgen, wie geht es Ihnen heute?",
    "Der Zug nach Berlin fährt um acht Uhr ab.",
    "Ich habe gestern ein interessantes Buch über Geschichte gelesen.",
    "Können Sie mir bitte den Weg zum Bahnhof zeigen?",
    "Das Wetter ist heute schöner als gestern.",
    "Wir treffen uns nach der Arbeit im Café an der Ecke.",
    "Die Kinder spielen im Garten mit dem Hund.",
    "Bitte schließen Sie das Fenster, es ist kalt.",
    "Unsere Firma entwickelt Software für kleine Unternehmen.",
    "Am Wochenende fahren wir mit dem Fahrrad an den See.",
]


def build_bundle(out: Path, fo_pool: str, seed: int = 0, quantize: str = None) -> dict:
    import torch

    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import QRNNSeq2Seq
    from qrnn_deploy.vocab import BOS, EOS, CharVocab

    ckpt = REPO / "qrnn_deploy" / "pretrained" / "de-en.safetensors"
    if ckpt.exists():
        from qrnn_deploy.nn import load_checkpoint

        model = load_checkpoint(ckpt)
        model = model[0] if isinstance(model, tuple) else model
        export_bundle(model, out, fo_pool=fo_pool, verify=False, quantize=quantize)
        return {"model": f"shipped {ckpt.name}" + (f", {quantize} weights" if quantize else ""), "suppress_eos": False}
    torch.manual_seed(seed)
    vocab = CharVocab.build(SENTENCES + ["the quick brown fox jumps over the lazy dog THE QUICK BROWN FOX 0123456789"])
    V = len(vocab)
    model = QRNNSeq2Seq(V, V, embed_size=64, hidden_size=320, num_layers=4, encoder_window=[6, 2, 2, 2],
                        decoder_window=2).eval()
    with torch.no_grad():  # random weights: keep every sentence decoding the full length
        model.out.bias[EOS] -= 30
        model.out.bias[BOS] -= 30
    export_bundle(model, out, fo_pool=fo_pool, verify=False, vocab=vocab, quantize=quantize)
    return {"model": f"random QRNNSeq2Seq 4x320 (vocab {V}), </s> suppressed" + (f", {quantize} weights" if quantize else ""),
            "suppress_eos": True}


def raw_sentence(translator, sentence: str, tokens: int, pieces: list) -> dict:
    """One translation decoded alone in this thread, as the engine does it (source pieces fed,
    then DecodeBatch.step per token). Measured as the client measures the server: wall seconds
    per token from the first token to the last over tokens - 1 (TPOT), CPU seconds per token
    emitted (encoding + decoding, the same work the server does), first-token time; "steps" are
    the times of the steps that emitted a token."""
    c0 = time.thread_time()
    ts = translator.stream()
    for p in pieces:
        ts.feed(p)
    t0 = time.perf_counter()
    d = ts.decoder(beam=1, max_len=tokens)
    b = translator.decode_batch()
    n, arrivals, steps = 0, [], []
    while not d.done:
        t = time.perf_counter()
        got = sum(len(x) for x in b.step([d]))  # tokens emitted (the step that ends on </s> emits none)
        now = time.perf_counter()
        if got:
            n += got
            arrivals.append(now)
            steps.append(now - t)
    cpu = time.thread_time() - c0
    tpot = (arrivals[-1] - arrivals[0]) / (n - 1) if n > 1 else float("nan")
    return {"tokens": n, "wall": tpot, "cpu": cpu / max(n, 1), "first": arrivals[0] - t0 if arrivals else None,
            "steps": steps}


def raw_batched_tps(translator, n: int, tokens: int, min_seconds: float = 1.0) -> float:
    """Tokens per second of DecodeBatch stepping n greedy translations together, in this thread
    (the runtime's own figure for n streams), over at least `min_seconds`."""
    total, elapsed, r = 0, 0.0, 0
    while elapsed < min_seconds:
        decoders = []
        for j in range(n):
            ts = translator.stream()
            ts.feed(SENTENCES[(r + j) % len(SENTENCES)])
            decoders.append(ts.decoder(beam=1, max_len=tokens))
        b = translator.decode_batch()
        t0 = time.perf_counter()
        while not all(d.done for d in decoders):
            total += sum(len(x) for x in b.step(decoders))
        elapsed += time.perf_counter() - t0
        r += 1
    return total / elapsed


def raw_pipeline_tps(translator, n: int, tokens: int, seed: int, seconds: float = 1.5,
                     overlap: bool = False) -> float:
    """Tokens per second of the whole workload of n streams, no server: each stream's sentence
    arrives in 4 pieces, one piece per stream per iteration encoded together (`feed_batch`),
    then one DecodeBatch step for every stream whose source has ended; a stream that finishes
    starts its next sentence. In this one thread, the ceiling of the work itself (encoding
    included) on one core; with overlap, each iteration's encoding runs in a second thread while
    this one decodes (the server engine's split, without the server around it)."""
    from concurrent.futures import ThreadPoolExecutor

    rng = random.Random(seed)
    pool = ThreadPoolExecutor(1) if overlap else None

    def fresh():
        return {"pieces": split_pieces(SENTENCES[rng.randrange(len(SENTENCES))], rng), "ts": translator.stream(),
                "dec": None}

    slots = [fresh() for _ in range(n)]
    batch = translator.decode_batch()
    total, t0 = 0, time.perf_counter()
    def encode(feeding):
        translator.feed_batch([(s["ts"], s["pieces"].pop(0)) for s in feeding])
        for s in feeding:
            if not s["pieces"]:
                s["dec"] = s["ts"].decoder(beam=1, max_len=tokens)

    while time.perf_counter() - t0 < seconds:
        feeding = [s for s in slots if s["pieces"]]
        decoding = [s for s in slots if s["dec"] is not None]  # before this iteration's encoding
        job = None
        if feeding:
            if pool is None:
                encode(feeding)
                decoding = [s for s in slots if s["dec"] is not None]
            else:
                job = pool.submit(encode, feeding)
        if decoding:
            total += sum(len(x) for x in batch.step([s["dec"] for s in decoding]))
        if job is not None:
            job.result()
        for i, s in enumerate(slots):
            if s["dec"] is not None and s["dec"].done:
                slots[i] = fresh()
    elapsed = time.perf_counter() - t0
    if pool is not None:
        pool.shutdown()
    return total / elapsed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def split_pieces(s: str, rng: random.Random, k: int = 4) -> list:
    cuts = sorted(rng.sample(range(1, len(s)), k - 1))
    return [s[a:b] for a, b in zip([0] + cuts, cuts + [len(s)])]


class Stats:
    def __init__(self):
        self.tokens = 0
        self.gaps: list = []
        self.first: list = []
        self.tpot: list = []
        self.sentences = 0
        self.errors: list = []


async def sentence(ws, pieces: list, st: Stats, settle: bool = False) -> None:
    """Streams one sentence: its pieces, "end", then its tokens until "done". settle: wait until
    the pieces are encoded (a ping is answered after them) before "end", as when a typist's
    pieces arrive over time; then first-token latency is the decoder's, as in the raw baseline."""
    for p in pieces:
        await ws.send(json.dumps({"type": "source", "text": p}))
    if settle:
        await ws.send('{"type": "ping"}')
        while json.loads(await ws.recv())["type"] != "pong":
            pass
    t_end = time.perf_counter()
    await ws.send('{"type": "end"}')
    last, first, n = None, None, 0
    while True:
        m = json.loads(await ws.recv())
        now = time.perf_counter()
        if m["type"] == "token":
            k = len(m["ids"])  # tokens that became final together share one message
            if last is None:
                first = now
                st.first.append(now - t_end)
                st.gaps += [0.0] * (k - 1)
            else:
                st.gaps += [now - last] + [0.0] * (k - 1)
            last = now
            n += k
        elif m["type"] == "done":
            st.tokens += n
            st.sentences += 1
            if n > 1:
                st.tpot.append((last - first) / (n - 1))
            if m["tokens"] != n:
                st.errors.append(f"done says {m['tokens']} tokens, got {n}")
            return
        else:
            st.errors.append(str(m))
            return


async def client(url: str, deadline: float, rng: random.Random, st: Stats) -> None:
    from websockets.asyncio.client import connect

    try:
        async with connect(url, max_size=None, compression=None) as ws:
            while time.perf_counter() < deadline:
                s = SENTENCES[rng.randrange(len(SENTENCES))]
                await sentence(ws, split_pieces(s, rng), st)
    except Exception as e:  # refused, dropped: an error of the run
        st.errors.append(f"{type(e).__name__}: {e}")


async def load(url: str, n: int, seconds: float, seed: int) -> tuple:
    st = Stats()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    await asyncio.gather(*(client(url, deadline, random.Random(seed * 1000 + i), st) for i in range(n)))
    return st, time.perf_counter() - t0


async def one_stream_interleaved(url: str, tr, rounds: int, tokens: int, pid: int, seed: int,
                                 block: int = 5) -> dict:
    """Blocks of `block` sentences decoded by the raw runtime here, alternating with blocks of the
    same sentences (same pieces) through the server, so both see the same machine load; blocks
    rather than single sentences, so neither side starts right after the other's CPU burst."""
    from websockets.asyncio.client import connect

    rng = random.Random(seed)
    plan = [(SENTENCES[r % len(SENTENCES)], None) for r in range(rounds)]
    plan = [(s, split_pieces(s, rng)) for s, _ in plan]
    raw, srv = [], Stats()
    cpu_srv, srv_tokens = 0.0, 0
    async with connect(url, max_size=None, compression=None) as ws:
        for b in range(0, rounds, block):
            part = plan[b:b + block]
            raw += [raw_sentence(tr, s, tokens, pieces) for s, pieces in part]
            c0, n0 = cpu_seconds(pid), srv.tokens
            for s, pieces in part:
                await sentence(ws, pieces, srv, settle=True)
            cpu_srv += cpu_seconds(pid) - c0
            srv_tokens += srv.tokens - n0
    return {"raw": raw, "srv": srv, "srv_cpu_per_token": cpu_srv / max(srv_tokens, 1)}


def server_counters(port: int) -> dict:
    """Decoder calls, translations stepped, seconds in decoder and encoder calls, from /metrics."""
    import httpx

    want = {"qrnn_serve_step_seconds_count": "calls", "qrnn_serve_batch_size_sum": "stepped",
            "qrnn_serve_step_seconds_sum": "step_s", "qrnn_serve_encode_seconds_sum": "encode_s"}
    out = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        name = line.split(" ")[0]
        if name in want:
            out[want[name]] = float(line.rsplit(" ", 1)[1])
    return out


def ms(x, q):
    return float(np.percentile(np.asarray(x) * 1e3, q)) if len(x) else float("nan")


def _env() -> dict:
    """This process's environment with the repository first on PYTHONPATH (packages carried on
    PYTHONPATH, as on the GPU machine, stay visible to the subprocesses)."""
    extra = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=str(REPO) + (os.pathsep + extra if extra else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=_args.seconds, default=8.0, help="Load time per client count.")
    ap.add_argument("--tokens", type=_args.count, default=60, help="Target tokens per sentence (max_len).")
    ap.add_argument("--clients", type=_args.counts, default="1,8,32,128")
    ap.add_argument("--fo-pool", default="auto", choices=["auto", "custom", "portable"])
    ap.add_argument("--rounds", type=_args.count, default=30, help="1-stream sentences interleaved with the raw runtime.")
    ap.add_argument("--threads", type=_args.threads, default=1, help="onnxruntime intra-op threads (server and baseline).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantize", choices=["int8"], help="Serve (and measure the baselines on) an int8 bundle.")
    ap.add_argument("--serve-option", action="append", default=[], metavar="OPTION",
                    help="Extra option for `qrnn-deploy serve`, e.g. --serve-option=--flush-ms=4 (repeatable).")
    ap.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args()
    counts = args.clients  # sorted: ratios are to the first row, N = 1 if given

    fo_pool = args.fo_pool
    if fo_pool == "auto":
        try:
            from qrnn_deploy._native import ort_library_path

            fo_pool = "custom" if Path(ort_library_path()).is_file() else "portable"
        except Exception:
            fo_pool = "portable"
    if args.build_only:
        print(json.dumps(build_bundle(Path(args.build_only), fo_pool, args.seed, args.quantize)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    bundle = tmp / "bundle"
    # torch stays out of this process: its idle OpenMP threads would take CPU from the server
    # (measured: the server's first-token time tripled on 2 cores after one torch matmul here).
    r = subprocess.run([sys.executable, __file__, "--build-only", str(bundle), "--fo-pool", fo_pool,
                        "--seed", str(args.seed)] + (["--quantize", args.quantize] if args.quantize else []),
                       capture_output=True, text=True, cwd=str(REPO),
                       env=_env())
    if r.returncode != 0:
        raise SystemExit(f"building the bundle failed:\n{r.stderr}")
    info = json.loads(r.stdout.strip().splitlines()[-1])

    from qrnn_deploy.runtime import load_bundle

    tr = load_bundle(bundle, threads=args.threads).translator()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _env()
    proc = subprocess.Popen([sys.executable, "-m", "qrnn_deploy", "serve", str(bundle), "--port", str(port),
                             "--threads", str(args.threads), "--max-len", str(args.tokens), "--max-streams", "1024",
                             "--log-level", "warning", *args.serve_option], cwd=str(REPO), env=env)
    try:
        import httpx

        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/v1/stream"
        asyncio.run(load(url, 2, 1.0, 99))  # warm-up (sessions, caches)
        mem0 = rss_mb(proc.pid)
        one = asyncio.run(one_stream_interleaved(url, tr, args.rounds, args.tokens, proc.pid, args.seed))
        rows = []
        for n in counts:
            m0, c0, p0 = server_counters(port), cpu_seconds(proc.pid), time.process_time()
            st, elapsed = asyncio.run(load(url, n, args.seconds, args.seed + n))
            m1, c1, p1 = server_counters(port), cpu_seconds(proc.pid), time.process_time()
            calls = max(m1["calls"] - m0["calls"], 1)
            server = {"batch": (m1["stepped"] - m0["stepped"]) / calls, "cores": (c1 - c0) / elapsed,
                      "in_step": (m1["step_s"] - m0["step_s"]) / elapsed,
                      "in_encode": (m1["encode_s"] - m0["encode_s"]) / elapsed, "client": (p1 - p0) / elapsed,
                      "pipeline": raw_pipeline_tps(tr, n, args.tokens, args.seed + n),
                      "overlap": raw_pipeline_tps(tr, n, args.tokens, args.seed + n, overlap=True)}
            rows.append((n, st, elapsed, rss_mb(proc.pid), raw_batched_tps(tr, n, args.tokens), server))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    raw, srv = one["raw"], one["srv"]
    raw_wall = float(np.median([r["wall"] for r in raw if r["tokens"] > 1]))
    raw_cpu = float(np.median([r["cpu"] for r in raw]))
    raw_step = float(np.median([t for r in raw for t in r["steps"]]))
    raw_first = float(np.median([r["first"] for r in raw if r["first"] is not None]))
    tpot = float(np.median(srv.tpot))
    print(f"model: {info['model']}; bundle fo_pool={fo_pool}; onnxruntime {args.threads} thread(s) (server and baseline); "
          f"{args.tokens} tokens per sentence; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print()
    print(f"1 stream, {args.rounds} sentences through the server in blocks of 5 alternating with the raw runtime on the "
          "same sentences (medians):")
    print("| path | per token ms (wall) | CPU per token ms | first token ms | step p50 ms |")
    print("|---|---|---|---|---|")
    print(f"| raw runtime (DecodeBatch alone, this process) | {raw_wall * 1e3:.3f} | {raw_cpu * 1e3:.3f} | "
          f"{raw_first * 1e3:.3f} | {raw_step * 1e3:.3f} |")
    print(f"| server over WebSocket (TPOT at the client) | {tpot * 1e3:.3f} | {one['srv_cpu_per_token'] * 1e3:.3f} | "
          f"{ms(srv.first, 50):.3f} | |")
    print(f"| server / raw | {tpot / raw_wall:.2f}x | {one['srv_cpu_per_token'] / raw_cpu:.2f}x | "
          f"{ms(srv.first, 50) / 1e3 / raw_first:.2f}x | |")
    print()
    print(f"{args.seconds:g} s of load per row; server RSS before the runs {mem0:.0f} MB:")
    print("| streams | tokens/s | x 1 stream | raw DecodeBatch tokens/s at N (x alone) | raw pipeline tokens/s at N "
          "(x 1) | raw pipeline, encoder beside decoder (x 1) | token gap p50 ms | p99 ms | TPOT p50 ms "
          "| first token p50 ms | p99 ms | sentences | errors "
          "| RSS after MB | translations per decoder call | server / client CPU (cores) "
          "| time in decoder / encoder calls |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    if counts[0] != 1:
        print(f"(no 1-stream row: the ratios below are to N = {counts[0]}, not to 1 stream)")
    base = raw_base = pipe_base = over_base = None
    for n, st, elapsed, mem, raw_tps, server in rows:
        tps = st.tokens / elapsed
        base, raw_base, pipe_base = base or tps, raw_base or raw_tps, pipe_base or server["pipeline"]
        over_base = over_base or server["overlap"]
        print(f"| {n} | {tps:,.0f} | {tps / base:.2f}x | {raw_tps:,.0f} ({raw_tps / raw_base:.2f}x) | "
              f"{server['pipeline']:,.0f} ({server['pipeline'] / pipe_base:.2f}x) | "
              f"{server['overlap']:,.0f} ({server['overlap'] / over_base:.2f}x) | {ms(st.gaps, 50):.3f} | "
              f"{ms(st.gaps, 99):.2f} | {ms(st.tpot, 50):.3f} | {ms(st.first, 50):.2f} | {ms(st.first, 99):.2f} | "
              f"{st.sentences} | {len(st.errors)} | {mem:.0f} | {server['batch']:.1f} | {server['cores']:.2f} / "
              f"{server['client']:.2f} | {100 * server['in_step']:.0f}% / {100 * server['in_encode']:.0f}% |")
    print()
    by_n = {n: (st.tokens / el, raw_tps) for n, st, el, _, raw_tps, _ in rows}
    errs = [e for _, st, *_ in rows for e in st.errors] + srv.errors
    print(f"target: zero errors -> {len(errs)} errors" + (f" (first: {errs[0]})" if errs else ""))
    if 1 in by_n and 32 in by_n:
        print(f"target: tokens/s at 32 streams >= 5x 1 stream -> {by_n[32][0] / by_n[1][0]:.2f}x "
              f"(the raw runtime's own ratio, DecodeBatch at 32 vs alone: {by_n[32][1] / by_n[1][1]:.2f}x)")
    print(f"target: per-token time at 1 stream within 1.20x of the raw runtime -> {tpot / raw_wall:.2f}x "
          f"(+{(tpot - raw_wall) * 1e6:.0f} us wall, +{(one['srv_cpu_per_token'] - raw_cpu) * 1e6:.0f} us server CPU per token)")
    for line in metrics.splitlines():
        if line.startswith(("qrnn_serve_batch_size_sum", "qrnn_serve_batch_size_count", "qrnn_serve_step_seconds_sum",
                            "qrnn_serve_step_seconds_count", "qrnn_serve_errors_total")):
            print("server metric:", line)


if __name__ == "__main__":
    _args.run(main)
