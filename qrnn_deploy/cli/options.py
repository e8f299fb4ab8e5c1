"""Options several commands share, and checks of option values. Each check raises ConfigError
before a command starts slow work, so a bad value is one `error:` line at once (typer's min= /
max= print a multi-line usage box instead)."""

from __future__ import annotations

import math

import typer

from qrnn_deploy.errors import ConfigError
from qrnn_deploy.limits import LENGTH_PENALTY_RANGE, MAX_THREADS

# uvicorn's log levels (uvicorn.config.LOG_LEVELS); checked here so a typo fails before the
# bundle loads.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")



def threads_option(default, help: str):
    """A --threads option; the command checks it with `check_threads` (typer's own range check
    prints a usage box, not the one `error:` line)."""
    return typer.Option(default, "--threads", help=f"{help} At most {MAX_THREADS}.")


def check_threads(value, minimum: int = 1) -> None:
    if value is not None and not minimum <= value <= MAX_THREADS:
        raise ConfigError(f"--threads must be in {minimum}..{MAX_THREADS}, got {value}")


def check_positive(value, option: str) -> None:
    """`value` (None = not given) is a finite number > 0 (nan would never end a time limit)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{option} must be a positive number, got {value:g}")


def check_at_least(value, option: str, least: int) -> None:
    """`value` (None = not given) is at least `least`."""
    if value is not None and value < least:
        raise ConfigError(f"{option} must be >= {least}, got {value}")


def check_length_penalty(value: float, option: str = "--length-penalty") -> None:
    lo, hi = LENGTH_PENALTY_RANGE
    if not lo <= value <= hi:  # also false for nan
        raise ConfigError(f"{option} must be a number in [{lo:g}, {hi:g}], got {value:g}")
