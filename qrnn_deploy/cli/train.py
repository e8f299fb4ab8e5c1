"""`qrnn-deploy train`: train the character-level German->English QRNN translator."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from qrnn_deploy.cli.app import app
from qrnn_deploy.cli.options import (MAX_HIDDEN, MAX_LAYERS, check_at_least, check_at_most, check_positive, check_seed,
                                     check_threads, threads_option)


@app.command()
def train(
    task: str = typer.Option("de-en", "--task", help="What to train; 'de-en' (German->English dictionary)."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Training time (excluding validation). "
                                            "Default 10, unless --steps is given; with --resume: "
                                            "the time the run had left (10 more when it was done), and "
                                            "given, it is added and the learning-rate curve stretched."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Stop after this many steps (with or without --minutes)."),
    out: str = typer.Option("runs/de-en", "--out", help="Run directory: checkpoints, training state, log."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (weights and batch order; default 1)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="Hidden units per layer (default 256)."),
    layers: Optional[int] = typer.Option(None, "--layers", help="Layers in encoder and decoder (default 4)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Padded symbols per batch (default 6000)."),
    valid_every: Optional[float] = typer.Option(None, "--valid-every", help="Seconds of training between "
                                                "validations + checkpoints (default 300)."),
    threads: int = threads_option(2, "CPU threads for PyTorch; 0 = measure 1 vs 2 every 200 steps and use the "
                                  "faster (for a CPU shared with other jobs)."),
    data_file: Optional[Path] = typer.Option(None, "--data-file", help="A dictionary file in the trans-de-en "
                                             "format instead of the installed /usr/share/trans/de-en."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
):
    """Train QRNNSeq2Seq on the TU Chemnitz German-English dictionary (docs/data.md, docs/results.md)."""
    import torch

    from qrnn_deploy.data.dictionary import load_splits
    from qrnn_deploy.errors import ConfigError
    from qrnn_deploy.nn.train import TrainConfig, train as run_train
    from qrnn_deploy.paths import output_dir

    if task != "de-en":
        raise ConfigError(f"--task {task!r} is not known; the only task is 'de-en'")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    check_positive(minutes, "--minutes")
    for option, value in (("--steps", steps), ("--hidden", hidden), ("--layers", layers), ("--max-tokens", max_tokens)):
        check_at_least(value, option, 1)
    check_at_most(hidden, "--hidden", MAX_HIDDEN)
    check_at_most(layers, "--layers", MAX_LAYERS)
    check_threads(threads, minimum=0)
    check_positive(valid_every, "--valid-every")
    check_seed(seed)
    torch.set_num_threads(max(1, threads))
    if device == "cuda" and not torch.cuda.is_available():  # before --out is created
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    splits = load_splits(data_file)
    out = output_dir(out, "--out directory")
    if resume:
        _check_resume_settings(out, {"--hidden": ("hidden_size", hidden), "--layers": ("num_layers", layers),
                                     "--max-tokens": ("max_tokens", max_tokens), "--seed": ("seed", seed)})
    cfg = TrainConfig(seed=1 if seed is None else seed)
    for name, val in (("hidden_size", hidden), ("num_layers", layers), ("max_tokens", max_tokens)):
        if val is not None:
            setattr(cfg, name, val)
    if cfg.num_layers != 4 and layers is not None:
        cfg.encoder_window = [6] + [2] * (cfg.num_layers - 1)
    if minutes is None and steps is None and not resume:
        minutes = 10.0  # a resumed run without --minutes goes on to the end it had (train())
    res = run_train(splits, out, cfg, minutes=minutes, max_steps=steps, resume=resume, device=device,
                    progress=progress, threads=threads, valid_every_s=valid_every)
    typer.echo(f"trained {res.steps} steps, {res.seconds / 60:.1f} min, {res.target_chars:,} target chars "
               f"({res.target_chars / max(res.seconds, 1e-9):,.0f}/s), best valid loss {res.best_valid_loss:.3f}; "
               f"model: {res.out_dir / 'best.safetensors'}")
    typer.echo(f"next: qrnn-deploy evaluate {res.out_dir / 'best.safetensors'}")


def _check_resume_settings(out: Path, given: dict) -> None:
    """A resumed run keeps the settings it was made with: an option that would change its model,
    batches or seed is refused (rather than silently ignored); one that repeats them is fine."""
    from qrnn_deploy.errors import CheckpointError, ConfigError
    from qrnn_deploy.nn.checkpoint import read_checkpoint_metadata

    last = out / "last.safetensors"
    if all(value is None for _, value in given.values()) or not last.is_file():
        return  # nothing to compare, or train() says that --resume has nothing to resume
    saved = read_checkpoint_metadata(last)["extra"].get("train_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"--resume: {last} holds no training settings (not made by qrnn-deploy train)")
    for option, (name, value) in given.items():
        if value is not None and saved.get(name) != value:
            raise ConfigError(f"{option} {value}: the run in {out} was made with {saved.get(name)}, and a resumed "
                              f"run keeps its settings; drop {option}, or start a new run in another --out")
