"""int8 weight quantization (`export --quantize int8`) against the float32 bundle of the same model.

The shipped de-en translator is exported twice with
the custom FoPool op: float32, and with its weight matrices as 8-bit blocks (MatMulNBits,
int8 activations per row and block; qrnn_deploy.export.quantize). Both bundles are measured in
this process, one onnxruntime thread, rounds alternating between them:

- graph file sizes;
- one translation alone: per-token decoder step (DecodeBatch with one greedy decoder) and the
  encoding of whole sentences, medians over the rounds;
- 32 translations stepped together (DecodeBatch at N = 32): tokens/s;
- the whole workload of N streams in one thread (pieces encoded with feed_batch, batched decoder
  steps), N = 1 and 32: tokens/s;
- quality on the test split (--limit pairs, greedy): chrF and BLEU with `evaluate`, and how many
  sentences translate to exactly the same text.

    python3 benchmarks/bench_quantize.py [--rounds 5 --seconds 3 --limit 1000 --block-size 128]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_serve import SENTENCES, split_pieces  # noqa: E402
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)


def export_pair(tmp: Path, block_size: int) -> dict:
    """{"float32": bundle dir, "int8": bundle dir} of the same model."""
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import load_checkpoint

    ckpt = REPO / "qrnn_deploy" / "pretrained" / "de-en.safetensors"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} is missing: this benchmark measures quantization on the shipped translator")
    out = {"float32": tmp / "f32", "int8": tmp / "int8"}
    model = load_checkpoint(ckpt)
    model = model[0] if isinstance(model, tuple) else model
    export_bundle(model, out["float32"], fo_pool="custom", verify=False)
    export_bundle(model, out["int8"], fo_pool="custom", quantize="int8", quantize_block=block_size)
    return out


def per_token(tr, rounds_sentences) -> tuple[float, float]:
    """(median seconds per decoder step alone, median seconds to encode a sentence)."""
    steps, encs = [], []
    for s in rounds_sentences:
        ts = tr.stream()
        t0 = time.perf_counter()
        ts.feed(s)
        encs.append(time.perf_counter() - t0)
        d = ts.decoder(max_len=60)
        batch = tr.decode_batch()
        n = 0
        t0 = time.perf_counter()
        while not d.done:
            batch.step([d])
            n += 1
        steps.append((time.perf_counter() - t0) / max(n, 1))
        ts.close()
    return statistics.median(steps), statistics.median(encs)


def decode_batch_rate(tr, n: int, seconds: float) -> float:
    """Tokens/s of DecodeBatch stepping n translations together (finished ones replaced)."""
    srcs = [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    streams = []
    for s in srcs:
        ts = tr.stream()
        ts.feed(s)
        streams.append(ts)
    decs = [ts.decoder(max_len=60) for ts in streams]
    batch = tr.decode_batch()
    tokens, i = 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for toks in batch.step(decs):
            tokens += len(toks)
        for j, d in enumerate(decs):
            if d.done:
                decs[j] = streams[(i + j) % n].decoder(max_len=60)
                i += 1
    return tokens / (time.perf_counter() - t0)


def pipeline_rate(tr, n: int, seconds: float, seed: int = 0) -> float:
    """Tokens/s of n streams' whole work in one thread: pieces encoded together, then steps."""
    rng = random.Random(seed)

    class Slot:
        def new(self):
            self.pieces = split_pieces(rng.choice(SENTENCES), rng)
            self.ts, self.dec = tr.stream(), None

    slots = [Slot() for _ in range(n)]
    for s in slots:
        s.new()
    batch = tr.decode_batch()
    tokens = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        feeds = [s for s in slots if s.pieces]
        if feeds:
            tr.feed_batch([(s.ts, s.pieces.pop(0)) for s in feeds])
            for s in feeds:
                if not s.pieces:
                    s.dec = s.ts.decoder(max_len=60)
        act = [s for s in slots if s.dec is not None]
        if act:
            for toks in batch.step([s.dec for s in act]):
                tokens += len(toks)
            for s in act:
                if s.dec.done:
                    s.ts.close()
                    s.new()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=_args.count, default=5)
    ap.add_argument("--seconds", type=_args.seconds, default=3.0, help="per throughput measurement")
    ap.add_argument("--limit", type=_args.count0, default=1000, help="test pairs for the quality rows (0: skip)")
    ap.add_argument("--block-size", type=_args.count, default=128)
    args = ap.parse_args()

    from qrnn_deploy.runtime import load_bundle

    with tempfile.TemporaryDirectory() as tmp:
        dirs = export_pair(Path(tmp), args.block_size)
        trs = {k: load_bundle(d, threads=1).translator() for k, d in dirs.items()}
        sizes = {k: sum(p.stat().st_size for p in d.glob("*.onnx")) for k, d in dirs.items()}
        res = {k: {"step": [], "enc": [], "db1": [], "db32": [], "p1": [], "p32": []} for k in dirs}
        for r in range(args.rounds):
            for k, tr in (trs.items() if r % 2 == 0 else reversed(list(trs.items()))):
                st, en = per_token(tr, SENTENCES)
                res[k]["step"].append(st)
                res[k]["enc"].append(en)
                res[k]["db32"].append(decode_batch_rate(tr, 32, args.seconds))
                res[k]["p1"].append(pipeline_rate(tr, 1, args.seconds, r))
                res[k]["p32"].append(pipeline_rate(tr, 32, args.seconds, r))
        med = {k: {m: statistics.median(v) for m, v in d.items() if v} for k, d in res.items()}
        quality = {}
        if args.limit:
            from qrnn_deploy.cli.evaluate import evaluate_model

            for k, d in dirs.items():
                quality[k] = evaluate_model(d, limit=args.limit, threads=1, show=10 ** 9)
        f, q = med["float32"], med["int8"]
        print(f"model: shipped de-en; block size {args.block_size}; onnxruntime 1 thread; "
              f"{args.rounds} rounds alternating")
        print("| measure | float32 | int8 | int8 / float32 |")
        print("|---|---:|---:|---:|")
        print(f"| graph files (MB) | {sizes['float32'] / 1e6:.2f} | {sizes['int8'] / 1e6:.2f} | "
              f"{sizes['int8'] / sizes['float32']:.2f}x |")
        print(f"| decoder step alone (us per token) | {f['step'] * 1e6:.1f} | {q['step'] * 1e6:.1f} | "
              f"{q['step'] / f['step']:.2f}x |")
        print(f"| encode one sentence (us) | {f['enc'] * 1e6:.0f} | {q['enc'] * 1e6:.0f} | "
              f"{q['enc'] / f['enc']:.2f}x |")
        print(f"| DecodeBatch 32 translations (tokens/s) | {f['db32']:,.0f} | {q['db32']:,.0f} | "
              f"{q['db32'] / f['db32']:.2f}x |")
        print(f"| whole pipeline, 1 stream (tokens/s) | {f['p1']:,.0f} | {q['p1']:,.0f} | {q['p1'] / f['p1']:.2f}x |")
        print(f"| whole pipeline, 32 streams (tokens/s) | {f['p32']:,.0f} | {q['p32']:,.0f} | "
              f"{q['p32'] / f['p32']:.2f}x |")
        if quality:
            a, b = quality["float32"], quality["int8"]
            same = sum(x["hyp"] == y["hyp"] for x, y in zip(a["examples"], b["examples"]))
            print(f"| chrF, {a['pairs']} test pairs, greedy | {a['chrf']:.2f} | {b['chrf']:.2f} | "
                  f"{b['chrf'] - a['chrf']:+.2f} |")
            print(f"| BLEU | {a['bleu']:.2f} | {b['bleu']:.2f} | {b['bleu'] - a['bleu']:+.2f} |")
            print(f"| same translation as float32 | | {same} / {len(a['examples'])} | |")


if __name__ == "__main__":
    _args.run(main)
