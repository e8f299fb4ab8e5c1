"""The typer application every command module attaches to."""

import typer

from qrnn_deploy import __version__

app = typer.Typer(
    name="qrnn-deploy",
    help="Train Quasi-Recurrent Neural Networks and ship them: export, verify, translate, serve, bench.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"qrnn-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    """qrnn-deploy: QRNNs from PyTorch training to streaming inference."""
