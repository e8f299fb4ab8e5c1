"""The streaming runtime (numpy + onnxruntime) beside PyTorch eager on the same weights.

1. Per-token decode latency at batch 1 (p50, p99): one greedy decoder step through the runtime
   (custom-op bundle, portable bundle) and through QRNNSeq2Seq.decode in PyTorch eager; beam 4 too.
2. Time from the last source chunk to the first target token, when the source arrives in chunks:
   incremental encoding (each chunk advances the encoder; the last chunk costs one chunk) vs
   re-encoding the whole source on each chunk (the last chunk costs the whole source); also the
   encoder time summed over all chunks. Runtime (custom op) and PyTorch eager, same weights.

The model is paper-shaped (4 layers of 320, encoder windows [6, 2, 2, 2], decoder window 2) with
random weights; </s> is suppressed so every sentence decodes the full --tokens steps.
This benchmark imports torch (for the baseline and the export); the runtime itself does not.

    python3 benchmarks/bench_runtime.py [--threads 1 --src-len 120 --chunk 10 --tokens 100 --sentences 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qrnn_deploy.export import export_bundle
from qrnn_deploy.nn import QRNNSeq2Seq
from qrnn_deploy.runtime import load_bundle
from qrnn_deploy.vocab import BOS, EOS
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)


def pct(xs, q):
    return float(np.percentile(np.asarray(xs) * 1e3, q))


def runtime_step_times(translator, sources, tokens, beam):
    """Seconds per decoder step (each DecodeBatch.step of one translation)."""
    times = []
    for src in sources:
        ts = translator.stream()
        ts.feed(src)
        d = ts.decoder(beam=beam, max_len=tokens)
        batch = translator.decode_batch()
        while not d.done:
            t = time.perf_counter()
            batch.step([d])
            times.append(time.perf_counter() - t)
    return times


@torch.no_grad()
def torch_greedy_step_times(model, sources, tokens):
    """The loop of QRNNSeq2Seq.greedy_decode, timed per step (decode + argmax)."""
    times = []
    for src in sources:
        memory, cond, _ = model.encode(torch.tensor([src]))
        state, tok = None, BOS
        for _ in range(tokens):
            t = time.perf_counter()
            logits, state = model.decode(torch.tensor([[tok]]), memory, None, cond, state)
            tok = int(logits[0, -1].argmax())
            times.append(time.perf_counter() - t)
    return times


@torch.no_grad()
def torch_beam_step_times(model, sources, tokens, beam):
    """beam_search's per-step work in PyTorch eager: decode K rows, log_softmax, beam_step, reorder."""
    from qrnn_deploy.decoding import beam_step
    from qrnn_deploy.nn.layers import QRNNState

    times = []
    for src in sources:
        memory, cond, _ = model.encode(torch.tensor([src]))
        live, finished, state = [(0.0, [])], [], None
        for step in range(tokens):
            t = time.perf_counter()
            K = len(live)
            toks = torch.tensor([[seq[-1] if seq else BOS] for _, seq in live])
            logits, state = model.decode(toks, memory.expand(K, -1, -1), None, [c.expand(K, -1) for c in cond], state)
            logp = torch.log_softmax(logits[:, -1].double(), -1).numpy()
            live_next, fin = beam_step([s for s, _ in live], logp, beam, len(finished), step + 1 == tokens)
            finished += [(s, live[p][1]) for s, p, _ in fin]
            if live_next:
                live = [(s, live[p][1] + [t_]) for s, p, t_ in live_next]
                idx = torch.tensor([p for _, p, _ in live_next])
                state = [QRNNState(None if s.conv_state is None else s.conv_state[idx], s.c[idx]) for s in state]
            times.append(time.perf_counter() - t)
            if not live_next:
                break
    return times


def runtime_first_token(translator, src, chunk, incremental):
    """(seconds from the last chunk's arrival to the first target token, encoder seconds summed
    over all chunks)."""
    enc_total = 0.0
    ts = None
    for a in range(0, len(src), chunk):
        last = a + chunk >= len(src)
        t = time.perf_counter()
        if incremental:
            ts = ts or translator.stream()
            ts.feed(src[a:a + chunk])
        else:
            ts = translator.stream()
            ts.feed(src[:a + chunk])
        enc_total += time.perf_counter() - t
        if last:
            d = ts.decoder(beam=1, max_len=5)
            batch = translator.decode_batch()
            while not batch.step([d])[0]:
                pass
            first = time.perf_counter() - t
    return first, enc_total


@torch.no_grad()
def torch_first_token(model, src, chunk, incremental):
    enc_total, state, mems, first = 0.0, None, [], None
    for a in range(0, len(src), chunk):
        last = a + chunk >= len(src)
        t = time.perf_counter()
        if incremental:
            m, cond, state = model.encode(torch.tensor([src[a:a + chunk]]), state)
            mems.append(m)
            memory = torch.cat(mems, 1)
        else:
            memory, cond, _ = model.encode(torch.tensor([src[:a + chunk]]))
        enc_total += time.perf_counter() - t
        if last:
            logits, _ = model.decode(torch.tensor([[BOS]]), memory, None, cond, None)
            int(logits[0, -1].argmax())
            first = time.perf_counter() - t
    return first, enc_total


