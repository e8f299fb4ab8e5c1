"""`qrnn-deploy` command line. Each command lives in its own module of this package; importing
them registers them on `app`. Heavy imports (torch, onnxruntime) happen inside the commands, so
`--help` stays fast. Every `QRNNError` becomes one line on stderr and exit code 2."""

import os
import sys

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli import demo  # noqa: F401  (registers commands)
from qrnn_deploy.cli import translate  # noqa: F401
from qrnn_deploy.cli import export  # noqa: F401  (export, info)
from qrnn_deploy.cli import verify  # noqa: F401  (verify)
from qrnn_deploy.cli import serve  # noqa: F401
from qrnn_deploy.cli import bench  # noqa: F401
from qrnn_deploy.cli import train  # noqa: F401  (train)
from qrnn_deploy.cli import evaluate  # noqa: F401  (evaluate)
from qrnn_deploy.cli import quickstart  # noqa: F401  (quickstart)
from qrnn_deploy.cli import build_engine  # noqa: F401  (build-engine)
from qrnn_deploy.cli import build_plugins  # noqa: F401  (build-plugins)
from qrnn_deploy.errors import QRNNError


def main(argv=None):
    if sys.stdout is None:  # started with stdout closed (`>&-`): nowhere for the output to go
        if sys.stderr is not None:
            print("error: standard output is closed", file=sys.stderr)
        sys.exit(2)
    try:
        try:
            app(args=argv, standalone_mode=True)
        except SystemExit as e:
            if not e.code:
                sys.stdout.flush()  # a full disk behind stdout shows here, not at interpreter exit
            elif _interrupted(e):  # typer turns Ctrl-C into a silent exit 130
                print("interrupted", file=sys.stderr)
            raise
    except QRNNError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        # Writing the output failed (`> /dev/full`, a closed pipe, a disk filling up): one line,
        # and stdout goes to /dev/null so the exit does not print the same error again.
        _silence_stdout()
        where = f" ({e.filename})" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        sys.exit(2)


def _interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `exc`."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # captured by a test: nothing to silence
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)
