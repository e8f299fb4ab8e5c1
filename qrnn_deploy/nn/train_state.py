"""A training run's state on disk: what resuming needs besides the model, and the staged commit
that keeps a run resumable when a checkpoint's write fails (qrnn_deploy/nn/train.py uses it).

`state.safetensors` holds the Adam moments and the CPU RNG state; `state.json` the step, the
position in the epoch, the Python RNG state and the rest. A checkpoint writes every file as
`<name>.new` first and `commit_staged` moves them in together, state.json last.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

import torch

from qrnn_deploy.errors import CheckpointError, QRNNError


# What a run directory holds once a run has saved anything: a new run must not write over them.
RUN_FILES = ("last.safetensors", "best.safetensors", "state.json", "state.safetensors", "log.jsonl")


def save_train_state(out: Path, optimizer: torch.optim.Optimizer, info: dict, suffix: str = "") -> None:
    """Adam moments + CPU RNG state as safetensors, the rest (step, epoch, ...) as JSON, into
    state.safetensors / state.json (+ `suffix`: staged files that `commit_staged` moves in)."""
    from safetensors.torch import save_file

    tensors = {"rng.torch": torch.get_rng_state()}
    sd = optimizer.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    tmp = out / "state.safetensors.tmp"
    try:
        save_file(tensors, str(tmp))
    except Exception as e:  # safetensors' own error type for I/O failures (a full disk)
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the training state {tmp}: {e}") from None
    tmp.replace(out / ("state.safetensors" + suffix))
    meta = dict(info, param_groups=[{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
                python_rng=_py_rng_to_json(info.pop("_py_rng", None)))
    tmpj = out / "state.json.tmp"
    try:
        tmpj.write_text(json.dumps(meta, indent=1))
    except OSError as e:
        tmpj.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the training state {tmpj}: {e.strerror or e}") from None
    tmpj.replace(out / ("state.json" + suffix))


STAGED = ".new"


def commit_staged(out: Path, names: Sequence[str]) -> None:
    """Moves the staged `<name>.new` files of one checkpoint into place, state.json last: a write
    that failed earlier left the previous checkpoint whole, and resume compares the steps."""
    for name in sorted(names, key=lambda n: n == "state.json"):
        (out / (name + STAGED)).replace(out / name)


def recover_staged(out: Path) -> None:
    """Finishes or drops a checkpoint whose commit was cut short (the process died between the
    renames): staged files whose state.json.new matches the step of last.safetensors are moved
    in (state.json last); otherwise the staged files are dropped and the old checkpoint stands."""
    staged_json = out / ("state.json" + STAGED)
    if not staged_json.is_file():
        discard_staged(out)
        return
    from qrnn_deploy.nn.checkpoint import read_checkpoint_metadata

    try:
        step = json.loads(staged_json.read_text(encoding="utf-8")).get("step")
        last_step = read_checkpoint_metadata(out / "last.safetensors")["extra"].get("steps")
    except (OSError, ValueError, QRNNError, AttributeError):
        step, last_step = None, "unknown"
    if step is not None and step == last_step:
        commit_staged(out, [n for n in RUN_FILES if (out / (n + STAGED)).is_file()])
    else:
        discard_staged(out)


def discard_staged(out: Path) -> None:
    for name in RUN_FILES:
        try:
            (out / (name + STAGED)).unlink(missing_ok=True)
        except OSError:
            pass


# state.json keys a resumed run reads, with their JSON types.
_STATE_KEYS = {"step": int, "epoch": int, "pos": int, "trained_s": (int, float), "target_chars": int,
               "best_valid_loss": (int, float), "param_groups": list, "python_rng": list}


def read_train_state_info(out: Path) -> dict:
    """state.json of the run in `out`, checked; CheckpointError when it is missing or corrupt."""
    path = out / "state.json"
    if not path.is_file() or not (out / "state.safetensors").is_file():
        raise CheckpointError(f"--resume: {out} holds no training state (state.json / state.safetensors); "
                              "start without --resume")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"--resume: {path} is corrupt ({e}); start without --resume") from None
    bad = [k for k, kind in _STATE_KEYS.items() if not isinstance(meta, dict) or not isinstance(meta.get(k), kind)]
    if bad:
        raise CheckpointError(f"--resume: {path} is corrupt (missing or malformed: {', '.join(bad)}); "
                              "start without --resume")
    return meta


def load_train_state(out: Path, optimizer: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    meta = read_train_state_info(out)
    try:
        tensors = load_file(str(out / "state.safetensors"))
        sd = optimizer.state_dict()
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        sd["state"] = state
        for g, saved in zip(sd["param_groups"], meta["param_groups"]):
            g.update({k: v for k, v in saved.items() if k != "params"})
        optimizer.load_state_dict(sd)
        torch.set_rng_state(tensors["rng.torch"])
    except Exception as e:  # safetensors and the optimizer raise many types for a damaged state
        raise CheckpointError(f"--resume: the training state in {out} is corrupt ({type(e).__name__}: {e}); "
                              "start without --resume") from None
    return meta


def _py_rng_to_json(state):
    if state is None:
        return None
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_rng_from_json(j):
    return (j[0], tuple(j[1]), j[2])


def _set_py_rng(rng: random.Random, j, where: Path) -> None:
    try:
        rng.setstate(_py_rng_from_json(j))
    except (IndexError, TypeError, ValueError) as e:
        raise CheckpointError(f"--resume: {where / 'state.json'} is corrupt (python_rng: {e}); "
                              "start without --resume") from None