def median(xs):
    return float(np.median(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=_args.threads, default=1)
    ap.add_argument("--layers", type=_args.count, default=4)
    ap.add_argument("--hidden", type=_args.count, default=320)
    ap.add_argument("--vocab", type=_args.count, default=120)
    ap.add_argument("--src-len", type=_args.count, default=120)
    ap.add_argument("--chunk", type=_args.count, default=10)
    ap.add_argument("--tokens", type=_args.count, default=100)
    ap.add_argument("--sentences", type=_args.count, default=5)
    ap.add_argument("--beam", type=_args.count, default=4)
    ap.add_argument("--runs", type=_args.count, default=20, help="first-token runs per mode (medians reported)")
    ap.add_argument("--batch", type=_args.count, default=8, help="concurrent translations for section 3")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = QRNNSeq2Seq(a.vocab, a.vocab, embed_size=64, hidden_size=a.hidden, num_layers=a.layers).eval()
    with torch.no_grad():
        model.out.bias[EOS] = -1e4  # every sentence decodes --tokens steps
    rng = np.random.default_rng(0)
    sources = [rng.integers(4, a.vocab, size=a.src_len).tolist() for _ in range(a.sentences)]

    with tempfile.TemporaryDirectory() as tmp:
        translators = {}
        for variant in ("custom", "portable"):
            try:
                export_bundle(model, Path(tmp) / variant, fo_pool=variant, verify=False)
                translators[variant] = load_bundle(Path(tmp) / variant, threads=a.threads).translator()
            except Exception as e:  # the custom-op library may not be built on this machine
                print(f"(skipping the {variant} bundle: {e})")
        print(f"model: {a.layers} layers x {a.hidden}, vocab {a.vocab}; source {a.src_len} symbols; "
              f"{a.tokens} tokens x {a.sentences} sentences; {a.threads} thread(s)")

        print("\n1. decode step latency, batch 1 (ms)")
        print(f"{'':34s} {'p50':>8s} {'p99':>8s} {'vs torch p50':>13s}")
        for name, beam in (("greedy", 1), (f"beam {a.beam}", a.beam)):
            torch_fn = (lambda: torch_greedy_step_times(model, sources, a.tokens)) if beam == 1 else \
                (lambda: torch_beam_step_times(model, sources, a.tokens, beam))
            torch_fn()  # warm-up
            base = torch_fn()
            rows = [(f"PyTorch eager, {name}", base)]
            for variant, tr in translators.items():
                runtime_step_times(tr, sources[:1], 10, beam)  # warm-up
                rows.append((f"runtime ({variant}), {name}", runtime_step_times(tr, sources, a.tokens, beam)))
            for label, ts in rows:
                print(f"{label:34s} {pct(ts, 50):8.3f} {pct(ts, 99):8.3f} {pct(base, 50) / pct(ts, 50):12.2f}x")

        print(f"\n2. last source chunk -> first target token, source of {a.src_len} in chunks of {a.chunk} (ms)")
        print(f"{'':34s} {'first token':>12s} {'(best)':>8s} {'encoder, all chunks':>20s} {'(best)':>8s}")
        results = {}
        for label, fn in [("PyTorch eager", lambda inc, s: torch_first_token(model, s, a.chunk, inc))] + \
                [(f"runtime ({v})", (lambda tr: lambda inc, s: runtime_first_token(tr, s, a.chunk, inc))(tr))
                 for v, tr in translators.items()]:
            for inc in (False, True):
                fn(inc, sources[0])  # warm-up
                runs = [fn(inc, sources[i % len(sources)]) for i in range(a.runs)]
                # The best run is the cost without other processes' time slices (a shared machine).
                results[(label, inc)] = (median([r[0] for r in runs]), min(r[0] for r in runs),
                                         median([r[1] for r in runs]), min(r[1] for r in runs))
                f, fb, e, eb = results[(label, inc)]
                print(f"{label + (', incremental' if inc else ', re-encode'):34s} {f * 1e3:12.3f} {fb * 1e3:8.3f} "
                      f"{e * 1e3:20.3f} {eb * 1e3:8.3f}")
            r0, r1 = results[(label, False)], results[(label, True)]
            print(f"{label + ': incremental speed-up':34s} " + " ".join(
                f"{x / y:{w - 1}.2f}x" for x, y, w in zip(r0, r1, (12, 8, 20, 8))))

        print(f"\n3. {a.batch} concurrent greedy translations (sources of different lengths), per step (ms)")
        srcs = [rng.integers(4, a.vocab, size=int(n)).tolist() for n in np.linspace(a.src_len // 4, a.src_len, a.batch)]
        for variant, tr in translators.items():
            def decoders():
                out = []
                for src in srcs:
                    ts = tr.stream()
                    ts.feed(src)
                    out.append(ts.decoder(beam=1, max_len=a.tokens))
                return out

            def one_call_per_translation():
                ds, batches, times = decoders(), [tr.decode_batch() for _ in srcs], []
                while not ds[0].done:
                    t = time.perf_counter()
                    for d, b in zip(ds, batches):
                        b.step([d])
                    times.append(time.perf_counter() - t)
                return times

            def one_call_for_all():
                ds, b, times = decoders(), tr.decode_batch(), []
                while not ds[0].done:
                    t = time.perf_counter()
                    b.step(ds)
                    times.append(time.perf_counter() - t)
                return times

            one_call_per_translation(), one_call_for_all()  # warm-up
            t_sep, t_bat = one_call_per_translation(), one_call_for_all()
            print(f"runtime ({variant}): {a.batch} calls {pct(t_sep, 50):.3f}, one DecodeBatch call "
                  f"{pct(t_bat, 50):.3f} -> {pct(t_sep, 50) / pct(t_bat, 50):.2f}x")


if __name__ == "__main__":
    _args.run(main)
