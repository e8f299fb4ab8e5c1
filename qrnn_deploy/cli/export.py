"""`qrnn-deploy export CHECKPOINT -o OUT_DIR` (a checkpoint -> a bundle) and `qrnn-deploy info BUNDLE`."""

import json
from pathlib import Path
from typing import Optional

import typer

from qrnn_deploy.cli.app import app


def _shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _figure(x) -> str:
    """A number of the manifest's metadata as written by export; anything else as it is."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return f"{x:.2e}"
    return "?" if x is None else repr(x)


@app.command()
def export(checkpoint: str = typer.Argument(..., help="A checkpoint written by qrnn_deploy.nn.save_checkpoint."),
           out: str = typer.Option(..., "--out", "-o", help="The bundle directory to write."),
           fo_pool: str = typer.Option("custom", "--fo-pool",
                                       help="custom: one qrnn::FoPool node per layer (needs the custom-op "
                                            "library at run time); portable: standard ONNX operators only."),
           opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default 17)."),
           verify: bool = typer.Option(True, "--verify/--no-verify",
                                       help="Compare onnxruntime with the PyTorch model before writing the manifest."),
           quantize: Optional[str] = typer.Option(None, "--quantize",
                                                  help="int8: weight matrices as 8-bit blocks with int8 products "
                                                       "(about 1/4 of the size; onnxruntime's MatMulNBits, so the "
                                                       "bundle runs on onnxruntime only)."),
           quantize_block: int = typer.Option(128, "--quantize-block",
                                              help="--quantize: weights per scale (a power of two >= 16)."),
           tensorrt: bool = typer.Option(False, "--tensorrt",
                                         help="Give FoPool nodes the plugin_version / plugin_namespace attributes "
                                              "TensorRT's ONNX parser uses to find the FoPool plugin."),
           triton: Optional[str] = typer.Option(None, "--triton",
                                                help="Also write a Triton model repository (onnxruntime backend, "
                                                     "sequence batching with implicit state) in this directory."),
           triton_op_library: Optional[str] = typer.Option(
               None, "--triton-op-library", help="Path of libqrnn_ort.so on the Triton server (custom FoPool; "
                                                 "default: the library built here).")):
    """Export a checkpoint as a bundle: manifest.json plus one streaming ONNX graph per role."""
    from qrnn_deploy.errors import CheckpointError, ExportError
    from qrnn_deploy.paths import output_dir

    if fo_pool not in ("custom", "portable"):
        raise ExportError(f"--fo-pool must be 'custom' or 'portable', got {fo_pool!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"--quantize must be 'int8', got {quantize!r}")
    if quantize_block < 16 or quantize_block & (quantize_block - 1):
        raise ExportError(f"--quantize-block must be a power of two >= 16, got {quantize_block}")
    if quantize and tensorrt:
        raise ExportError("--quantize and --tensorrt do not go together: TensorRT cannot parse the quantized "
                          "weights (onnxruntime's MatMulNBits); TensorRT has its own int8 and fp16 modes")
    # Before importing torch and converting: a typo fails at once, and no bundle is written for a
    # Triton repository that cannot be.
    if not Path(checkpoint).is_file():
        if Path(checkpoint).is_dir():
            raise CheckpointError(f"{checkpoint} is a directory, not a checkpoint file (.safetensors)")
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    output_dir(out, "bundle directory", ExportError, create=False)
    if triton is not None:
        output_dir(triton, "--triton directory", ExportError, create=False)
        if fo_pool == "custom" and not triton_op_library:
            from qrnn_deploy import _native

            triton_op_library = _native.ort_library_path()
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import load_checkpoint

    model = load_checkpoint(checkpoint)
    from qrnn_deploy.export.tensorrt_nodes import tensorrt_node_attrs

    manifest = export_bundle(model, out, fo_pool=fo_pool, opset=opset, verify=verify,
                             node_attrs=tensorrt_node_attrs() if tensorrt else None, quantize=quantize,
                             quantize_block=quantize_block)
    out_dir = Path(out)
    typer.echo(f"wrote {out_dir}/ ({manifest.model_type}, fo_pool={manifest.fo_pool}, opset {manifest.opset})")
    for role, g in manifest.graphs.items():
        typer.echo(f"  {g.file:<14} {_size((out_dir / g.file).stat().st_size):>10}  graph {role!r}, "
                   f"{len(g.states)} states")
    typer.echo(f"  manifest.json")
    v = manifest.metadata.get("verification")
    if v:
        typer.echo(f"verified on {v['engine']}: {v['cases']} cases, max |onnx - torch| = {v['max_abs_error']:.2e}, "
                   f"max |chunked - whole| = {v['max_chunked_vs_whole']:.2e} (tolerance {v['tolerance']:g})")
    else:
        typer.echo("not verified (--no-verify)")
    q = manifest.metadata.get("quantization")
    if q:
        before = sum(g["weight_bytes"][0] for g in q["graphs"].values())
        after = sum(g["weight_bytes"][1] for g in q["graphs"].values())
        typer.echo(f"quantized: {q['scheme']}, blocks of {q['block_size']}, "
                   f"{sum(g['matmuls'][0] for g in q['graphs'].values())} weight matrices, "
                   f"{_size(before)} -> {_size(after)}")
        vq = manifest.metadata.get("verification_quantized")
        if vq:
            typer.echo(f"quantized graphs verified: max |onnx - torch| = {vq['max_abs_error']:.2e} (tolerance "
                       f"{vq['tolerance']:g} x the reference's range), max |chunked - whole| = "
                       f"{vq['max_chunked_vs_whole']:.2e}")
    if triton is not None:
        from qrnn_deploy.export.triton import write_model_repository

        for cfg in write_model_repository(out_dir, triton, op_library=triton_op_library):
            typer.echo(f"wrote Triton model {cfg.parent.name}: {cfg}")


@app.command()
def info(bundle: str = typer.Argument(..., help="A bundle directory.")):
    """Print a bundle's manifest: model, FoPool variant, graphs with their inputs, outputs and states."""
    from qrnn_deploy.bundle import load_manifest

    m = load_manifest(bundle, check_files=False)
    root = Path(bundle)
    echo = typer.echo
    echo(f"bundle      {root}  ({m.format} v{m.format_version})")
    echo(f"model       {m.model_type}")
    if m.fo_pool == "custom":
        op = m.custom_op or {}
        echo(f"fo_pool     custom op {op.get('domain')}::{op.get('op_type')} v{op.get('version')} "
             f"(needs the FoPool custom-op library)")
    else:
        echo("fo_pool     portable (standard ONNX operators)")
    echo(f"opset       {m.opset}")
    q = m.metadata.get("quantization")
    if isinstance(q, dict):
        echo(f"weights     {q.get('scheme')}, blocks of {q.get('block_size')} (onnxruntime's MatMulNBits; "
             "onnxruntime only)")
        graphs = q.get("graphs") if isinstance(q.get("graphs"), dict) else {}
        for role, g in graphs.items():
            try:
                (n_q, n_all), (before, after) = g["matmuls"], g["weight_bytes"]
                echo(f"  {role:<9} {n_q} of {n_all} matrix products int8: weights {_size(before)} -> {_size(after)}")
            except (KeyError, TypeError, ValueError):
                pass  # an older or hand-edited manifest: the summary above is enough
    else:
        echo("weights     float32")
    echo("config      " + ", ".join(f"{k}={v}" for k, v in m.config.items()))
    if m.vocab:
        vocabs = {k: m.vocab.get(k) for k in ("src", "tgt")} if "src" in m.vocab else {"": m.vocab}
        for side, v in vocabs.items():
            if not isinstance(v, dict):
                continue
            echo(f"vocab{('.' + side) if side else '':<7}{v.get('type')}, {len(v.get('symbols') or [])} symbols")
    else:
        echo("vocab       none (token ids only)")
    if m.special_tokens:
        echo("special     " + ", ".join(f"{k}={v}" for k, v in m.special_tokens.items()))
    for role, g in m.graphs.items():
        path = root / g.file
        size = _size(path.stat().st_size) if path.is_file() else "MISSING"
        echo(f"graph {role!r}: {g.file} ({size})")
        for t in g.inputs:
            echo(f"  in     {t.name:<18} {_shape(t.shape):<18} {t.dtype}")
        for t in g.outputs:
            echo(f"  out    {t.name:<18} {_shape(t.shape):<18} {t.dtype}")
        for s in g.states:
            echo(f"  state  {s.name:<18} {_shape(s.shape):<18} {s.dtype}  -> {s.output}")
    for role, e in m.engines.items():
        echo(f"engine {role!r}: {e.file} ({e.precision}, plugin {e.plugin})")
    meta = dict(m.metadata)
    v = meta.pop("verification", None)
    if v:
        echo(f"verified    on {v.get('engine')}: {v.get('cases')} cases, max |onnx - torch| = "
             f"{_figure(v.get('max_abs_error'))}, max |chunked - whole| = {_figure(v.get('max_chunked_vs_whole'))}")
    else:
        echo("verified    no")
    vq = meta.pop("verification_quantized", None)
    if isinstance(vq, dict):
        echo(f"int8 check  {vq.get('cases')} cases, max |int8 - torch| = {_figure(vq.get('max_abs_error'))} "
             f"(tolerance {_figure(vq.get('tolerance'))} x max(1, |torch|)), max |chunked - whole| = "
             f"{_figure(vq.get('max_chunked_vs_whole'))}")
    meta.pop("sizes", None)
    meta.pop("quantization", None)  # the weights line
    for k, val in meta.items():
        shown = json.dumps(val, separators=(", ", ": ")) if isinstance(val, (dict, list)) else val
        echo(f"{k:<11} {shown}")
