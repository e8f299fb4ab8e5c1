"""`export_bundle`: a qrnn_deploy.nn model -> a bundle directory (DESIGN.md section 4).

Graphs are written first, verified against the model, and the manifest comes last: a directory
whose export failed never holds a manifest that a runtime would load.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import onnx
import torch

from qrnn_deploy import __version__
from qrnn_deploy.bundle import MANIFEST_NAME, Manifest
from qrnn_deploy.errors import ConfigError, ExportError
from qrnn_deploy.export.graphs import model_graphs
from qrnn_deploy.export.nodes import VARIANTS
from qrnn_deploy.export.schema import FO_POOL_DOMAIN, FO_POOL_OP, FO_POOL_VERSION, register_fo_pool_schema
from qrnn_deploy.paths import output_dir
from qrnn_deploy.vocab import BOS, EOS, PAD, UNK, CharVocab

DEFAULT_OPSET = 17
# Shape(start/end) is avoided, Split/Unsqueeze/Squeeze take their sizes as inputs: opset 13 is
# the oldest whose operator signatures the graphs use.
MIN_OPSET = 13
VERIFY_ENGINES = ("auto", "onnxruntime", "reference")


def _check_opset(opset: Optional[int]) -> int:
    if opset is None:
        return DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportError(f"opset {opset!r} is not supported: use {MIN_OPSET}..{newest} (default {DEFAULT_OPSET})")
    return opset


def _vocab_json(value, where: str) -> dict:
    if isinstance(value, CharVocab):
        return value.to_json()
    try:
        return CharVocab.from_json(value).to_json()
    except ConfigError as e:
        raise ExportError(f"cannot export the {where}: {e}") from None


def resolve_vocab(model, vocab=None) -> Optional[dict]:
    """The manifest's vocabulary entry: `vocab` (a CharVocab, its JSON dict, or for seq2seq a
    (src, tgt) pair), else model.extra["vocab"] or model.extra["src_vocab"] / ["tgt_vocab"].
    Returns {"type": "char", ...}, {"src": {...}, "tgt": {...}} or None."""
    extra = getattr(model, "extra", None) or {}
    if vocab is None:
        if "vocab" in extra:
            vocab = extra["vocab"]
        elif "src_vocab" in extra or "tgt_vocab" in extra:
            vocab = (extra.get("src_vocab"), extra.get("tgt_vocab"))
    if vocab is None:
        return None
    if isinstance(vocab, (tuple, list)) or (isinstance(vocab, dict) and "src" in vocab):
        if getattr(model, "model_type", None) != "seq2seq":
            raise ExportError("a (source, target) vocabulary pair is for seq2seq models; give this "
                              f"{type(model).__name__} one vocabulary")
        if isinstance(vocab, (tuple, list)) and len(vocab) != 2:
            raise ExportError(f"a vocabulary pair is (source, target), got {len(vocab)} entries")
        src, tgt = (vocab.get("src"), vocab.get("tgt")) if isinstance(vocab, dict) else vocab
        if src is None or tgt is None:
            raise ExportError("a vocabulary pair needs both the source and the target vocabulary")
        out = {"src": _vocab_json(src, "source vocabulary"), "tgt": _vocab_json(tgt, "target vocabulary")}
        sizes = [("src_vocab_size", out["src"]), ("tgt_vocab_size", out["tgt"])]
    else:
        out = _vocab_json(vocab, "vocabulary")
        cfg = model.config
        sizes = [(k, out) for k in ("vocab_size", "src_vocab_size", "tgt_vocab_size") if hasattr(cfg, k)]
    for key, v in sizes:
        n = getattr(model.config, key)
        if len(v["symbols"]) > n:
            raise ExportError(f"the vocabulary has {len(v['symbols'])} symbols but the model's {key} is {n}")
    return out


# Quantized graphs against the float model. int8 weights and activations move outputs by up to
# 2.5% of max(1, |reference|) on the shipped translator (the encoder memory) and ~5% on small
# random test models with inflated weights; a broken quantization (wrong layout or scale) is off by the whole range. This
# bound catches the latter; how much quality int8 costs is measured by benchmarks/bench_quantize.py.
QUANTIZED_TOL = 0.1


def _check_options(out_dir, tol, quantized_tol, quantize_block, verify_engine, node_attrs) -> None:
    """The export options, checked before any work (bad ones used to fail half way, or pass
    silently: tol=nan never fails a comparison)."""
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ExportError(f"out_dir must be a str or path, got {type(out_dir).__name__}")
    for name, v in (("tol", tol), ("quantized_tol", quantized_tol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise ExportError(f"{name} must be a finite number >= 0, got {v!r}")
    if isinstance(quantize_block, bool) or not isinstance(quantize_block, int) or quantize_block < 16 \
            or quantize_block & (quantize_block - 1):
        raise ExportError(f"quantize_block must be a power of two >= 16, got {quantize_block!r}")
    if verify_engine not in VERIFY_ENGINES:
        raise ExportError(f"verify_engine must be one of {VERIFY_ENGINES}, got {verify_engine!r}")
    if node_attrs is not None and (not isinstance(node_attrs, dict) or not all(isinstance(k, str) for k in node_attrs)):
        raise ExportError(f"node_attrs must be a dict of attribute name -> value, got {node_attrs!r}")
    # Only the attributes TensorRT's parser reads: FoPool's own (pooling, reverse, ...) come from
    # the model, and the schema knows no others.
    extra = sorted(set(node_attrs or {}) - {"plugin_version", "plugin_namespace"})
    if extra:
        raise ExportError(f"node_attrs may set plugin_version and plugin_namespace only, got {extra}")
    bad = [k for k, v in (node_attrs or {}).items() if not isinstance(v, str)]
    if bad:
        raise ExportError(f"node_attrs values must be strings, got {bad[0]}={node_attrs[bad[0]]!r}")


def _labels(model) -> Optional[list]:
    """model.extra["labels"] checked: one name per class (the runtime indexes it by class id)."""
    labels = (getattr(model, "extra", None) or {}).get("labels")
    if labels is None:
        return None
    n = getattr(model.config, "num_classes", None)
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or \
            (n is not None and len(labels) != n):
        raise ExportError(f"model.extra['labels'] must be a list of {n if n is not None else 'the'} class names "
                          f"(one per class), got {str(labels)[:60]}")
    return labels


def _bundle_files(d: Path) -> Optional[set]:
    """The file names a bundle directory's manifest accounts for (itself, graphs, engines), or
    None when `d` holds no readable qrnn-deploy manifest."""
    from qrnn_deploy.bundle import load_manifest
    from qrnn_deploy.errors import BundleError

    try:
        m = load_manifest(d, check_files=False)
    except BundleError:
        return None
    return {MANIFEST_NAME} | {g.file for g in m.graphs.values()} | {e.file for e in m.engines.values()}


def _prepare_dir(out_dir) -> tuple[Path, Path]:
    """(the bundle directory, a new empty staging directory beside it). The bundle is written
    into the staging directory and moved into place only when complete (`_publish`), so a
    failed or interrupted export leaves what was there untouched. An existing `out_dir` must be
    empty or a bundle holding nothing but its own files: export never deletes a user's files."""
    out_dir = output_dir(out_dir, "bundle directory", ExportError, create=False)
    if out_dir.is_symlink():  # replace the bundle where the link points, and keep the link
        out_dir = out_dir.resolve()
    if out_dir.exists():
        try:
            present = {p.name for p in out_dir.iterdir()}
        except OSError as e:
            raise ExportError(f"cannot read the bundle directory {out_dir}: {e.strerror or e}") from None
        if present:
            own = _bundle_files(out_dir)
            if own is None:
                raise ExportError(f"{out_dir} is not empty and holds no qrnn-deploy bundle: export into a new or "
                                  "empty directory (nothing was changed)")
            foreign = sorted(present - own)
            if foreign:
                raise ExportError(f"{out_dir} holds files that are not its bundle's ({', '.join(foreign[:3])}"
                                  f"{', ...' if len(foreign) > 3 else ''}): move them or export elsewhere "
                                  "(nothing was changed)")
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=parent))
        # mkdtemp makes it private (0700); a bundle directory gets the usual mode, or the old one's.
        if out_dir.exists():
            mode = out_dir.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o777 & ~umask
        os.chmod(stage, mode)
    except OSError as e:
        raise ExportError(f"cannot create the bundle directory {out_dir}: {e.strerror or e}") from None
    return out_dir, stage


