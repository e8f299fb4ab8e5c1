"""The portable FoPool (standard ONNX operators) against the custom op (libqrnn_ort.so), same model,
same onnxruntime, same thread count: time per graph call of FoPool alone (a graph holding only the
pooling), of a streaming language model and of the seq2seq decoder, for one-token steps and for
longer chunks.

    python3 benchmarks/bench_export_variants.py [--hidden 256 --layers 2 --threads 1 --repeat 30]

Prints ms per call for both variants and the ratio portable / custom (the custom op is the baseline).
Needs the custom-op library (bash scripts/build_plugins.sh).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qrnn_deploy.export import export_bundle
from qrnn_deploy.export.verify import ort_runner
from qrnn_deploy.nn import QRNNLanguageModel, QRNNSeq2Seq
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)


def timeit(fn, repeat):
    for _ in range(3):
        fn()  # warm-up (allocations, first-run kernels)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def zeros(spec, B):
    return {s.name: np.zeros([B if d == "B" else d for d in s.shape], np.float32) for s in spec.states}


def pool_graph(variant, pooling, H):
    """A graph holding only FoPool: gates [B, T, P*H], c0 [B, H] -> h, c_last."""
    from qrnn_deploy.export.builder import GraphBuilder, make_model
    from qrnn_deploy.export.nodes import emit_fo_pool
    from qrnn_deploy.export.schema import POOLING_GATES, register_fo_pool_schema

    register_fo_pool_schema()
    b = GraphBuilder("fo_pool")
    b.add_input("gates", "float32", ["B", "T", POOLING_GATES[pooling] * H])
    b.add_input("c0", "float32", ["B", H])
    emit_fo_pool(b, "gates", "c0", pooling, H, variant, h_out="h", c_out="c_last")
    b.add_output("h", "float32", ["B", "T", H])
    b.add_output("c_last", "float32", ["B", H])
    return make_model(b.graph(), 17, [("qrnn", 1)] if variant == "custom" else [])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=_args.count, default=256)
    ap.add_argument("--embed", type=_args.count, default=128)
    ap.add_argument("--layers", type=_args.count, default=2)
    ap.add_argument("--vocab", type=_args.count, default=96)
    ap.add_argument("--pooling", default="fo")
    ap.add_argument("--threads", type=_args.threads, default=1)
    ap.add_argument("--repeat", type=_args.count, default=30)
    a = ap.parse_args()
    torch.manual_seed(0)
    lm = QRNNLanguageModel(a.vocab, a.embed, a.hidden, a.layers, window=[2] + [1] * (a.layers - 1),
                           pooling=a.pooling).eval()
    s2s = QRNNSeq2Seq(a.vocab, a.vocab, embed_size=a.embed, hidden_size=a.hidden, num_layers=a.layers,
                      pooling=a.pooling).eval()
    rng = np.random.default_rng(0)
    S = 40
    print(f"hidden {a.hidden}, embed {a.embed}, layers {a.layers}, pooling {a.pooling}, "
          f"onnxruntime CPU, {a.threads} thread(s), median of {a.repeat}")
    print(f"{'graph':<10}{'B':>4}{'Tc':>6}{'custom ms':>12}{'portable ms':>13}{'portable/custom':>17}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for variant in ("custom", "portable"):
            for name, model in (("lm", lm), ("s2s", s2s)):
                out = Path(tmp) / f"{name}_{variant}"
                man = export_bundle(model, out, fo_pool=variant, verify=False)
                for role, g in man.graphs.items():
                    runs[(role, variant)] = (ort_runner(out / g.file, variant == "custom", threads=a.threads), g)
        for variant in ("custom", "portable"):
            path = Path(tmp) / f"pool_{variant}.onnx"
            path.write_bytes(pool_graph(variant, a.pooling, a.hidden).SerializeToString())
            runs[("fo_pool", variant)] = (ort_runner(path, variant == "custom", threads=a.threads), None)
        for role, B, T in [("fo_pool", 1, 1), ("fo_pool", 8, 1), ("fo_pool", 1, 32), ("fo_pool", 8, 32),
                           ("fo_pool", 1, 256), ("fo_pool", 8, 256), ("lm", 1, 1), ("lm", 8, 1), ("lm", 1, 32), ("lm", 8, 32), ("lm", 1, 256),
                           ("decoder", 1, 1), ("decoder", 8, 1), ("decoder", 1, 16)]:
            if role == "fo_pool":
                P = {"f": 2, "fo": 3, "ifo": 4}[a.pooling]
                feeds = {"gates": rng.standard_normal((B, T, P * a.hidden)).astype(np.float32) * 2,
                         "c0": rng.standard_normal((B, a.hidden)).astype(np.float32)}
            else:
                feeds = {("tokens" if role == "lm" else "tgt"): rng.integers(0, a.vocab, (B, T))}
            if role == "decoder":
                P = s2s.cond_proj[0].out_features
                feeds.update({"memory": rng.standard_normal((B, S, a.hidden)).astype(np.float32),
                              "memory_mask": np.ones((B, S), np.float32)})
                feeds.update({f"cond_{l}": rng.standard_normal((B, P)).astype(np.float32) for l in range(a.layers)})
            ms = {}
            outs = {}
            for variant in ("custom", "portable"):
                run, spec = runs[(role, variant)]
                f = {**feeds, **(zeros(spec, B) if spec else {})}
                outs[variant] = run(f)["h" if role == "fo_pool" else "logits"]
                ms[variant] = timeit(lambda: run(f), a.repeat)
            err = float(np.max(np.abs(outs["custom"] - outs["portable"])))
            assert err < 1e-4, f"variants disagree by {err}"
            print(f"{role:<10}{B:>4}{T:>6}{ms['custom']:>12.3f}{ms['portable']:>13.3f}"
                  f"{ms['portable'] / ms['custom']:>16.2f}x")


if __name__ == "__main__":
    _args.run(main)
