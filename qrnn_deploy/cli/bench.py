"""`qrnn-deploy bench`: QRNN vs LSTM (onnxruntime and PyTorch), encoding and streaming, with the
machine's floors; a table with ratios to the LSTM, CSV, JSON and PNG plots."""

from typing import Optional

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import check_threads, threads_option


@app.command()
def bench(quick: bool = typer.Option(False, "--quick", help="Fewer sizes and repeats: under 2 minutes on 2 cores."),
          threads: Optional[int] = threads_option(None, "Threads for onnxruntime and PyTorch (default: all cores)."),
          out: str = typer.Option("bench-results", "--out", help="Directory for bench.csv, bench.json, bench.md "
                                  "and the PNG plots."),
          no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
          smoke: bool = typer.Option(False, "--smoke", hidden=True, help="Seconds-long run for tests "
                                     "(also: QRNN_BENCH_SMOKE=1)."),
          no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs, CI).")):
    """Benchmark QRNN bundles (custom op, portable) and PyTorch QRNN against LSTM baselines.

    Encoding tokens/s over batch size, length and hidden size; streaming per-token p50/p99 (batch 1) and tokens/s (batch 32); the machine's GEMM rate and copy bandwidth; each QRNN's time outside its matrix products. Ratios are to onnxruntime's LSTM measured in the same run.
    """  # noqa: E501  (one line per paragraph: the help renderer keeps source line breaks)
    import os
    import sys

    # PyTorch's OpenMP threads spin-wait after each parallel region by default; interleaved with
    # onnxruntime calls on a few cores that turned a 0.2 ms LSTM step into tens of ms. The policy
    # is read when torch loads, so it is set here, before the import (unless the user chose one).
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from qrnn_deploy.benchmark import run, smoke_requested
    from qrnn_deploy.paths import output_dir

    check_threads(threads)
    out = output_dir(out, "--out directory")  # before the run, not after it
    mode = "smoke" if smoke or smoke_requested() else ("quick" if quick else "full")
    run(mode, threads=threads, out_dir=out, show_progress=not no_progress, plots=not no_plots)
