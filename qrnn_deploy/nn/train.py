"""Training a character-level QRNN translator (`qrnn-deploy train --task de-en`).

One run directory holds
- `last.safetensors`: the model after the latest checkpoint (a qrnn_deploy.nn checkpoint whose
  `extra` holds the vocabulary and training info),
- `best.safetensors`: the model with the lowest validation loss so far,
- `state.safetensors` + `state.json`: what resuming needs besides the model: the Adam moments
  (tensors), the step, the position in the epoch and the RNG states (JSON),
- `log.jsonl`: one JSON line per validation.

Reproducible: with the same seed, data and device, a run (and a resumed run) sees the same
batches in the same order and starts from the same weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from qrnn_deploy.errors import CheckpointError, ConfigError, DataError, QRNNError
from qrnn_deploy.nn.batching import collate, greedy_decode_batch, make_batches
from qrnn_deploy.nn.checkpoint import load_checkpoint, save_checkpoint
from qrnn_deploy.nn.seq2seq import QRNNSeq2Seq
from qrnn_deploy.nn.train_state import (RUN_FILES, STAGED, commit_staged, discard_staged, load_train_state,
                                        read_train_state_info, recover_staged, save_train_state, _set_py_rng)
from qrnn_deploy.paths import output_dir
from qrnn_deploy.vocab import CharVocab, PAD


@dataclass
class TrainConfig:
    """Hyper-parameters of a de-en run. The defaults are the shipped model's (docs/results.md)."""
    hidden_size: int = 256
    num_layers: int = 4
    embed_size: int = 64
    encoder_window: list = field(default_factory=lambda: [6, 2, 2, 2])
    decoder_window: int = 2
    lr: float = 1e-3
    lr_final: float = 0.1           # cosine decay to lr * lr_final at the end of a --minutes run
    clip: float = 5.0
    max_tokens: int = 6000          # padded (source + target) symbols per batch
    max_chars: int = 150            # pairs longer than this (either side) are not trained on
    vocab_min_count: int = 20       # rarer characters map to <unk>
    seed: int = 1
    valid_every_s: float = 300.0    # validate + checkpoint every so many seconds of training
    valid_pairs: int = 1000         # validation loss on this many fixed valid pairs
    log_samples: int = 3


