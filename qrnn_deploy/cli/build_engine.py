"""`qrnn-deploy build-engine BUNDLE`: TensorRT engines for every graph of a bundle."""

from typing import Optional

import typer

from qrnn_deploy.cli.app import app


@app.command("build-engine", short_help="Build one TensorRT engine per graph and list them in the bundle's manifest "
                                          "(needs TensorRT and an NVIDIA GPU).")
def build_engine(bundle: str = typer.Argument(..., help="A bundle directory (qrnn-deploy export)."),
                 fp16: bool = typer.Option(False, "--fp16", help="Allow float16 kernels (FoPool: fp16 storage, "
                                                                  "fp32 arithmetic)."),
                 max_batch: int = typer.Option(8, "--max-batch", help="Largest batch (streams) an engine takes."),
                 max_chunk: int = typer.Option(256, "--max-chunk", help="Longest chunk of steps in one call."),
                 max_source: int = typer.Option(256, "--max-source", help="Longest source a seq2seq decoder attends to."),
                 plugin: str = typer.Option("aot", "--plugin",
                                            help="aot: FoPool's kernel embedded in the engine (no library at run "
                                                 "time); library: libqrnn_trt_plugin.so (needed at run time)."),
                 triton: Optional[str] = typer.Option(None, "--triton",
                                                      help="Also write a Triton model repository (TensorRT backend) "
                                                           "in this directory (needs --plugin aot).")):
    """Build one TensorRT engine per graph (profiles: chunk 1 for decoding, 1..max-chunk for chunks)
    and list them in the bundle's manifest. Needs TensorRT and an NVIDIA GPU."""
    from qrnn_deploy.errors import ExportError
    from qrnn_deploy.paths import output_dir

    if triton is not None:  # before minutes of engine building
        output_dir(triton, "--triton directory", ExportError, create=False)
        if plugin == "library":
            raise ExportError("--triton needs --plugin aot: Triton's TensorRT backend cannot register the "
                              "FoPool plugin library (see docs/tensorrt.md)")
    from qrnn_deploy.export.tensorrt_engine import build_engines

    manifest = build_engines(bundle, fp16=fp16, max_batch=max_batch, max_chunk=max_chunk, max_source=max_source,
                             plugin=plugin, log=typer.echo)
    typer.echo(f"manifest: {len(manifest.engines)} engine(s) recorded in {bundle}/manifest.json")
    if triton is not None:
        from qrnn_deploy.export.triton import write_model_repository

        for cfg in write_model_repository(bundle, triton, backend="tensorrt", max_batch_size=max_batch):
            typer.echo(f"wrote Triton model {cfg.parent.name}: {cfg}")
