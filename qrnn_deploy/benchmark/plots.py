"""PNG plots of a benchmark run (matplotlib, Agg backend: no display needed).

- encode_speedup_heatmap.png: QRNN bundle speedup over onnxruntime's LSTM across batch size and
  sequence length, one panel per (H, window): the layout of Figure 4 of Bradbury et al. (2017).
- stream_latency.png: per-token latency at batch 1 (bars: p50, whiskers up to p99) and tokens/s
  at the streaming batch size, per implementation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qrnn_deploy.benchmark.report import BASELINE, PREFERRED_BUNDLES


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def speedup_heatmap(recs: list, path: Path, layers: int) -> Path:
    """One heat map per (H, window) of the held QRNN bundle's speedup over lstm-ort, B rows x T columns."""
    plt = _plt()
    enc = [r for r in recs if r["section"] == "encode"]
    bundle = next((b for b in PREFERRED_BUNDLES if any(r["impl"] == b for r in enc)), None)
    if bundle is None:
        bundle = "qrnn-torch"
    panels = sorted({(r["H"], r["window"]) for r in enc if r["impl"] == bundle})
    Bs = sorted({r["B"] for r in enc})
    Ts = sorted({r["T"] for r in enc})
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.2 * max(1, len(panels)) + 0.8, 3.2),
                             squeeze=False)
    # A log scale centred on 1x: slower-than-LSTM cells red, faster blue, one outlier cannot wash
    # out the rest (values beyond the range are clipped in colour, the label still says them).
    from matplotlib.colors import LogNorm

    vals = [r["speedup_vs_lstm_ort"] for r in enc if r["impl"] == bundle and r.get("speedup_vs_lstm_ort")]
    span = min(16.0, max([4.0] + [max(v, 1.0 / v) for v in vals]))
    norm = LogNorm(vmin=1.0 / span, vmax=span, clip=True)
    im = None
    for n, (ax, (H, k)) in enumerate(zip(axes[0], panels)):
        grid = np.full((len(Bs), len(Ts)), np.nan)
        for r in enc:
            if r["impl"] == bundle and r["H"] == H and r["window"] == k and r.get("speedup_vs_lstm_ort"):
                grid[Bs.index(r["B"]), Ts.index(r["T"])] = r["speedup_vs_lstm_ort"]
        im = ax.imshow(grid, cmap="RdBu", norm=norm, origin="lower", aspect="auto")
        for i in range(len(Bs)):
            for j in range(len(Ts)):
                if np.isfinite(grid[i, j]):
                    far = abs(np.log(grid[i, j])) > 0.6 * np.log(span)
                    ax.text(j, i, f"{grid[i, j]:.1f}x", ha="center", va="center",
                            color="white" if far else "black", fontsize=9)
        ax.set_xticks(range(len(Ts)), [str(t) for t in Ts])
        ax.set_yticks(range(len(Bs)), [str(b) for b in Bs])
        ax.set_xlabel("sequence length T")
        if n == 0:
            ax.set_ylabel("batch size B")
        ax.set_title(f"H={H}, window {k}", fontsize=10)
    if im is not None:
        cb = fig.colorbar(im, ax=axes[0].tolist(), label=f"speedup over {BASELINE} (log scale)")
        ticks = [t for t in (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16) if 1 / span <= t <= span]
        cb.set_ticks(ticks, labels=[f"{t:g}x" for t in ticks])
        cb.minorticks_off()
    fig.suptitle(f"{bundle} vs onnxruntime LSTM, {layers}-layer LM encoding", fontsize=11, y=1.06)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def latency_bars(recs: list, path: Path, stream_batch: int) -> Path:
    """Per-token p50 latency bars (whisker to p99) at batch 1 and tokens/s at `stream_batch`."""
    plt = _plt()
    lat = [r for r in recs if r["section"] == "stream_latency"]
    thr = {(r["H"], r["window"], r["impl"]): r for r in recs if r["section"] == "stream_batch"}
    lat.sort(key=lambda r: (r["H"], r["window"] or 0, r["family"] != "lstm", r["impl"]))
    labels = [f"{r['impl']}\nH={r['H']}" + ("" if r["window"] is None else f" k={r['window']}") for r in lat]
    colors = ["tab:gray" if r["family"] == "lstm" else "tab:blue" for r in lat]
    x = np.arange(len(lat))
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(6.0, 0.75 * len(lat) + 2), 7.5))
    p50 = np.array([r["p50_ms"] for r in lat])
    p99 = np.array([r["p99_ms"] for r in lat])
    a1.bar(x, p50, color=colors)
    a1.errorbar(x, p50, yerr=[np.zeros_like(p50), np.maximum(p99 - p50, 0)], fmt="none", ecolor="black",
                capsize=3, lw=1)
    a1.set_yscale("log")  # eager PyTorch LSTM steps are 10-30x the others: a linear axis hides the rest
    a1.set_ylabel("ms per token (p50, whisker p99; log)")
    a1.set_title("Streaming decode, batch 1: per-token latency (lower is better)", fontsize=10)
    a1.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    tps = [thr.get((r["H"], r["window"], r["impl"]), {}).get("tokens_per_s", np.nan) for r in lat]
    a2.bar(x, tps, color=colors)
    a2.set_ylabel("tokens / s")
    a2.set_title(f"Streaming decode, batch {stream_batch}: throughput (higher is better)", fontsize=10)
    a2.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