def build_model(cfg: TrainConfig, vocab_size: int) -> QRNNSeq2Seq:
    return QRNNSeq2Seq(vocab_size, vocab_size, embed_size=cfg.embed_size, hidden_size=cfg.hidden_size,
                       num_layers=cfg.num_layers, encoder_window=list(cfg.encoder_window),
                       decoder_window=cfg.decoder_window, pooling="fo", zoneout=0.0, dropout=0.0)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def loss_on(model, src_ids, src_len, tgt_in, tgt_out) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the real (non-pad) target symbols, and how many there were."""
    logits = model(src_ids, src_len, tgt_in)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD)
    return loss, int((tgt_out != PAD).sum())


@torch.no_grad()
def evaluate_loss(model, src: Sequence, tgt: Sequence, max_tokens: int, device) -> float:
    """Per-symbol cross-entropy (nats) of the pairs, in fixed order."""
    model.eval()
    batches = make_batches(src, tgt, max_tokens, random.Random(0))
    total, n = 0.0, 0
    for b in batches:
        loss, k = loss_on(model, *collate(src, tgt, b, device))
        total += float(loss) * k
        n += k
    model.train()
    return total / max(n, 1)


DEFAULT_MINUTES = 10.0  # a run given neither --minutes nor --steps (a resumed finished run: 10 more)
BATCHING_VERSION = 2  # make_batches' width rule (runs saved without it resume with the legacy one)


def cosine_lr(lr: float, lr_final: float, frac: float) -> float:
    """The learning rate at `frac` (0..1) of a run: a cosine from lr down to lr * lr_final."""
    return lr * (lr_final + (1 - lr_final) * 0.5 * (1 + math.cos(math.pi * frac)))


class ThreadChooser:
    """Picks 1 or 2 PyTorch threads by measurement, again and again (`--threads 0`).

    On a CPU shared with other jobs a second intra-op thread can halve a step's time (idle second
    core) or double it (its elementwise ops wait for a busy core), and the load changes. Every
    `period` steps it times `probe` steps with 1 thread and `probe` with 2 (target symbols per
    second) and uses the faster for the rest of the period. Results never depend on it beyond
    float rounding of the matrix products.
    """

    def __init__(self, period: int = 200, probe: int = 8):
        self.period, self.probe = period, probe
        self.i = 0
        self.rate = {1: [0, 0.0], 2: [0, 0.0]}
        self.choice = 1

    def before_step(self) -> None:
        ph = self.i % self.period
        if ph == 0:
            self.rate = {1: [0, 0.0], 2: [0, 0.0]}
        n = 1 if ph < self.probe else 2 if ph < 2 * self.probe else self.choice
        if ph == 2 * self.probe:
            (c1, t1), (c2, t2) = self.rate[1], self.rate[2]
            self.choice = n = 2 if c2 / max(t2, 1e-9) > c1 / max(t1, 1e-9) else 1
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    def after_step(self, chars: int, seconds: float) -> None:
        ph = self.i % self.period
        if ph < 2 * self.probe:
            r = self.rate[1 if ph < self.probe else 2]
            r[0] += chars
            r[1] += seconds
        self.i += 1


# ------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    seconds: float
    target_chars: int
    best_valid_loss: float
    parameters: int


def data_fingerprint(splits: dict) -> dict:
    """What a resumed run must find again: the training and validation pairs, in order."""
    out = {}
    for name in ("train", "valid"):
        pairs = list(splits.get(name, []))
        h = hashlib.sha1()
        for d, e in pairs:
            h.update(f"{d}\t{e}\n".encode("utf-8", "surrogatepass"))
        out[name] = {"pairs": len(pairs), "sha1": h.hexdigest()}
    return out


def prepare_data(splits: dict, cfg: TrainConfig, vocab: Optional[CharVocab] = None):
    """(vocab, train src/tgt ids, valid src/tgt ids) from {'train': pairs, 'valid': pairs}."""
    train = [(d, e) for d, e in splits["train"] if 0 < len(d) <= cfg.max_chars and 0 < len(e) <= cfg.max_chars]
    if not train:
        n = len(splits["train"])
        if n:
            raise DataError(f"none of the {n:,} training pairs fits: every one is empty or longer than "
                            f"{cfg.max_chars} characters on a side (TrainConfig.max_chars)")
        raise DataError("no training pairs (is the data file empty?)")
    if vocab is None:
        vocab = CharVocab.build((t for p in train for t in p), min_count=cfg.vocab_min_count)
        if len(vocab) <= 4:
            vocab = CharVocab.build(t for p in train for t in p)
    valid = [(d, e) for d, e in splits.get("valid", []) if 0 < len(d) <= cfg.max_chars and 0 < len(e) <= cfg.max_chars]
    valid = valid[:cfg.valid_pairs]
    enc = vocab.encode
    return (vocab, [enc(d) for d, _ in train], [enc(e) for _, e in train],
            [enc(d) for d, _ in valid], [enc(e) for _, e in valid], valid)


def train(splits: dict, out_dir, cfg: TrainConfig, minutes: Optional[float] = None,
          max_steps: Optional[int] = None, resume: bool = False, device: str = "cpu",
          progress: bool = True, log: Callable[[str], None] = print,
          threads: Optional[int] = None, valid_every_s: Optional[float] = None) -> TrainResult:
    """Trains a QRNNSeq2Seq on `splits` until `minutes` of training time or `max_steps` steps.

    Writes checkpoints to `out_dir` every `cfg.valid_every_s` seconds and at the end.
    threads: PyTorch CPU threads; 0 = adapt (see `ThreadChooser`); None = leave as set.
    resume: continue the run in `out_dir` with the settings it was made with (`cfg` is not used);
    valid_every_s, when given, replaces the validation interval (of `cfg` or of the resumed run).
    """
    if minutes is None and max_steps is None and not resume:
        raise ConfigError("train: give --minutes or max_steps")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu")
    held = [n for n in RUN_FILES if (Path(out_dir) / n).exists()]
    if not resume and held:
        raise ConfigError(f"{out_dir} already holds a run ({', '.join(held)}): continue it with --resume, or "
                          "train into another --out (nothing was changed)")
    out = output_dir(out_dir, "run directory")

    meta = None
    if resume:
        if not (out / "last.safetensors").is_file():
            raise CheckpointError(f"--resume: {out / 'last.safetensors'} does not exist; start without --resume")
        recover_staged(out)
        read_train_state_info(out)  # a damaged state fails now, not after the data is prepared
        model = load_checkpoint(out / "last.safetensors").train()
        if model.model_type != "seq2seq":
            raise CheckpointError(f"--resume: {out / 'last.safetensors'} holds a {model.model_type} model, not the "
                                  "translation model qrnn-deploy train makes; start a new run in another --out")
        extra = model.extra
        try:
            cfg = TrainConfig(**extra["train_config"])
            vocab = CharVocab.from_json(extra["vocab"])
        except (KeyError, TypeError, ValueError, QRNNError) as e:
            raise CheckpointError(f"--resume: {out / 'last.safetensors'} was not written by qrnn-deploy train "
                                  f"(its training settings or vocabulary are missing or unknown: {e})") from None
    else:
        torch.manual_seed(cfg.seed)
        vocab = None
    if valid_every_s is not None:
        if (isinstance(valid_every_s, bool) or not isinstance(valid_every_s, (int, float))
                or not math.isfinite(valid_every_s) or valid_every_s <= 0):
            raise ConfigError(f"train: valid_every_s must be a positive number of seconds, got {valid_every_s!r}")
        cfg = replace(cfg, valid_every_s=float(valid_every_s))
    vocab, tr_src, tr_tgt, va_src, va_tgt, va_pairs = prepare_data(splits, cfg, vocab)
    if not resume:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, len(vocab))
    model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, epoch, pos, trained_s, chars_total, best = 0, 0, 0, 0.0, 0, math.inf
    py_rng = random.Random(cfg.seed)
    data_fp = data_fingerprint(splits)
    saved_deadline, legacy_width = None, False
    if resume:
        meta = load_train_state(out, opt)
        step, epoch, pos = meta["step"], meta["epoch"], meta["pos"]
        saved_fp = meta.get("data")  # absent in runs saved before it was recorded
        if saved_fp is not None and saved_fp != data_fp:
            raise CheckpointError(f"--resume: the data differ from the run's ({saved_fp.get('train', {}).get('pairs')} "
                                  f"training pairs then, {data_fp['train']['pairs']} now, or the same count with other "
                                  "content): resume with the run's --data-file, or start a new run")
        saved_step = model.extra.get("steps")
        if isinstance(saved_step, int) and saved_step != step:
            raise CheckpointError(f"--resume: last.safetensors is at step {saved_step} but the training state at step "
                                  f"{step} (interrupted while saving?); start a new run, or restore both from a backup")
        trained_s, chars_total, best = meta["trained_s"], meta["target_chars"], meta["best_valid_loss"]
        _set_py_rng(py_rng, meta["python_rng"], out)
        saved_deadline = meta.get("deadline_s") if isinstance(meta.get("deadline_s"), (int, float)) else None
        legacy_width = meta.get("batching") != BATCHING_VERSION  # older runs keep their batches
    n_params = count_parameters(model)
    log(f"model: QRNNSeq2Seq {cfg.num_layers}x{cfg.hidden_size}, windows enc {cfg.encoder_window} "
        f"dec {cfg.decoder_window}, {n_params:,} parameters, vocab {len(vocab)}; "
        f"{len(tr_src):,} training pairs, {len(va_src):,} validation pairs; device {dev}")

    def extra_info():
        return {"vocab": vocab.to_json(), "task": "de-en", "train_config": asdict(cfg),
                "steps": step, "trained_seconds": round(trained_s, 1), "target_chars": chars_total,
                "parameters": n_params}

    # The epoch's batch order comes from py_rng's state at the epoch start (saved with the
    # state), so a resumed run rebuilds exactly the same batches and skips the first `pos`.
    epoch_rng_state = py_rng.getstate()
    batches = make_batches(tr_src, tr_tgt, cfg.max_tokens, py_rng, legacy_width=legacy_width)
    if not 0 <= pos <= len(batches):
        raise CheckpointError(f"--resume: the training state's batch position {pos} is outside this epoch's "
                              f"{len(batches)} batches; the state is damaged")
    # The learning rate follows a cosine from 0 trained seconds to `deadline`; a resumed run
    # continues the curve from where it stopped, stretched to its new end when given --minutes,
    # else on to the end it had (or 10 more minutes when it had reached it).
    if minutes is not None:
        deadline = trained_s + minutes * 60.0
    elif max_steps is not None:
        # A stop after N steps keeps the run's curve and its end (when it has one ahead).
        deadline = saved_deadline if saved_deadline is not None and saved_deadline > trained_s else None
    elif saved_deadline is not None and saved_deadline > trained_s:
        deadline = saved_deadline
        log(f"resuming to the run's end: {(deadline - trained_s) / 60:.1f} more training minutes")
    else:
        deadline = trained_s + DEFAULT_MINUTES * 60.0
    start_s = trained_s
    ckpt_step = None  # the step of this run's last checkpoint

    def checkpoint(reason: str):
        nonlocal best, ckpt_step
        vloss = evaluate_loss(model, va_src, va_tgt, cfg.max_tokens, dev) if va_src else float("nan")
        samples = []
        if va_pairs and cfg.log_samples:
            hyps = greedy_decode_batch(model, [vocab.encode(d) for d, _ in va_pairs[:cfg.log_samples]],
                                       max_len=lambda n: min(200, 2 * n + 20))
            samples = [(d, e, vocab.decode(h)) for (d, e), h in zip(va_pairs, hyps)]
        improved = va_src and vloss < best
        if improved:
            best = vloss
        info = extra_info()
        info["valid_loss"] = None if math.isnan(vloss) else vloss
        # Every file is written under a staged name first and moved in only when all were
        # written: a full disk (or Ctrl-C) while saving leaves the previous checkpoint whole.
        # Without validation pairs the last model is the best one can tell.
        staged = ["last.safetensors", "state.safetensors", "state.json"]
        if improved or not va_src or not (out / "best.safetensors").is_file():
            staged.append("best.safetensors")
        try:
            save_checkpoint(model, out / ("last.safetensors" + STAGED), extra=info)
            if "best.safetensors" in staged:
                save_checkpoint(model, out / ("best.safetensors" + STAGED), extra=info)
            save_train_state(out, opt, {"step": step, "epoch": epoch, "pos": pos, "trained_s": trained_s,
                                        "target_chars": chars_total, "best_valid_loss": best,
                                        "_py_rng": epoch_rng_state, "data": data_fp, "deadline_s": deadline,
                                        "batching": None if legacy_width else BATCHING_VERSION},
                             suffix=STAGED)
        except BaseException:
            discard_staged(out)
            raise
        commit_staged(out, staged)
        ckpt_step = step
        rec = {"step": step, "epoch": epoch, "trained_s": round(trained_s, 1), "target_chars": chars_total,
               "valid_loss": info["valid_loss"], "train_loss": None if math.isnan(run_loss) else run_loss,
               "reason": reason,
               "samples": [list(s) for s in samples], "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        log(f"[{reason}] step {step} epoch {epoch} trained {trained_s / 60:.1f} min: valid loss {vloss:.3f} "
            f"(best {best:.3f})" + "".join(f"\n    {d}  ->  {h}   (ref: {e})" for d, e, h in samples))

    from contextlib import nullcontext
    bar = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
        bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                       TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
    run_loss, last_ckpt = float("nan"), trained_s
    win_chars, win_t = 0, time.perf_counter()
    with (bar if bar is not None else nullcontext()):
        task = bar.add_task("train", total=(deadline - start_s if deadline is not None else max_steps),
                            info="") if bar else None
        t_prev = time.perf_counter()
        steps_this_run = 0
        chooser = ThreadChooser() if threads == 0 and dev.type == "cpu" else None
        if threads:
            torch.set_num_threads(threads)
        while True:
            if (max_steps is not None and steps_this_run >= max_steps) or (deadline is not None and trained_s >= deadline):
                break
            if pos >= len(batches):
                epoch, pos = epoch + 1, 0
                epoch_rng_state = py_rng.getstate()
                batches = make_batches(tr_src, tr_tgt, cfg.max_tokens, py_rng, legacy_width=legacy_width)
            if deadline is not None:
                frac = min(1.0, trained_s / max(deadline, 1e-9))
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(cfg.lr, cfg.lr_final, frac)
            if chooser is not None:
                chooser.before_step()
            b = batches[pos]
            loss, k = loss_on(model, *collate(tr_src, tr_tgt, b, dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step, pos, steps_this_run = step + 1, pos + 1, steps_this_run + 1
            chars_total += k
            win_chars += k
            lv = float(loss.detach())
            run_loss = lv if math.isnan(run_loss) else 0.98 * run_loss + 0.02 * lv
            now = time.perf_counter()
            if chooser is not None:
                chooser.after_step(k, now - t_prev)
            trained_s += now - t_prev
            t_prev = now
            if bar is not None:
                rate = win_chars / max(now - win_t, 1e-9)
                bar.update(task, completed=(trained_s - start_s if deadline is not None else steps_this_run),
                           info=f"step {step} ep {epoch} loss {run_loss:.3f} {rate:,.0f} tgt chars/s")
                if now - win_t > 30:
                    win_chars, win_t = 0, now
            if trained_s - last_ckpt >= cfg.valid_every_s:
                checkpoint("periodic")
                last_ckpt = trained_s
                t_prev = win_t = time.perf_counter()  # validation time is not training time
                win_chars = 0
        if ckpt_step != step:  # a periodic checkpoint on the last step already saved it
            checkpoint("end")
    return TrainResult(out, step, trained_s, chars_total, best, n_params)
