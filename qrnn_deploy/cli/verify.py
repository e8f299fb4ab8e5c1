"""`qrnn-deploy verify BUNDLE [CHECKPOINT]`: check a bundle that is already written.

`export` verifies the graphs before it writes the manifest; this command checks them again
later or elsewhere (after a copy to another machine, a new onnxruntime, a hand-edited manifest),
with or without the checkpoint they came from. Exit status: 0 when every check passed, 1 when a
check failed (one `verification failed:` line), 2 for anything else (no bundle, bad options).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import check_at_least, check_positive

ENGINES = ("auto", "onnxruntime", "reference", "tensorrt")
# Default tolerances of TensorRT engines (x max(1, |reference|)): fp32 engines run their matrix
# products in TF32 on Ampere and later (TensorRT's default), fp16 engines in half precision.
TENSORRT_TOL = {"fp32": 2e-3, "fp16": 2e-2}


def random_sources(n: int, src_vocab_size: int, seed: int) -> list:
    """`n` random sources of 3..12 ordinary token ids (specials excluded), the same for a seed."""
    import numpy as np

    from qrnn_deploy.vocab import EOS

    rng = np.random.default_rng(seed + 1)
    lo = EOS + 1
    if src_vocab_size <= lo:
        return []
    return [rng.integers(lo, src_vocab_size, int(rng.integers(3, 13))).tolist() for _ in range(n)]


def compare_translations(bundle_dir: str, model, n: int, seed: int, texts: Optional[list] = None,
                         backend: str = "onnxruntime") -> dict:
    """Greedy translations by the runtime (the bundle, no PyTorch) and by `model`, token by token,
    of `texts` (encoded with the bundle's source vocabulary) or else of `n` random sources.
    Returns {"n", "identical", "tokens" (PyTorch's, all sources), "first_difference": None or
    (source index, token position, runtime token or None, PyTorch token or None)}."""
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.nn.batching import greedy_decode_batch
    from qrnn_deploy.runtime import load_bundle

    bundle = load_bundle(bundle_dir, backend=backend, threads=1)
    if texts:
        if bundle.src_vocab is None:
            raise ConfigError("--source needs a bundle with a vocabulary (this one takes token ids only)")
        sources = [bundle.src_vocab.encode(t) for t in texts]
        empty = [t for t, s in zip(texts, sources) if not s]
        if empty:
            raise ConfigError(f"--source {empty[0]!r} is empty: nothing to translate")
    else:
        sources = random_sources(n, model.config.src_vocab_size, seed)
    limit = lambda k: 2 * k + 10  # noqa: E731 (room for the model to stop by itself)
    tr = bundle.translator()
    got = [tr.translate_ids(list(s), max_len=limit(len(s))) for s in sources]
    want = greedy_decode_batch(model, sources, max_len=limit)
    first = None
    identical = 0
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = [int(t) for t in a], [int(t) for t in b]
        if a == b:
            identical += 1
        elif first is None:
            j = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            first = (i, j, a[j] if j < len(a) else None, b[j] if j < len(b) else None)
    return {"n": len(sources), "identical": identical, "tokens": sum(len(w) for w in want), "first_difference": first}


def _tok(t) -> str:
    return "end" if t is None else str(t)


@app.command()
def verify(bundle: str = typer.Argument(..., help="A bundle directory (written by `qrnn-deploy export`)."),
           checkpoint: Optional[str] = typer.Argument(
               None, help="The checkpoint the bundle was exported from: its graphs are compared with the "
                          "PyTorch model. Without it, only streaming (chunked = whole) is checked."),
           tol: Optional[float] = typer.Option(None, "--tol",
                                               help="Largest |onnx - torch| allowed, times max(1, |torch|) "
                                                    "(default 1e-4; 0.1 for an int8 bundle)."),
           engine: str = typer.Option("auto", "--engine",
                                      help="onnxruntime, reference (onnx.reference with the numpy FoPool), "
                                           "auto (onnxruntime; the reference evaluator when a custom-op graph "
                                           "finds no FoPool library) or tensorrt (the bundle's TensorRT "
                                           "engines, from build-engine; default --tol 2e-3 for fp32 engines, "
                                           "2e-2 for fp16)."),
           translations: int = typer.Option(8, "--translations",
                                            help="seq2seq with a checkpoint: greedy translations of this many "
                                                 "random sources, runtime against PyTorch token by token (0: "
                                                 "none). Every one must be identical, except on int8 weights or "
                                                 "TensorRT engines (reported only)."),
           source: Optional[list[str]] = typer.Option(None, "--source",
                                                      help="A source text to translate instead of the random "
                                                           "ones (repeatable; needs the bundle's vocabulary)."),
           seed: int = typer.Option(0, "--seed", help="Seed of the random inputs.")):
    """Check a bundle: its graphs against the checkpoint's PyTorch model, streaming against one
    whole pass, and (seq2seq) the runtime's translations against PyTorch's."""
    from qrnn_deploy.errors import CheckpointError, ConfigError, VerificationError

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    check_positive(tol, "--tol")
    check_at_least(translations, "--translations", 0)
    from qrnn_deploy.bundle import load_manifest

    manifest = load_manifest(bundle)  # a missing or broken bundle fails before torch is imported
    if source and (checkpoint is None or manifest.model_type != "seq2seq"):
        raise ConfigError("--source is for a seq2seq bundle checked against its CHECKPOINT")
    if checkpoint is not None and not Path(checkpoint).is_file():
        if Path(checkpoint).is_dir():
            raise CheckpointError(f"{checkpoint} is a directory, not a checkpoint file (.safetensors)")
        raise CheckpointError(f"checkpoint not found: {checkpoint}")
    from qrnn_deploy.export.verify import verify_bundle

    runners, stream_tol, approximate = None, None, isinstance(manifest.metadata.get("quantization"), dict)
    if engine == "tensorrt":
        missing = [role for role in manifest.graphs if role not in manifest.engines]
        if missing:
            raise ConfigError(f"{bundle} has no TensorRT engine for graph {missing[0]!r}: build them with "
                              f"`qrnn-deploy build-engine {bundle}`")
        from qrnn_deploy.runtime.backends import create_runner

        # Loads each engine (BuildError where TensorRT or a GPU is missing): exit 2, nothing checked.
        runners = {role: create_runner("tensorrt", bundle, manifest, role, threads=1).run for role in manifest.graphs}
        precisions = {e.precision for e in manifest.engines.values()}
        if tol is None:
            tol = max(TENSORRT_TOL.get(p, TENSORRT_TOL["fp16"]) for p in precisions)
        stream_tol = tol  # the decode and chunk profiles run different kernels
        approximate = True  # TF32 or fp16 arithmetic can flip a near tie between two tokens
    model = None
    echo = typer.echo
    quantized = isinstance(manifest.metadata.get("quantization"), dict)
    echo(f"bundle      {bundle} ({manifest.model_type}, fo_pool={manifest.fo_pool}"
         f"{', int8 weights' if quantized else ''})")
    try:
        if checkpoint is not None:
            from qrnn_deploy.nn import load_checkpoint

            model = load_checkpoint(checkpoint)
        r = verify_bundle(bundle, model, tol=tol, seed=seed, engine=engine, runners=runners, stream_tol=stream_tol)
        if model is not None:
            echo(f"checkpoint  {checkpoint}: same model type, config and vocabulary as the bundle")
            echo(f"graphs      on {r['engine']}: {r['cases']} cases, max |onnx - torch| = {r['max_abs_error']:.2e} "
                 f"(tolerance {r['tolerance']:g}), max |chunked - whole| = {r['max_chunked_vs_whole']:.2e} "
                 f"(tolerance {r['stream_tolerance']:g})")
        else:
            echo(f"graphs      on {r['engine']}: {r['cases']} cases, max |chunked - whole| = "
                 f"{r['max_chunked_vs_whole']:.2e} (tolerance {r['stream_tolerance']:g}); not compared with "
                 "PyTorch (give the CHECKPOINT for that)")
        if model is not None and manifest.model_type == "seq2seq" and (translations > 0 or source):
            if r["engine"] not in ("onnxruntime", "tensorrt"):
                echo("translations not compared: the runtime needs onnxruntime with the FoPool library "
                     f"(the graphs ran on {r['engine']})")
            else:
                t = compare_translations(bundle, model, translations, seed, source,
                                         "tensorrt" if engine == "tensorrt" else "onnxruntime")
                line = (f"translations {t['identical']} of {t['n']} greedy translations identical, {t['tokens']} "
                        "tokens (runtime vs PyTorch)")
                if t["first_difference"] is not None:
                    i, j, a, b = t["first_difference"]
                    line += f"; first difference: source {i}, token {j}: runtime {_tok(a)}, PyTorch {_tok(b)}"
                if approximate and t["identical"] < t["n"]:
                    line += " (int8 weights or TensorRT arithmetic: differences are expected)"
                echo(line)
                if not approximate and t["identical"] < t["n"]:
                    raise VerificationError(f"{t['n'] - t['identical']} of {t['n']} greedy translations differ "
                                            "between the runtime and PyTorch")
    except VerificationError as e:
        print(f"verification failed: {e}", file=sys.stderr)
        raise typer.Exit(1)
    echo("OK")
