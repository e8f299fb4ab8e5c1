"""Output paths, checked before the work whose results they will hold.

Pure Python (imports nothing heavy): the CLI, the exporter, training and the benchmark share these
checks, so a path that cannot be written is one typed error at the start, not an OSError (or a
traceback) after minutes of work.
"""

from __future__ import annotations

import os
from pathlib import Path

from qrnn_deploy.errors import ConfigError


def _as_path(path, what: str, error) -> Path:
    # Path("") is Path("."): an empty argument (an unset shell variable) would silently mean the
    # current directory.
    if isinstance(path, str) and not path:
        raise error(f"the {what} path is empty")
    return Path(path)


def output_dir(path, what: str = "output directory", error: type = ConfigError, create: bool = True) -> Path:
    """`path` as a directory this process can write: created with its parents when `create`, else
    only checked (it is a directory, or its nearest existing ancestor is a writable directory).
    Raises `error` (a QRNNError class) saying why not."""
    p = _as_path(path, what, error)
    if p.exists() and not p.is_dir():
        raise error(f"cannot write the {what}: {p} exists and is not a directory")
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise error(f"cannot create the {what} {p}: {e.strerror or e}") from None
        base = p
    else:
        base = p
        while not base.exists():  # Path(".").parent is itself and exists: the loop ends
            base = base.parent
        if not base.is_dir():
            raise error(f"cannot create the {what} {p}: {base} is not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise error(f"cannot write the {what}: {base} is not writable")
    return p


def output_file(path, what: str = "output file", error: type = ConfigError) -> Path:
    """`path` as a file this process can write, checked by opening it for appending (its content
    is kept; a file the check creates is removed again). Raises `error` saying why not."""
    p = _as_path(path, what, error)
    if p.is_dir():
        raise error(f"cannot write the {what}: {p} is a directory")
    existed = p.exists()
    try:
        with open(p, "ab"):
            pass
    except OSError as e:
        raise error(f"cannot write the {what} {p}: {e.strerror or e}") from None
    if not existed:
        p.unlink(missing_ok=True)
    return p
