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


# Sizes of a model trained from the command line: far beyond any that trains here, and below
# what makes a single allocation fail with the allocator's own error.
MAX_HIDDEN, MAX_LAYERS = 16384, 64
MAX_SEED = 2 ** 63 - 1  # what every generator we seed takes (torch's is 64-bit)


def check_seed(value, option: str = "--seed") -> None:
    """`value` (None = not given) is an integer in [0, MAX_SEED]."""
    if value is not None and not 0 <= value <= MAX_SEED:
        raise ConfigError(f"{option} must be an integer in [0, 2**63 - 1], got {value}")


def check_at_most(value, option: str, most: int) -> None:
    """`value` (None = not given) is at most `most`."""
    if value is not None and value > most:
        raise ConfigError(f"{option} must be <= {most}, got {value}")


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
