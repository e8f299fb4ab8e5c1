"""Checkpoints: one safetensors file holding the weights, the model config (JSON) and extras.

Loading never unpickles: tensors come from safetensors, everything else from JSON metadata.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from qrnn_deploy.errors import CheckpointError, ConfigError
from qrnn_deploy.nn.classifier import QRNNClassifier
from qrnn_deploy.nn.lm import QRNNLanguageModel
from qrnn_deploy.nn.seq2seq import QRNNSeq2Seq

CHECKPOINT_FORMAT = "qrnn-deploy-checkpoint"
CHECKPOINT_VERSION = 1
MODEL_TYPES = {cls.model_type: cls for cls in (QRNNLanguageModel, QRNNClassifier, QRNNSeq2Seq)}
# quantize="int8": every floating weight matrix of at least INT8_MIN_ELEMENTS values is stored as
# int8 with one float32 scale per output row (symmetric: w ~ q * scale, |q| <= 127) under
# name + INT8_SCALE_SUFFIX ('@' cannot occur in a parameter name); biases, norms and small
# tensors keep their dtype. Loading dequantizes to float (the model computes as before).
INT8_ROWWISE = "int8-rowwise"
INT8_SCALE_SUFFIX = "@int8_scale"
INT8_MIN_ELEMENTS = 4096


def _quantize_int8_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[rows, ...] float -> (int8 of the same shape, float32 scale [rows])."""
    w = t.detach().float().reshape(t.shape[0], -1)
    scale = w.abs().amax(1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows stay zero
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(t.shape).contiguous(), scale.contiguous()


def _file_mode() -> int:
    """The mode `open()` gives a new file here: 0666 less the process umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def save_checkpoint(model: nn.Module, path, extra: Optional[dict] = None, dtype: Optional[torch.dtype] = None,
                    quantize: Optional[str] = None) -> Path:
    """Writes `model` (a qrnn_deploy.nn model) to `path`; `extra` is any JSON-able dict (e.g. the
    vocabulary, training info). `dtype=torch.float16` stores half-precision weights;
    `quantize="int8"` stores weight matrices as int8 with a float32 scale per row (about a
    quarter of float32's size; on the shipped translator chrF moved by 0.03, docs/results.md),
    other tensors in `dtype`."""
    from safetensors.torch import save_file

    if type(model).__name__ not in {c.__name__ for c in MODEL_TYPES.values()}:
        raise CheckpointError(f"save_checkpoint: {type(model).__name__} is not a qrnn_deploy model")
    if quantize not in (None, "int8"):
        raise CheckpointError(f"save_checkpoint: unknown quantize={quantize!r}; use None or 'int8'")
    _check_float_dtype(dtype, "save_checkpoint", allow_none=True)
    path = _checkpoint_path(path, "save_checkpoint")
    if path.is_dir():
        raise CheckpointError(f"save_checkpoint: {path} is a directory; give a file name (e.g. {path / 'model.safetensors'})")
    extra = extra or getattr(model, "extra", None)
    if extra is not None and not isinstance(extra, dict):
        raise CheckpointError(f"save_checkpoint: extra must be a dict, got {type(extra).__name__}")
    try:
        extra_json = json.dumps(extra or {})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"save_checkpoint: extra must hold JSON values only ({e})") from None
    tensors = {}
    seen = {}
    for name, t in model.state_dict().items():
        # Tied weights appear twice in state_dict; safetensors refuses shared storage.
        key = (t.data_ptr(), t.shape, t.stride())
        if key in seen:
            continue
        seen[key] = name
        t = t.detach().cpu().contiguous()
        if quantize and t.is_floating_point() and t.dim() >= 2 and t.numel() >= INT8_MIN_ELEMENTS:
            tensors[name], tensors[name + INT8_SCALE_SUFFIX] = _quantize_int8_rows(t)
            continue
        tensors[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "model_type": model.model_type,
        "config": json.dumps(model.config.__dict__),
        "extra": extra_json,
    }
    if quantize:
        meta["quantization"] = INT8_ROWWISE
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=meta)
        os.chmod(tmp, _file_mode())  # safetensors writes 0600; a checkpoint is a plain file (umask)
        os.replace(tmp, path)  # never leave a half-written checkpoint behind
    except Exception as e:  # OSError, or safetensors' own error type for I/O failures
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise CheckpointError(f"save_checkpoint: cannot write {path}: {getattr(e, 'strerror', None) or e}") from None
    return path


def _checkpoint_path(path, where: str) -> Path:
    if isinstance(path, str) and not path:
        raise CheckpointError(f"{where}: the checkpoint path is empty")
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"{where}: the checkpoint path must be a str or path, got {type(path).__name__}")
    return Path(path)


def _check_float_dtype(dtype, where: str, allow_none: bool = False) -> None:
    if dtype is None and allow_none:
        return
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"{where}: dtype must be a floating torch dtype (torch.float32, torch.float16, "
                              f"torch.bfloat16), got {dtype!r}")


def read_checkpoint_metadata(path) -> dict:
    """The checkpoint's metadata: format, version, model_type, config (dict), extra (dict)."""
    from safetensors import safe_open

    path = _checkpoint_path(path, "read_checkpoint_metadata")
    if not path.is_file():
        if path.is_dir():
            raise CheckpointError(f"{path} is a directory, not a checkpoint file (.safetensors)")
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for garbage files
        raise CheckpointError(f"{path} is not a qrnn-deploy checkpoint (not a safetensors file: {e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a qrnn-deploy checkpoint")
    if meta.get("version") != str(CHECKPOINT_VERSION):
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is not supported "
                              f"(this qrnn-deploy reads version {CHECKPOINT_VERSION})")
    if meta.get("model_type") not in MODEL_TYPES:
        raise CheckpointError(f"{path}: unknown model type {meta.get('model_type')!r}")
    if meta.get("quantization", INT8_ROWWISE) != INT8_ROWWISE:
        raise CheckpointError(f"{path}: unknown weight quantization {meta['quantization']!r} "
                              f"(this qrnn-deploy reads {INT8_ROWWISE!r})")
    try:
        out = {**meta, "config": json.loads(meta["config"]), "extra": json.loads(meta.get("extra", "{}"))}
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({e})") from None
    for key in ("config", "extra"):
        if not isinstance(out[key], dict):
            raise CheckpointError(f"{path}: corrupt checkpoint metadata ({key} is not a JSON object)")
    return out


def load_checkpoint(path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Rebuilds the model saved at `path` (weights cast to `dtype`), in eval mode.
    `model.extra` holds the checkpoint's extra dict."""
    from safetensors.torch import load_file

    _check_float_dtype(dtype, "load_checkpoint")
    meta = read_checkpoint_metadata(path)
    cls = MODEL_TYPES[meta["model_type"]]
    try:
        model = cls.from_config(cls.config_class(**meta["config"]))
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: config does not fit {cls.__name__} ({e})") from None
    except (RuntimeError, MemoryError) as e:  # sizes no memory holds (a damaged or hostile file)
        raise CheckpointError(f"{path}: its config asks for a model this machine cannot hold "
                              f"({str(e).splitlines()[0][:120]})") from None
    try:
        tensors = load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt checkpoint ({e})") from None
    if meta.get("quantization") == INT8_ROWWISE:
        tensors = _dequantize(path, tensors)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    # load_state_dict would raise a RuntimeError listing every tensor; name the first one.
    own = model.state_dict()
    wrong = [(k, list(v.shape), list(own[k].shape)) for k, v in tensors.items() if k in own and v.shape != own[k].shape]
    if wrong:
        name, got, want = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{path}: weights do not fit the config: tensor {name!r} has shape {got}, "
                              f"the config needs {want}{more}")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Tied weights are stored once; anything else missing is corruption.
    tied = {n for n in missing if _is_tied(model, n)}
    if set(missing) - tied or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config (missing {sorted(set(missing) - tied)}, "
                              f"unexpected {sorted(unexpected)})")
    model.extra = meta["extra"]
    # load_state_dict copies into the float32 parameters the model was built with.
    return model.to(dtype).eval()


def _dequantize(path, tensors: dict) -> dict:
    """int8 matrices and their row scales -> float32 matrices (q * scale per row)."""
    out = {}
    for name, t in tensors.items():
        if name.endswith(INT8_SCALE_SUFFIX):
            continue
        scale = tensors.get(name + INT8_SCALE_SUFFIX)
        if scale is None:
            if t.dtype == torch.int8:
                raise CheckpointError(f"{path}: int8 tensor {name!r} has no {INT8_SCALE_SUFFIX!r} scale")
            out[name] = t
            continue
        if t.dtype != torch.int8 or t.dim() < 2 or scale.shape != (t.shape[0],) or not scale.is_floating_point():
            raise CheckpointError(f"{path}: quantized tensor {name!r} ({t.dtype}, {list(t.shape)}) does not match "
                                  f"its scale ({scale.dtype}, {list(scale.shape)})")
        out[name] = t.float() * scale.float().reshape(-1, *([1] * (t.dim() - 1)))
    stray = [n for n in tensors if n.endswith(INT8_SCALE_SUFFIX) and n[:-len(INT8_SCALE_SUFFIX)] not in tensors]
    if stray:
        raise CheckpointError(f"{path}: scales without their int8 tensors: {stray}")
    return out


def _is_tied(model: nn.Module, name: str) -> bool:
    return name == "out.weight" and getattr(getattr(model, "config", None), "tie_weights", False)
