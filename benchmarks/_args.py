"""Argument types and the error wrapper shared by the benchmark scripts: a bad value is argparse's
usage line and one `error:` line with exit 2 before any work starts, never a traceback."""

from __future__ import annotations

import argparse
import math
import sys

from qrnn_deploy.errors import QRNNError
from qrnn_deploy.limits import MAX_THREADS


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def count(text: str) -> int:
    """An integer >= 1 (sizes, repeats, rounds)."""
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return v


def count0(text: str) -> int:
    """An integer >= 0 (0 = skip)."""
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def threads(text: str) -> int:
    """A thread count in 1..MAX_THREADS."""
    v = _int(text)
    if not 1 <= v <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be in 1..{MAX_THREADS}, got {text!r}")
    return v


def seconds(text: str) -> float:
    """A finite number of seconds > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def counts(text: str) -> list[int]:
    """A comma-separated list of integers >= 1, at least one, sorted and without repeats."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of integers >= 1, got {text!r}")
    return sorted({count(p) for p in parts})


def run(main) -> None:
    """Runs a script's `main`; a library error (a bad model size, a missing build) is one line."""
    try:
        main()
    except QRNNError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
