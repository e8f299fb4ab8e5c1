"""`qrnn-deploy build-plugins`: build the native FoPool libraries (libqrnn_ort.so, libqrnn_kernels.so)
from the sources an installed package carries, into the directory `_native` searches."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qrnn_deploy.cli.app import app


def _nvidia_driver_present() -> bool:
    """Whether the CUDA driver library is installed (no GPU build is useful without it)."""
    import ctypes.util

    return ctypes.util.find_library("cuda") is not None or Path("/dev/nvidiactl").exists()


@app.command("build-plugins")
def build_plugins_cmd(build_dir: Optional[Path] = typer.Option(None, "--build-dir", help="Build here instead of the "
                                                              "default (a checkout's plugins/build, else "
                                                              "$QRNN_CACHE_DIR/plugins/<digest>); set QRNN_PLUGIN_DIR "
                                                              "to it to use it."),
                      jobs: int = typer.Option(2, "--jobs", help="Parallel compile jobs."),
                      cuda: Optional[bool] = typer.Option(None, "--cuda/--no-cuda", help="Build the CUDA kernels "
                                                          "(needs nvcc; minutes). Default: when nvcc is found and "
                                                          "this machine has an NVIDIA driver."),
                      ort_include: Optional[Path] = typer.Option(None, "--ort-include", help="Directory with "
                                                                 "onnxruntime_cxx_api.h (default: fetched from npm "
                                                                 "once)."),
                      show: bool = typer.Option(False, "--where", help="Only print where the libraries are "
                                                "looked for and which are found.")):
    """Build the native FoPool plugins (needs cmake, a C++17 compiler, and npm or onnxruntime headers)."""
    from qrnn_deploy import _native
    from qrnn_deploy.cli.options import check_at_least
    from qrnn_deploy.errors import BuildError

    def report():
        for name, fn in (("libqrnn_ort.so", _native.ort_library_path),
                         ("libqrnn_kernels.so", _native.kernels_library_path)):
            try:
                typer.echo(f"{name:20s} {fn()}")
            except BuildError:
                typer.echo(f"{name:20s} not built")

    if show:
        typer.echo(f"sources              {_native.sources_dir()}")
        typer.echo("searched             " + ", ".join(str(d) for d in _native.plugin_dirs()))
        report()
        return
    check_at_least(jobs, "--jobs", 1)
    if cuda is None and not _nvidia_driver_present():
        cuda = False
        typer.echo("no NVIDIA driver here: CPU plugins only (--cuda builds the CUDA kernels anyway)")
    script = _native.build_script()
    sources = script.parent.parent / "plugins" if script is not None else _native.sources_dir()
    typer.echo(f"building the plugins from {sources} into {build_dir or _native.default_build_dir()} ...")
    out = _native.build_plugins(build_dir, jobs=jobs, cuda=cuda, ort_include=ort_include)
    typer.echo(f"built: {', '.join(sorted(p.name for p in out.glob('lib*.so')))} in {out}")
    if build_dir is not None and out.resolve() not in {d.resolve() for d in _native.plugin_dirs()}:
        typer.echo(f"note: set QRNN_PLUGIN_DIR={out} so qrnn-deploy uses them")
    else:
        report()
