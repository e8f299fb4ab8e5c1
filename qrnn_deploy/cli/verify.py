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
from qrnn_deploy.cli.options import check_at_least, check_at_most, check_positive, check_seed

ENGINES = ("auto", "onnxruntime", "reference", "tensorrt")
# Default tolerances of TensorRT engines (x max(1, |reference|)): fp32 engines run their matrix
# products in TF32 on Ampere and later (TensorRT's default), fp16 engines in half precision.
TENSORRT_TOL = {"fp32": 2e-3, "fp16": 2e-2}


CONTINUATION = 20  # tokens a language model continues each input by, greedily
WHAT = {"seq2seq": "greedy translations", "language_model": f"greedy continuations of {CONTINUATION} tokens",
        "classifier": "predictions"}


def random_inputs(n: int, vocab_size: int, seed: int) -> list:
    """`n` random inputs of 3..12 ordinary token ids (specials excluded), the same for a seed."""
    import numpy as np

    from qrnn_deploy.vocab import EOS

    rng = np.random.default_rng(seed + 1)
    lo = EOS + 1
    if vocab_size <= lo:
        return []
    return [rng.integers(lo, vocab_size, int(rng.integers(3, 13))).tolist() for _ in range(n)]


def _runtime_outputs(bundle, inputs: list) -> list:
    """What the runtime (no PyTorch) makes of each input: target ids, continuation ids, or [class]."""
    kind = bundle.model_type
    if kind == "seq2seq":
        tr = bundle.translator()
        return [tr.translate_ids(list(x), max_len=2 * len(x) + 10) for x in inputs]
    out = []
    for x in inputs:
        s = bundle.language_model() if kind == "language_model" else bundle.classifier()
        try:
            if kind == "language_model":
                out.append(list(s.generate(list(x), max_new_tokens=CONTINUATION, stop_at_eos=False)))
            else:
                s.feed(list(x))
                out.append([s.prediction])
        finally:
            s.close()
    return out


def _torch_outputs(model, inputs: list) -> list:
    """The same by the PyTorch model (greedy, argmax: the runtime's rules)."""
    import torch

    kind = model.model_type
    if kind == "seq2seq":
        from qrnn_deploy.nn.batching import greedy_decode_batch

        return greedy_decode_batch(model, inputs, max_len=lambda k: 2 * k + 10)
    out = []
    with torch.no_grad():
        for x in inputs:
            logits, state = model(torch.tensor([list(x)]))
            if kind == "classifier":
                out.append([int(logits[0].argmax())])
                continue
            ids = []
            for _ in range(CONTINUATION):
                ids.append(int(logits[0, -1].argmax()))
                logits, state = model(torch.tensor([[ids[-1]]]), state)
            out.append(ids)
    return out


def compare_outputs(bundle_dir: str, model, n: int, seed: int, texts: Optional[list] = None,
                    backend: str = "onnxruntime") -> dict:
    """The runtime (the bundle, no PyTorch) against `model`, end to end and token by token: greedy
    translations (seq2seq), greedy continuations (language model) or predictions (classifier) of
    `texts` (encoded with the bundle's input vocabulary) or else of `n` random inputs.
    Returns {"n", "identical", "tokens" (PyTorch's, all inputs), "first_difference": None or
    (input index, position, runtime token or None, PyTorch token or None)}."""
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.runtime import load_bundle

    bundle = load_bundle(bundle_dir, backend=backend, threads=1)
    seq2seq = bundle.model_type == "seq2seq"
    if texts:
        vocab = bundle.src_vocab if seq2seq else bundle.vocab
        if vocab is None:
            raise ConfigError("--text needs a bundle with a vocabulary (this one takes token ids only)")
        inputs = [vocab.encode(t) for t in texts]
        empty = [t for t, x in zip(texts, inputs) if not x]
        if empty:
            raise ConfigError(f"--text {empty[0]!r} is empty: nothing to run")
    else:
        inputs = random_inputs(n, model.config.src_vocab_size if seq2seq else model.config.vocab_size, seed)
    got, want = _runtime_outputs(bundle, inputs), _torch_outputs(model, inputs)
    first = None
    identical = 0
    for i, (a, b) in enumerate(zip(got, want)):
        a, b = [int(t) for t in a], [int(t) for t in b]
        if a == b:
            identical += 1
        elif first is None:
            j = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
            first = (i, j, a[j] if j < len(a) else None, b[j] if j < len(b) else None)
    return {"n": len(inputs), "identical": identical, "tokens": sum(len(w) for w in want), "first_difference": first}


def _tok(t) -> str:
    return "end" if t is None else str(t)


@app.command(short_help="Check a bundle: streaming against one whole pass and, given its checkpoint, its "
                        "graphs and the runtime's results against PyTorch's.")
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
           samples: int = typer.Option(8, "--samples",
                                       help="With a checkpoint: this many random inputs run end to end by the "
                                            "runtime and by PyTorch, compared token by token: greedy "
                                            "translations (seq2seq), greedy continuations (language model) or "
                                            "predictions (classifier); 0: none. Every one must be identical, "
                                            "except on int8 weights or TensorRT engines (reported only)."),
           text: Optional[list[str]] = typer.Option(None, "--text",
                                                    help="An input text to use instead of the random ones "
                                                         "(repeatable; needs the bundle's vocabulary)."),
           seed: int = typer.Option(0, "--seed", help="Seed of the random inputs.")):
    """Check a bundle: its graphs against the checkpoint's PyTorch model, streaming against one
    whole pass, and the runtime's translations (continuations, predictions) against PyTorch's."""
    from qrnn_deploy.errors import CheckpointError, ConfigError, VerificationError

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    check_positive(tol, "--tol")
    check_at_least(samples, "--samples", 0)
    check_at_most(samples, "--samples", 100_000)
    check_seed(seed)
    from qrnn_deploy.bundle import load_manifest

    manifest = load_manifest(bundle)  # a missing or broken bundle fails before torch is imported
    if text and checkpoint is None:
        raise ConfigError("--text is for a bundle checked against its CHECKPOINT")
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
        what = WHAT[manifest.model_type]
        if model is not None and (samples > 0 or text):
            if r["engine"] not in ("onnxruntime", "tensorrt"):
                echo(f"end to end  not compared: the runtime needs onnxruntime with the FoPool library "
                     f"(the graphs ran on {r['engine']})")
            else:
                t = compare_outputs(bundle, model, samples, seed, text,
                                    "tensorrt" if engine == "tensorrt" else "onnxruntime")
                tokens = f", {t['tokens']} tokens" if manifest.model_type != "classifier" else ""
                line = f"end to end  {t['identical']} of {t['n']} {what} identical{tokens} (runtime vs PyTorch)"
                if t["first_difference"] is not None:
                    i, j, a, b = t["first_difference"]
                    line += f"; first difference: input {i}, token {j}: runtime {_tok(a)}, PyTorch {_tok(b)}"
                if approximate and t["identical"] < t["n"]:
                    line += " (int8 weights or TensorRT arithmetic: differences are expected)"
                echo(line)
                if not approximate and t["identical"] < t["n"]:
                    raise VerificationError(f"{t['n'] - t['identical']} of {t['n']} {what} differ between the "
                                            "runtime and PyTorch")
    except VerificationError as e:
        print(f"verification failed: {e}", file=sys.stderr)
        raise typer.Exit(1)
    echo("OK")
