"""Training-loop cases found by review: a failed save that made the run unresumable, a plain
--resume that restarted the learning-rate curve, batches over --max-tokens, and more. Every
test here failed before its fix."""

import json
import math
import random

import pytest
import torch

from qrnn_deploy.data.dictionary import load_splits
from qrnn_deploy.errors import CheckpointError, DataError
from qrnn_deploy.nn import QRNNLanguageModel, save_checkpoint
from qrnn_deploy.nn import train as train_mod
from qrnn_deploy.nn.batching import collate, make_batches
from qrnn_deploy.nn.train import TrainConfig, read_train_state_info, train
from test_data_train import tiny_dict  # noqa: F401 (a fixture)

CFG = dict(hidden_size=16, num_layers=2, encoder_window=[2, 2], max_tokens=400, valid_every_s=1e9, log_samples=0)


def _train(splits, out, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("log", lambda s: None)
    kw.setdefault("threads", 1)
    return train(splits, out, TrainConfig(**CFG), **kw)


def test_a_failed_state_write_leaves_the_previous_checkpoint_whole(tiny_dict, tmp_path, monkeypatch):
    splits = load_splits(tiny_dict)
    _train(splits, tmp_path, max_steps=2)
    real = train_mod.save_train_state

    def full_disk(*a, **k):
        raise CheckpointError("cannot write the training state: No space left on device")

    monkeypatch.setattr(train_mod, "save_train_state", full_disk)
    with pytest.raises(CheckpointError, match="No space left"):
        _train(splits, tmp_path, max_steps=2, resume=True)
    monkeypatch.setattr(train_mod, "save_train_state", real)
    assert not list(tmp_path.glob("*.new"))
    assert read_train_state_info(tmp_path)["step"] == 2
    res = _train(splits, tmp_path, max_steps=1, resume=True)  # was: "last.safetensors is at step 4 ..."
    assert res.steps == 3


def test_plain_resume_goes_on_to_the_end_the_run_had(tiny_dict, tmp_path):
    """Without --minutes a resumed run stretched the cosine over 10 new minutes (the rate jumped
    back up); it now continues the curve to the saved end."""
    splits = load_splits(tiny_dict)
    _train(splits, tmp_path, minutes=0.05, max_steps=2)  # stopped early, 3 s of training planned
    st = read_train_state_info(tmp_path)
    assert st["deadline_s"] == pytest.approx(3.0) and st["trained_s"] < 3.0
    lines = []
    res = _train(splits, tmp_path, resume=True, log=lines.append)
    assert any("resuming to the run's end" in l for l in lines)
    assert 3.0 <= res.seconds < 3.0 + 5.0  # not 10 minutes more
    # The rate at the end is the curve's final value, as for an uninterrupted run.
    lr = json.loads((tmp_path / "state.json").read_text())["param_groups"][0]["lr"]
    assert lr == pytest.approx(1e-4, rel=0.05)


def test_batches_stay_within_max_tokens_as_collate_pads_them():
    rng = random.Random(0)
    src = [[5] * rng.randint(1, 60) for _ in range(3000)]
    tgt = [[6] * rng.randint(1, 60) for _ in range(3000)]
    for max_tokens in (400, 1000, 6000):
        batches = make_batches(src, tgt, max_tokens, random.Random(1))
        assert sorted(i for b in batches for i in b) == list(range(3000))
        for b in batches:
            s, _, ti, _ = collate(src, tgt, b)
            assert len(b) == 1 or s.numel() + ti.numel() <= max_tokens
    # The rule of runs saved before: resumed old runs keep their batches.
    legacy = make_batches(src, tgt, 6000, random.Random(1), legacy_width=True)
    assert max(collate(src, tgt, b)[0].numel() + collate(src, tgt, b)[2].numel() for b in legacy) > 6000


def test_without_validation_pairs_best_is_the_last_model(tiny_dict, tmp_path):
    splits = load_splits(tiny_dict)
    splits = {"train": splits["train"], "valid": [], "test": []}
    cfg = dict(CFG, valid_every_s=0.5)
    res = train(splits, tmp_path, TrainConfig(**cfg), minutes=0.04, progress=False, log=lambda s: None, threads=1)
    from qrnn_deploy.nn import read_checkpoint_metadata

    best = read_checkpoint_metadata(tmp_path / "best.safetensors")["extra"]
    assert best["steps"] == res.steps and best["valid_loss"] is None
    for line in (tmp_path / "log.jsonl").read_text().splitlines():
        assert "NaN" not in line and json.loads(line)["valid_loss"] is None


def test_no_second_checkpoint_at_the_end_when_a_periodic_one_fell_on_the_last_step(tiny_dict, tmp_path, monkeypatch):
    splits = load_splits(tiny_dict)
    cfg = dict(CFG, valid_every_s=1e-9)  # a checkpoint after every step
    train(splits, tmp_path, TrainConfig(**cfg), max_steps=3, progress=False, log=lambda s: None, threads=1)
    steps = [json.loads(l)["step"] for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_all_pairs_too_long_says_so(tmp_path):
    long = "x" * 200
    with pytest.raises(DataError, match=r"none of the 2 training pairs fits.*longer than 150"):
        train_mod.prepare_data({"train": [(long, "a"), ("a", long)], "valid": []}, TrainConfig())


def test_resume_with_a_foreign_model_type_is_a_checkpoint_error(tiny_dict, tmp_path):
    splits = load_splits(tiny_dict)
    _train(splits, tmp_path, max_steps=1)
    extra = json.loads(json.dumps(__import__("qrnn_deploy.nn", fromlist=["x"]).read_checkpoint_metadata(
        tmp_path / "last.safetensors")["extra"]))
    torch.manual_seed(0)
    save_checkpoint(QRNNLanguageModel(10, 4, 4, 1), tmp_path / "last.safetensors", extra=extra)
    with pytest.raises(CheckpointError, match="holds a language_model model"):
        _train(splits, tmp_path, max_steps=1, resume=True)


def test_resume_with_steps_keeps_the_saved_end(tiny_dict, tmp_path):
    """--resume --steps N wrote deadline_s: null, so a later plain --resume restarted the curve."""
    splits = load_splits(tiny_dict)
    _train(splits, tmp_path, minutes=60, max_steps=2)
    _train(splits, tmp_path, max_steps=1, resume=True)
    assert read_train_state_info(tmp_path)["deadline_s"] == pytest.approx(3600.0)


def test_a_commit_cut_between_its_renames_is_finished_on_resume(tiny_dict, tmp_path, monkeypatch):
    """The process died after last.safetensors and state.safetensors were moved in, before
    state.json: the staged state.json matches the new last.safetensors and is rolled forward."""
    splits = load_splits(tiny_dict)
    _train(splits, tmp_path, max_steps=2)
    real = train_mod.commit_staged

    def die_before_state_json(out, names):
        real(out, [n for n in names if n != "state.json"])
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "commit_staged", die_before_state_json)
    with pytest.raises(KeyboardInterrupt):
        _train(splits, tmp_path, max_steps=1, resume=True)
    monkeypatch.setattr(train_mod, "commit_staged", real)
    assert (tmp_path / "state.json.new").is_file() and read_train_state_info(tmp_path)["step"] == 2
    res = _train(splits, tmp_path, max_steps=1, resume=True)  # was: "last.safetensors is at step 3 ..."
    assert res.steps == 4 and not list(tmp_path.glob("*.new"))
