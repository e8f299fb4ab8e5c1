"""`qrnn-deploy bench`: QRNN bundles (custom op, portable) and PyTorch eager QRNN side by side with
the LSTM baselines (onnxruntime's LSTM operator, PyTorch eager nn.LSTM), with the machine's floors.

Modules: timing (interleaved rounds), floors (GEMM rate, copy bandwidth, matrix products alone),
lstm (the baselines), contenders (one object per implementation), suite (what is run), report
(ratios, targets, table, CSV, JSON), plots (PNG).

    from qrnn_deploy.benchmark import run
    paths = run("quick", threads=2, out_dir="bench-out")
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Optional

from qrnn_deploy.benchmark.suite import PRESETS, BenchConfig, BenchResult, preset, run_bench, total_work
from qrnn_deploy.paths import output_dir

# Setting this to 1 turns any `qrnn-deploy bench` into the seconds-long smoke run (tests, CI).
SMOKE_ENV = "QRNN_BENCH_SMOKE"


def run(mode: str = "full", threads: Optional[int] = None, out_dir="bench-results", console=None,
        show_progress: bool = True, plots: bool = True) -> dict:
    """Runs preset `mode` ('full', 'quick', 'smoke'), prints the tables, writes
    out_dir/{bench.csv, bench.json, bench.md, encode_speedup_heatmap.png, stream_latency.png}.

    Returns {"csv", "json", "markdown", "heatmap", "latency": Path, "result": BenchResult, "targets": dict}.
    """
    from rich.console import Console

    from qrnn_deploy.benchmark import plots as plotting
    from qrnn_deploy.benchmark import report

    # A pipe or log file gets 80 columns by default: too narrow for the tables.
    console = console or (Console() if sys.stdout.isatty() else Console(width=150))
    cfg = preset(mode, threads)
    out = output_dir(out_dir, "results directory")
    with tempfile.TemporaryDirectory(prefix="qrnn-bench-") as work:
        res = _run_with_progress(cfg, Path(work), console, show_progress)
    recs = report.derive(res)
    tgt = report.targets(recs)
    report.render(res, recs, tgt, console)
    paths = {"csv": report.write_csv(recs, out / "bench.csv"),
             "json": report.write_json(res, recs, tgt, out / "bench.json"),
             "markdown": report.write_markdown(res, recs, tgt, out / "bench.md")}
    if plots:
        paths["heatmap"] = plotting.speedup_heatmap(recs, out / "encode_speedup_heatmap.png", cfg.layers)
        paths["latency"] = plotting.latency_bars(recs, out / "stream_latency.png", cfg.stream_batch)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return {**paths, "result": res, "targets": tgt}


def _run_with_progress(cfg: BenchConfig, work: Path, console, show: bool) -> BenchResult:
    if not show:
        return run_bench(cfg, work)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("[bold]bench[/] {task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/"
                  "{task.total:.0f}"), TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task(f"{cfg.mode}", total=total_work(cfg))

        def progress(what: str, advance: float) -> None:
            bar.update(task, description=what, advance=advance)

        return run_bench(cfg, work, progress)


def smoke_requested() -> bool:
    return os.environ.get(SMOKE_ENV, "").strip() not in ("", "0")


__all__ = ["run", "run_bench", "preset", "BenchConfig", "BenchResult", "PRESETS", "SMOKE_ENV", "smoke_requested"]
