"""Per-token decode latency: the C++ runtime (runtime/, qrnn_stream_bench) beside the Python
runtime (qrnn_deploy.runtime, numpy + onnxruntime) on the same bundle and thread count.

One paper-shaped QRNNSeq2Seq (4 layers of 320, embed 64, encoder windows [6, 2, 2, 2], decoder
window 2, vocab 120, random weights, </s> suppressed so every step counts) is exported once
(custom-op bundle by default). For each thread count and decoder (greedy, beam 4), both runtimes
decode the same source step by step and time each step: one decoder graph call plus the host work
(argmax, or beam bookkeeping and state reordering). Python steps are `DecodeBatch.step` of a
GreedyDecoder / BeamDecoder; C++ steps are `GreedyDecoder::step` / `BeamDecoder::step`. The first
--warmup steps are not timed. Both runtimes share onnxruntime 1.32 (the wheel's library). The
last column is the floor: the decoder graph call alone at batch 1 (C++ backend run on fixed
inputs), so a greedy row's C++ p50 minus it is the C++ runtime's own per-step cost.

    python3 benchmarks/bench_cpp_runtime.py [--threads 1 2] [--tokens 500] [--warmup 20] [--fo-pool custom]

Needs the C++ runtime built (bash scripts/build_cpp_runtime.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNSeq2Seq
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.vocab import BOS, EOS, CharVocab
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)

REPO = Path(__file__).resolve().parents[1]
SOURCE = "Guten Morgen, wie geht es dir heute? Das Wetter ist schoen."


def make_bundle(out: Path, fo_pool: str) -> Path:
    torch.manual_seed(0)
    vocab = CharVocab(["<pad>", "<unk>", "<s>", "</s>"] + list(string.printable[:95]))
    m = QRNNSeq2Seq(120, 120, embed_size=64, hidden_size=320, num_layers=4, encoder_window=[6, 2, 2, 2],
                    decoder_window=2).eval()
    with torch.no_grad():
        m.out.bias[EOS] -= 1e4  # never ends: every sentence runs the whole step budget
        m.out.bias[BOS] -= 1e4
    export_bundle(m, out, fo_pool=fo_pool, verify=False, vocab=vocab)
    return out


def python_steps(bundle: Path, threads: int, beam: int, tokens: int, warmup: int) -> list:
    """Seconds per decoder step of the Python runtime (same protocol as qrnn_stream_bench)."""
    tr = load_bundle(bundle, threads=threads).translator()
    times, step = [], 0
    ts = tr.stream()
    ts.feed(SOURCE)
    while step < warmup + tokens:
        ts.reset()
        ts.feed(SOURCE)
        d = ts.decoder(beam=beam, max_len=warmup + tokens)
        batch = tr.decode_batch()
        while step < warmup + tokens and not d.done:
            t = time.perf_counter()
            batch.step([d])
            dt = time.perf_counter() - t
            if step >= warmup:
                times.append(dt * 1e3)
            step += 1
    return times


def cpp_figures(prog: Path, bundle: Path, threads: int, beam: int, tokens: int, warmup: int) -> dict:
    r = subprocess.run([str(prog), str(bundle), "--threads", str(threads), "--beam", str(beam), "--tokens",
                        str(tokens), "--warmup", str(warmup), "--src", SOURCE, "--json"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"qrnn_stream_bench failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=_args.threads, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=_args.count, default=500)
    ap.add_argument("--warmup", type=_args.count0, default=20)
    ap.add_argument("--fo-pool", choices=["custom", "portable"], default="custom")
    ap.add_argument("--build", type=Path, default=REPO / "runtime" / "build")
    args = ap.parse_args()
    prog = args.build / "qrnn_stream_bench"
    if not prog.is_file():
        sys.exit(f"{prog} is not built: run `bash scripts/build_cpp_runtime.sh` first")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = make_bundle(Path(tmp) / "bundle", args.fo_pool)
        rows = []
        for threads in args.threads:
            for beam in (1, 4):
                c = cpp_figures(prog, bundle, threads, beam, args.tokens, args.warmup)
                p = python_steps(bundle, threads, beam, args.tokens, args.warmup)
                rows.append((threads, beam, float(np.percentile(p, 50)), float(np.percentile(p, 99)),
                             c["p50_ms"], c["p99_ms"], c["graph_call_p50_ms"]))
    print(f"per-step decode latency, ms ({args.tokens} timed steps per row, {args.fo_pool} bundle, "
          f"load average {os.getloadavg()[0]:.1f})")
    print("| threads | decoder | Python p50 | Python p99 | C++ p50 | C++ p99 | Python p50 / C++ p50 "
          "| graph call p50 (batch 1) |")
    print("|---------|---------|------------|------------|---------|---------|----------------------"
          "|--------------------------|")
    for threads, beam, pp50, pp99, cp50, cp99, floor in rows:
        dec = "greedy" if beam == 1 else f"beam {beam}"
        print(f"| {threads} | {dec} | {pp50:.3f} | {pp99:.3f} | {cp50:.3f} | {cp99:.3f} | {pp50 / cp50:.2f}x "
              f"| {floor:.3f} |")


if __name__ == "__main__":
    _args.run(main)
