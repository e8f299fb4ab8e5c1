"""`qrnn-deploy evaluate BUNDLE_OR_CHECKPOINT`: BLEU and chrF on the de-en test split.

A checkpoint (.safetensors) is decoded with the PyTorch model (batched greedy decoding, the same
tokens as `QRNNSeq2Seq.greedy_decode`; beam search one source at a time); a bundle directory is
decoded with the streaming runtime (onnxruntime, no PyTorch), many sources per graph call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import check_at_least, check_threads, threads_option


def target_limit(source_len: int) -> int:
    """Most target symbols for a source of `source_len` symbols: stops runaway repetition early
    (no test translation is longer than twice its source plus 20)."""
    return min(200, 2 * source_len + 20)


def translate_with_checkpoint(model, vocab, sources: Sequence[str], beam: int = 1) -> list[str]:
    """Translations of `sources` by a QRNNSeq2Seq (PyTorch)."""
    from qrnn_deploy.nn.batching import greedy_decode_batch

    ids = [vocab.encode(s) for s in sources]
    if beam == 1:
        out = greedy_decode_batch(model, ids, max_len=target_limit)
    else:
        out = [model.beam_search(x, beam=beam, max_len=target_limit(len(x))) for x in ids]
    return [vocab.decode(o) for o in out]


def translate_with_bundle(translator, sources: Sequence[str], beam: int = 1, group: int = 64,
                          on_done: Optional[Callable[[int], None]] = None) -> list[str]:
    """Translations of `sources` by a runtime Translator, `group` sources per decoder graph call."""
    out: list[str] = [""] * len(sources)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for g0 in range(0, len(order), group):
        idx = order[g0:g0 + group]
        decoders = []
        for i in idx:
            ts = translator.stream()
            ts.feed(sources[i])
            decoders.append(ts.decoder(beam=beam, max_len=target_limit(ts.source_length)))
            ts.close()
        batch = translator.decode_batch()
        toks: list[list[int]] = [[] for _ in idx]
        while not all(d.done for d in decoders):
            for k, new in enumerate(batch.step(decoders)):
                toks[k].extend(new)
        for k, i in enumerate(idx):
            out[i] = translator.detokenize(toks[k])
        if on_done is not None:
            on_done(len(idx))
    return out


def load_translator(path: Path, threads: Optional[int] = None):
    """(kind, translate(sources, beam) -> hyps, description) for a checkpoint file or bundle dir."""
    from qrnn_deploy.errors import CheckpointError

    if path.is_dir():
        from qrnn_deploy.runtime import load_bundle

        tr = load_bundle(str(path), threads=threads).translator()
        return "bundle", (lambda src, beam, cb=None: translate_with_bundle(tr, src, beam, on_done=cb)), str(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a checkpoint (.safetensors) or a bundle directory")
    import torch

    from qrnn_deploy.nn import load_checkpoint
    from qrnn_deploy.vocab import CharVocab

    if threads:
        torch.set_num_threads(threads)
    model = load_checkpoint(path)
    if model.model_type != "seq2seq" or "vocab" not in (model.extra or {}):
        raise CheckpointError(f"{path}: not a translation checkpoint (a seq2seq model with a vocabulary)")
    vocab = CharVocab.from_json(model.extra["vocab"])
    return "checkpoint", (lambda src, beam, cb=None: translate_with_checkpoint(model, vocab, src, beam)), str(path)


def evaluate_model(path: Path, limit: Optional[int] = None, beam: int = 1, data_file: Optional[Path] = None,
                   split: str = "test", threads: Optional[int] = None, show: int = 0) -> dict:
    """Scores of the model at `path` on `limit` pairs (stable sample) of the split."""
    import time

    from qrnn_deploy.data.dictionary import load_line_sources, load_splits, unseen_sources
    from qrnn_deploy.data.scoring import sample_pairs, score
    from qrnn_deploy.errors import DataError

    splits = load_splits(data_file)
    pairs = sample_pairs(splits[split], limit)
    if not pairs:
        raise DataError(f"the {split} split is empty (data file too small?)")
    kind, fn, desc = load_translator(path, threads)
    sources = sorted({d for d, _ in pairs})
    t0 = time.perf_counter()
    hyp_of = dict(zip(sources, fn(sources, beam)))
    dt = time.perf_counter() - t0
    hyps = [hyp_of[d] for d, _ in pairs]
    s = score(hyps, pairs, unseen=unseen_sources(splits, load_line_sources(data_file), split))
    s.update({"model": desc, "kind": kind, "split": split, "beam": beam, "sources": len(sources),
              "decode_seconds": round(dt, 1),
              "examples": [{"de": d, "ref": e, "hyp": h} for (d, e), h in list(zip(pairs, hyps))[:show]]})
    return s


@app.command()
def evaluate(model: Path = typer.Argument(..., help="A checkpoint (.safetensors) or a bundle directory."),
             limit: Optional[int] = typer.Option(None, "--limit", help="Score a stable sample of this many "
                                                 "test pairs (default: all of them)."),
             beam: int = typer.Option(1, "--beam", "-k", min=1, help="Beam size (1 = greedy)."),
             split: str = typer.Option("test", "--split", help="test or valid."),
             data_file: Optional[Path] = typer.Option(None, "--data-file", help="A dictionary file in the "
                                                      "trans-de-en format instead of the installed one."),
             threads: Optional[int] = threads_option(None, "CPU threads."),
             show: int = typer.Option(5, "--show", help="Print this many example translations (0 = none)."),
             json_out: Optional[str] = typer.Option(None, "--json", help="Also write the scores here as JSON.")):
    """BLEU and chrF (sacrebleu) on the de-en test split, beside copying the source."""
    from qrnn_deploy.data.scoring import format_scores
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.paths import output_file

    if split not in ("test", "valid"):
        raise ConfigError(f"--split must be test or valid, got {split!r}")
    check_at_least(limit, "--limit", 1)
    check_at_least(show, "--show", 0)
    check_threads(threads)
    if json_out is not None:  # before decoding for minutes
        output_file(json_out, "--json file")
    s = evaluate_model(model, limit, beam, data_file, split, threads, show)
    for ex in s["examples"]:
        typer.echo(f"  {ex['de']}  ->  {ex['hyp']}   (ref: {ex['ref']})")
    typer.echo(f"{s['kind']} {s['model']}, {split} split, beam {beam}, {s['sources']:,} sources decoded "
               f"in {s['decode_seconds']} s")
    typer.echo(format_scores(s, split))
    if json_out is not None:
        Path(json_out).write_text(json.dumps(s, indent=1, ensure_ascii=False))
