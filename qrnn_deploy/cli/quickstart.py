"""`qrnn-deploy quickstart`: the project's main job, end to end, in a few minutes on 2 CPU cores.

1. the model: the shipped pretrained German->English translator (or, with --train-minutes N, a
   fresh one trained for N minutes),
2. export it to a bundle (FoPool custom op) and verify the graphs against PyTorch,
3. score the bundle on a stable sample of the test split (chrF, BLEU) beside copying the source,
4. stream the translations of a few held-out sentences token by token through the runtime,
5. print the next commands to try.
Everything is written under --out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import (MAX_HIDDEN, MAX_LAYERS, check_at_least, check_at_most, check_positive, check_seed,
                                     check_threads, threads_option)

# Used only when the dictionary is not installed (then nothing can be scored): sentences written
# for this project, not taken from the dictionary.
FALLBACK_SENTENCES = ["Das Wetter ist heute schön.", "Wo ist der Bahnhof?", "Ich habe keine Zeit."]


def pretrained_path(task: str = "de-en") -> Path:
    """The shipped checkpoint of `task` (inside the installed package)."""
    from qrnn_deploy.errors import CheckpointError

    p = Path(__file__).resolve().parent.parent / "pretrained" / f"{task}.safetensors"
    if not p.is_file():
        raise CheckpointError(f"the shipped model {p} is missing; reinstall qrnn-deploy or run "
                              "`qrnn-deploy quickstart --train-minutes 10`")
    return p


def held_out_sentences(test_pairs, n: int) -> list[tuple[str, str]]:
    """`n` full sentences of the test split (never seen in training), chosen by a stable hash,
    short enough to read in a terminal."""
    from qrnn_deploy.data.dictionary import is_sentence
    from qrnn_deploy.data.scoring import sample_pairs

    seen, cand, other = set(), [], []
    for d, e in test_pairs:
        if d not in seen and len(d) <= 70:
            seen.add(d)
            (cand if is_sentence(d) else other).append((d, e))
    if len(cand) < n:  # a small data file may hold no sentences: show phrases instead
        cand += sample_pairs(other, n - len(cand))
    return sample_pairs(cand, n)


@app.command()
def quickstart(out: str = typer.Option("qrnn-quickstart", "--out", help="Directory for everything it writes."),
               train_minutes: Optional[float] = typer.Option(None, "--train-minutes",
                                                             help="Train a fresh model for this many minutes first "
                                                                  "(default: use the shipped pretrained model)."),
               limit: int = typer.Option(500, "--limit", help="Score on a stable sample of this many test pairs."),
               examples: int = typer.Option(5, "--examples", help="Held-out sentences to translate, streaming."),
               fo_pool: str = typer.Option("custom", "--fo-pool", help="custom (FoPool op) or portable."),
               threads: int = threads_option(2, "CPU threads."),
               data_file: Optional[Path] = typer.Option(None, "--data-file", help="A dictionary file in the "
                                                        "trans-de-en format instead of the installed one."),
               seed: int = typer.Option(1, "--seed", help="Seed of a --train-minutes run."),
               hidden: int = typer.Option(256, "--hidden", help="Hidden units per layer of a --train-minutes model."),
               layers: int = typer.Option(4, "--layers", help="Layers of a --train-minutes model.")):
    """Export, verify, score and stream the German->English QRNN translator (the README's first command)."""
    import sys

    import torch

    from qrnn_deploy.data.dictionary import dictionary_path, load_line_sources, load_splits, unseen_sources
    from qrnn_deploy.data.scoring import format_scores, sample_pairs, score
    from qrnn_deploy.errors import BuildError, ConfigError, DataError
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.nn import load_checkpoint
    from qrnn_deploy.paths import output_dir

    check_positive(train_minutes, "--train-minutes")
    check_at_least(limit, "--limit", 1)
    check_at_least(examples, "--examples", 0)
    check_at_least(hidden, "--hidden", 1)
    check_at_least(layers, "--layers", 1)
    check_at_most(hidden, "--hidden", MAX_HIDDEN)
    check_at_most(layers, "--layers", MAX_LAYERS)
    check_threads(threads)
    check_seed(seed)
    if fo_pool not in ("custom", "portable"):
        raise ConfigError(f"--fo-pool must be 'custom' or 'portable', got {fo_pool!r}")
    if data_file is not None:
        dictionary_path(data_file)  # a file the user names must be there (the default may be absent)
    if train_minutes is not None:
        from qrnn_deploy.nn.train import RUN_FILES

        held = [n for n in RUN_FILES if (Path(out) / "train" / n).exists()]
        if held:
            raise ConfigError(f"{Path(out) / 'train'} holds the run of an earlier quickstart ({', '.join(held)}): "
                              "remove it or give another --out (nothing was changed)")
    out = output_dir(out, "--out directory")
    echo = typer.echo
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    summary: dict = {"out": str(out)}

    # 1. The model.
    splits = None
    if train_minutes is not None:
        from qrnn_deploy.nn.train import TrainConfig, train

        splits = load_splits(data_file)  # DataError with the install hint when missing
        echo(f"[1/5] training a fresh model for {train_minutes:g} min -> {out / 'train'}")
        cfg = TrainConfig(seed=seed, hidden_size=hidden, num_layers=layers,
                          encoder_window=[6] + [2] * (layers - 1), log_samples=0)
        train(splits, out / "train", cfg, minutes=train_minutes, progress=sys.stdout.isatty())
        ckpt = out / "train" / "best.safetensors"
    else:
        ckpt = pretrained_path()
        echo(f"[1/5] the shipped pretrained model: {ckpt}")
    model = load_checkpoint(ckpt)
    extra = model.extra or {}
    n_params = sum(p.numel() for p in model.parameters())
    c = model.config
    echo(f"      QRNNSeq2Seq {c.num_layers}x{c.hidden_size}, {n_params:,} parameters, trained "
         f"{extra.get('trained_seconds', 0) / 60:.0f} min ({extra.get('steps', '?')} steps)")
    summary.update(checkpoint=str(ckpt), parameters=n_params)

    # 2. Export + verify.
    bundle_dir = out / "bundle"
    if fo_pool == "custom":
        from qrnn_deploy._native import ort_library_path

        try:  # export would succeed without it (verified on onnx.reference), the runtime would not
            ort_library_path()
        except BuildError as e:
            echo(f"      the custom op is not available ({e}); exporting the portable variant instead")
            fo_pool = "portable"
    echo(f"[2/5] exporting to {bundle_dir} (fo_pool={fo_pool}) and verifying against PyTorch")
    try:
        manifest = export_bundle(model, bundle_dir, fo_pool=fo_pool, verify=True)
    except BuildError as e:
        if fo_pool != "custom":
            raise
        echo(f"      the custom op is not available ({e}); exporting the portable variant instead")
        fo_pool = "portable"
        manifest = export_bundle(model, bundle_dir, fo_pool=fo_pool, verify=True)
    v = manifest.metadata.get("verification") or {}
    if v:
        echo(f"      verified on {v.get('engine')}: {v.get('cases')} cases, max |onnx - torch| = "
             f"{v.get('max_abs_error', float('nan')):.1e}, max |chunked - whole| = "
             f"{v.get('max_chunked_vs_whole', float('nan')):.1e}")
    summary.update(bundle=str(bundle_dir), fo_pool=fo_pool, verification=v)

    from qrnn_deploy.cli.evaluate import target_limit, translate_with_bundle
    from qrnn_deploy.runtime import load_bundle

    translator = load_bundle(str(bundle_dir), threads=threads).translator()

    # 3. Score on the test split.
    try:
        splits = splits if splits is not None else load_splits(data_file)
    except DataError as e:
        if data_file is not None:
            raise
        echo(f"[3/5] not scored: {e}")
        splits = None
    if splits is not None:
        pairs = sample_pairs(splits["test"], limit)
        if not pairs:
            raise DataError("the test split is empty (data file too small?)")
        sources = sorted({d for d, _ in pairs})
        echo(f"[3/5] scoring the bundle on {len(pairs):,} test pairs (a stable sample; the full split: "
             f"`qrnn-deploy evaluate {bundle_dir}`)")
        t0 = time.perf_counter()
        hyp_of = dict(zip(sources, translate_with_bundle(translator, sources)))
        unseen = unseen_sources(splits, load_line_sources(data_file))
        s = score([hyp_of[d] for d, _ in pairs], pairs, unseen=unseen)
        echo("      " + format_scores(s).replace("\n", "\n      "))
        echo(f"      ({time.perf_counter() - t0:.0f} s)")
        summary["scores"] = s
        examples_src = held_out_sentences(splits["test"], examples)
    else:
        examples_src = [(d, None) for d in FALLBACK_SENTENCES[:examples]]

    # 4. Streaming translations.
    echo(f"[4/5] streaming translations of {len(examples_src)} held-out sentences (token by token, runtime only)")
    streamed = []
    for d, ref in examples_src:
        echo(f"      de:  {d}")
        sys.stdout.write("      en:  ")
        sys.stdout.flush()
        ts = translator.stream()
        ts.feed(d)
        toks = []
        for tok in ts.tokens(max_len=target_limit(ts.source_length)):
            toks.append(tok)
            sys.stdout.write(translator.token_text(tok))
            sys.stdout.flush()
        ts.close()
        sys.stdout.write("\n")
        if ref is not None:
            echo(f"      ref: {ref}")
        streamed.append({"de": d, "en": translator.detokenize(toks), "ref": ref})
    summary["examples"] = streamed

    # 5. What next.
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    (out / "quickstart.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    echo(f"[5/5] done in {summary['seconds']:.0f} s; everything is in {out}/ (summary: {out / 'quickstart.json'})")
    echo("next:")
    echo(f"  qrnn-deploy translate {bundle_dir} \"Ich habe keine Zeit.\"   # stream one translation")
    echo(f"  qrnn-deploy serve {bundle_dir}                               # web page + WebSocket API")
    echo(f"  qrnn-deploy evaluate {bundle_dir}                            # BLEU / chrF on the whole test split")
    echo(f"  qrnn-deploy train --task de-en --minutes 30 --out runs/de-en   # train your own")