def _publish(stage: Path, out_dir: Path) -> None:
    """Moves the complete bundle in `stage` to `out_dir`, replacing the bundle there."""
    old = None
    try:
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / "bundle")
        try:
            os.rename(stage, out_dir)
        except OSError:
            if old is not None:
                os.rename(old / "bundle", out_dir)  # put the old bundle back
            raise
    except OSError as e:
        raise ExportError(f"cannot move the new bundle into {out_dir}: {e.strerror or e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _quantize_graphs(graphs: dict, paths: dict, block_size: int) -> dict:
    """Rewrites each graph file with int8 block weights; returns the manifest's quantization entry."""
    from qrnn_deploy.export.quantize import quantize_graph

    entry: dict = {"graphs": {}}
    for role, (proto, _) in graphs.items():
        qproto, rep = quantize_graph(proto, block_size=block_size)
        try:
            onnx.save_model(qproto, str(paths[role]))
        except OSError as e:
            raise ExportError(f"cannot write {paths[role]}: {e.strerror}") from None
        for key in ("scheme", "block_size", "accuracy_level"):
            entry[key] = rep[key]
        entry["graphs"][role] = {"matmuls": rep["matmuls"], "weight_bytes": rep["weight_bytes"]}
    return entry


def export_bundle(model, out_dir: Union[str, Path], fo_pool: str = "custom", opset: Optional[int] = None,
                  verify: bool = True, vocab=None, tol: float = 1e-4, node_attrs: Optional[dict] = None,
                  verify_engine: str = "auto", quantize: Optional[str] = None, quantize_block: int = 128,
                  quantized_tol: float = QUANTIZED_TOL) -> Manifest:
    """Writes `model` (QRNNLanguageModel -> "lm", QRNNClassifier -> "classifier", QRNNSeq2Seq ->
    "encoder" + "decoder") as a bundle in `out_dir` and returns its manifest.

    fo_pool: "custom" (one qrnn::FoPool node per layer; runtimes need the custom-op library) or
    "portable" (standard ONNX operators only). Every graph streams: batch-first inputs with
    dynamic B and T (S for the memory), states conv_state_{l} / c_state_{l} in and *_out out.
    verify: compare onnxruntime with the PyTorch model (qrnn_deploy.export.verify); the figures
    go to manifest.metadata["verification"]. Raises ExportError (unsupported model or options,
    unwritable directory) or VerificationError.
    quantize: None (float32 weights) or "int8": weight matrices as 8-bit blocks of `quantize_block`
    values (qrnn_deploy.export.quantize; onnxruntime's MatMulNBits, so such a bundle runs on
    onnxruntime only). The float32 graphs are verified first at `tol`; then the quantized ones
    against the model at `quantized_tol` (x max(1, |reference|)), with chunked streaming still
    equal to one pass at `tol`. metadata["quantization"] records the scheme and sizes,
    metadata["verification_quantized"] the second check's figures.
    """
    if fo_pool not in VARIANTS:
        raise ExportError(f"fo_pool must be one of {VARIANTS}, got {fo_pool!r}")
    opset = _check_opset(opset)
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be None or 'int8', got {quantize!r}")
    _check_options(out_dir, tol, quantized_tol, quantize_block, verify_engine, node_attrs)
    if not isinstance(model, torch.nn.Module) or getattr(model, "model_type", None) is None:
        raise ExportError(f"cannot export {type(model).__name__}: not a qrnn_deploy.nn model")
    vocab_entry = resolve_vocab(model, vocab)
    labels = _labels(model)
    # Weights are read in float32 from a copy, so a half-precision or training-mode model is
    # left as the caller had it.
    model = copy.deepcopy(model).float().eval()
    graphs = model_graphs(model, fo_pool, opset, node_attrs)

    final_dir, out_dir = _prepare_dir(out_dir)
    try:
        manifest = _write_bundle(model, out_dir, graphs, fo_pool, opset, verify, tol, verify_engine, quantize,
                                 quantize_block, quantized_tol, vocab_entry, labels)
        _publish(out_dir, final_dir)
    finally:
        if out_dir.exists():  # failed or interrupted: the staging directory goes, nothing else
            shutil.rmtree(out_dir, ignore_errors=True)
    return manifest


def _write_bundle(model, out_dir: Path, graphs: dict, fo_pool: str, opset: int, verify: bool, tol: float,
                  verify_engine: str, quantize: Optional[str], quantize_block: int, quantized_tol: float,
                  vocab_entry, labels) -> Manifest:
    if fo_pool == "custom":
        register_fo_pool_schema()
    paths, specs = {}, {}
    for role, (proto, spec) in graphs.items():
        onnx.checker.check_model(proto, full_check=True)
        spec.file = f"{role}.onnx"
        path = out_dir / spec.file
        try:
            onnx.save_model(proto, str(path))
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e.strerror}") from None
        paths[role], specs[role] = path, spec

    metadata = {"created_by": f"qrnn-deploy {__version__}", "torch": torch.__version__, "onnx": onnx.__version__,
                "sizes": {role: p.stat().st_size for role, p in paths.items()},
                "parameters": sum(p.numel() for p in {id(q): q for q in model.parameters()}.values())}
    if labels is not None:
        metadata["labels"] = labels
    if verify:
        from qrnn_deploy.export.verify import verify_graphs

        metadata["verification"] = verify_graphs(model, paths, specs, fo_pool, tol=tol, engine=verify_engine)
    if quantize:
        metadata["quantization"] = _quantize_graphs(graphs, paths, quantize_block)
        metadata["sizes"] = {role: p.stat().st_size for role, p in paths.items()}
        if verify:
            # MatMulNBits is an onnxruntime operator: the reference evaluator cannot check it.
            # Streaming at the quantized tolerance too: onnxruntime's one-row MatMulNBits kernel
            # rounds differently in the last bits, and the per-row int8 quantization of its
            # activations can turn that into a whole int8 step (chunks of one row at batch 1).
            # The float32 graphs were checked at `tol` above, so streaming itself is verified.
            metadata["verification_quantized"] = verify_graphs(model, paths, specs, fo_pool, tol=quantized_tol,
                                                               engine="onnxruntime", stream_tol=quantized_tol)

    manifest = Manifest(
        model_type=model.model_type, fo_pool=fo_pool, graphs=specs, config=dict(model.config.__dict__),
        vocab=vocab_entry,
        special_tokens={"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS} if vocab_entry else {},
        opset=opset,
        custom_op={"domain": FO_POOL_DOMAIN, "op_type": FO_POOL_OP, "version": FO_POOL_VERSION}
        if fo_pool == "custom" else None,
        metadata=metadata)
    manifest.validate(MANIFEST_NAME)
    try:
        manifest.write(out_dir)
    except OSError as e:
        raise ExportError(f"cannot write {out_dir / MANIFEST_NAME}: {e.strerror or e}") from None
    return manifest
