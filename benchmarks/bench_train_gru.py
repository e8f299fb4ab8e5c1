"""Training throughput: the QRNN translator vs GRU encoder-decoders with attention, same data, same machine.

Each model trains (Adam, gradient clipping 5, the same length-bucketed batches of the de-en
training split) for `--seconds` per round; rounds alternate between the models so that load from
other processes hits them alike. Printed: target characters per second (non-pad target symbols
incl. </s>) of each model, and each GRU's ratio to the QRNN.

GRU models (Luong-style attention, the fastest way to train a GRU translator): a unidirectional
GRU encoder; a GRU decoder run over the whole teacher-forced target at once; dot attention of
every decoder output over the encoder outputs; tanh(W [h; context]) -> logits. No input feeding,
which would force a step-by-step decoder loop and make the GRU slower still.

    python3 benchmarks/bench_train_gru.py --seconds 40 --rounds 2 --threads 1
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F
from torch import nn

from qrnn_deploy.data.dictionary import load_splits
from qrnn_deploy.nn.batching import collate, make_batches
from qrnn_deploy.nn.train import TrainConfig, build_model, count_parameters, loss_on, prepare_data
from qrnn_deploy.vocab import PAD
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)


class GRUSeq2Seq(nn.Module):
    """GRU encoder-decoder with dot attention; forward(src, src_lengths, tgt_in) -> logits [B, T, V]."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, layers: int):
        super().__init__()
        self.src_embed = nn.Embedding(vocab_size, embed)
        self.tgt_embed = nn.Embedding(vocab_size, embed)
        self.encoder = nn.GRU(embed, hidden, layers, batch_first=True)
        self.decoder = nn.GRU(embed, hidden, layers, batch_first=True)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, src, src_lengths, tgt_in):
        memory, h = self.encoder(self.src_embed(src))
        # The decoder starts from the encoder state at each row's last real position.
        rows = torch.arange(src.shape[0])
        last = memory[rows, src_lengths - 1]  # top layer; lower layers from h (padding is short)
        h0 = torch.cat([h[:-1], last[None]], 0).contiguous()
        dec, _ = self.decoder(self.tgt_embed(tgt_in), h0)
        scores = torch.bmm(dec, memory.transpose(1, 2))
        mask = torch.arange(src.shape[1])[None, :] < src_lengths[:, None]
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        ctx = torch.bmm(torch.softmax(scores, -1), memory)
        return self.out(torch.tanh(self.combine(torch.cat([dec, ctx], -1))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=_args.seconds, default=40.0, help="training seconds per model per round")
    ap.add_argument("--rounds", type=_args.count, default=2)
    ap.add_argument("--threads", type=_args.threads, default=2)
    ap.add_argument("--max-tokens", type=_args.count, default=6000)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(max_tokens=args.max_tokens)
    vocab, src, tgt, *_ = prepare_data(load_splits(), cfg)
    torch.manual_seed(0)
    models = {
        f"QRNN {cfg.num_layers}x{cfg.hidden_size} (shipped config)": build_model(cfg, len(vocab)),
        "GRU 4x256 + attention": GRUSeq2Seq(len(vocab), cfg.embed_size, 256, 4),
        "GRU 2x256 + attention": GRUSeq2Seq(len(vocab), cfg.embed_size, 256, 2),
    }
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    batches = make_batches(src, tgt, cfg.max_tokens, random.Random(0))
    chars = {k: 0 for k in models}
    secs = {k: 0.0 for k in models}
    pos = {k: 0 for k in models}

    def step(name):
        m, opt = models[name], opts[name]
        b = batches[pos[name] % len(batches)]
        pos[name] += 1
        s, sl, ti, to = collate(src, tgt, b)
        logits = m(s, sl, ti)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), to.reshape(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
        opt.step()
        return int((to != PAD).sum())

    for name in models:  # warm-up (allocator, thread pools) outside the timing
        step(name)
    for r in range(args.rounds):
        for name in models:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                chars[name] += step(name)
            secs[name] += time.perf_counter() - t0
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    base = next(iter(models))
    q = chars[base] / secs[base]
    print(f"\n{'model':36s} {'params':>10s} {'tgt chars/s':>12s} {'QRNN speed-up':>14s}")
    for name, m in models.items():
        rate = chars[name] / secs[name]
        print(f"{name:36s} {count_parameters(m):10,d} {rate:12,.0f} {q / rate:13.2f}x")
    print(f"\n{args.threads} thread(s), {args.seconds:.0f} s x {args.rounds} rounds per model, "
          f"batches of <= {cfg.max_tokens} padded symbols")


if __name__ == "__main__":
    _args.run(main)
