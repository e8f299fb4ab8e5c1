"""Verification of exported graphs: the PyTorch model against onnxruntime on random inputs.

For several batch sizes and chunk lengths it checks (1) every graph output and next state equals
the PyTorch model's, (2) streaming a sequence chunk by chunk through onnxruntime equals one
whole pass. An error larger than `tol * max(1, max |reference|)` raises VerificationError.

Sessions come from qrnn_deploy._native.ort_session (which registers the FoPool custom-op library).
When a custom-op graph cannot get a session because the library is not built, the graphs run on
onnx.reference.ReferenceEvaluator with the numpy FoPool instead, and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from qrnn_deploy.errors import BuildError, ConfigError, ExportError, QRNNError, VerificationError

DEFAULT_TOL = 1e-4
# (B, T) of whole-sequence cases, and the chunkings of a T = 9 sequence.
WHOLE_CASES = [(1, 1), (2, 5), (3, 9)]
CHUNKINGS = [[1, 3, 5], [4, 1, 4]]


# ----------------------------------------------------------------------------------------------
# Running a graph.


def ort_runner(path, custom_ops: bool, threads: Optional[int] = 1) -> Callable[[dict], dict]:
    """feeds -> {output name: array} for the ONNX file at `path`, on onnxruntime (CPU).

    Raises BuildError when the graph needs the FoPool library and it is not available.
    """
    session = None
    try:
        from qrnn_deploy._native import ort_session
    except ImportError:
        ort_session = None
    if ort_session is not None:
        session = ort_session(str(path), providers=["CPUExecutionProvider"], threads=threads,
                              custom_ops=custom_ops)
    elif custom_ops:
        raise BuildError("the FoPool onnxruntime library support (qrnn_deploy._native) is not available")
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(names, feeds)))


def _guarded(run: Callable[[dict], dict], role: str, engine: str = "onnxruntime") -> Callable[[dict], dict]:
    def guarded(feeds: dict) -> dict:
        try:
            return run(feeds)
        except Exception as e:  # onnxruntime raises its own types; say which graph and inputs
            shapes = {k: list(np.shape(v)) for k, v in feeds.items()}
            raise VerificationError(f"graph {role!r} failed in {engine} on inputs {shapes}: {e}") from None
    return guarded


def reference_runner(path) -> Callable[[dict], dict]:
    from qrnn_deploy.export.reference import reference_evaluator

    ev = reference_evaluator(str(path))
    return lambda feeds: dict(zip(ev.output_names, ev.run(None, feeds)))


def make_runners(paths: dict, variant: str, engine: str = "auto") -> tuple[dict, str]:
    """role -> runner for the graph files `paths` (role -> path), and the engine's description.

    engine: "onnxruntime", "reference" or "auto" (onnxruntime; the reference evaluator only for
    custom-op graphs when the custom-op library is not built)."""
    if engine in ("auto", "onnxruntime"):
        try:
            runners = {r: _guarded(ort_runner(p, variant == "custom"), r) for r, p in paths.items()}
            return runners, "onnxruntime"
        except BuildError as e:
            if engine == "onnxruntime" or variant != "custom":
                raise
            reason = str(e)
        except QRNNError:
            raise
        except Exception as e:  # onnxruntime's own exception types (unsupported opset, bad graph)
            raise ExportError(f"onnxruntime cannot load the exported graphs: {e}") from None
    else:
        reason = "asked for"
    runners = {r: reference_runner(p) for r, p in paths.items()}
    return runners, f"onnx.reference.ReferenceEvaluator ({reason})"


# ----------------------------------------------------------------------------------------------
# Comparing.


class _Errors:
    """Running maxima of |onnx - torch| and |chunked - whole|, failing past tolerance."""

    def __init__(self, tol: float, stream_tol: Optional[float] = None):
        self.tol, self.vs_torch, self.chunked, self.cases = tol, 0.0, 0.0, 0
        self.stream_tol = tol if stream_tol is None else stream_tol

    def _check(self, got: np.ndarray, want: np.ndarray, what: str, tol: Optional[float] = None) -> float:
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        if got.shape != want.shape:
            raise VerificationError(f"{what}: shape {list(got.shape)} differs from the reference's {list(want.shape)}")
        if got.size == 0:
            return 0.0
        err = float(np.max(np.abs(got - want)))
        scale = max(1.0, float(np.max(np.abs(want))))
        tol = self.tol if tol is None else tol
        if not np.isfinite(err) or err > tol * scale:
            raise VerificationError(f"{what}: max |difference| {err:.3g} exceeds the tolerance "
                                    f"{tol:g} (x {scale:.3g}); the exported graph does not match the model")
        return err

    def torch(self, got, want, what):
        self.vs_torch = max(self.vs_torch, self._check(got, want, what))

    def stream(self, got, want, what):
        self.chunked = max(self.chunked, self._check(got, want, what, self.stream_tol))


def _t(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float32).cpu().numpy()


def _zeros(spec, B: int) -> dict:
    return {s.name: np.zeros([B if d == "B" else d for d in s.shape], np.float32) for s in spec.states}


def _torch_state_feeds(spec, state) -> dict:
    """The graph's state outputs (name_out -> array) from a list of QRNNState."""
    out = {}
    for l, st in enumerate(state):
        if st.conv_state is not None:
            out[f"conv_state_{l}_out"] = _t(st.conv_state)
        out[f"c_state_{l}_out"] = _t(st.c)
    return out


def _next_states(spec, res: dict) -> dict:
    return {s.name: res[s.output] for s in spec.states}


def _compare_states(errs: _Errors, spec, res: dict, state, what: str) -> None:
    want = _torch_state_feeds(spec, state)
    for s in spec.states:
        errs.torch(res[s.output], want[s.output], f"{what}: state {s.output}")


# ----------------------------------------------------------------------------------------------
# Per model type.


def _verify_stack(model, spec, run, errs: _Errors, rng: np.random.Generator, per_step: bool, cfg) -> None:
    """LM (`per_step`: logits [B, T, V]) or classifier (logits [B, C] of the last step). Without
    a model (None) only chunked streaming against one whole pass is checked."""
    V = cfg.vocab_size
    for B, T in WHOLE_CASES if model is not None else []:
        tokens = rng.integers(0, V, (B, T))
        want, state = model(torch.from_numpy(tokens))
        res = run({"tokens": tokens, **_zeros(spec, B)})
        errs.torch(res["logits"], _t(want), f"logits (B={B}, T={T})")
        _compare_states(errs, spec, res, state, f"B={B}, T={T}")
        errs.cases += 1
    B, T = 2, sum(CHUNKINGS[0])
    tokens = rng.integers(0, V, (B, T))
    whole = run({"tokens": tokens, **_zeros(spec, B)})
    for chunks in CHUNKINGS:
        states, parts, t0, tstate = _zeros(spec, B), [], 0, None
        for n in chunks:
            res = run({"tokens": tokens[:, t0:t0 + n], **states})
            if model is not None:
                want, tstate = model(torch.from_numpy(tokens[:, t0:t0 + n]), tstate)
                errs.torch(res["logits"], _t(want), f"chunk {t0}:{t0 + n} of {chunks}")
            parts.append(res["logits"])
            states, t0 = _next_states(spec, res), t0 + n
        got = np.concatenate(parts, 1) if per_step else parts[-1]
        errs.stream(got, whole["logits"], f"chunked {chunks} vs whole: logits")
        for s in spec.states:
            errs.stream(states[s.name], whole[s.output], f"chunked {chunks} vs whole: state {s.output}")
        errs.cases += 1


def _verify_seq2seq(model, specs: dict, runs: dict, errs: _Errors, rng: np.random.Generator, cfg) -> None:
    """Encoder and decoder against the model, and each streamed chunk by chunk against one whole
    pass. Without a model (None) only the streaming checks run, the decoder's context coming from
    the encoder graph."""
    L = cfg.num_layers
    enc_spec, dec_spec = specs["encoder"], specs["decoder"]
    enc, dec = runs["encoder"], runs["decoder"]
    cond_names = [f"cond_{l}" for l in range(L)]
    for B, T in WHOLE_CASES if model is not None else []:
        src = rng.integers(0, cfg.src_vocab_size, (B, T))
        memory, cond, state = model.encode(torch.from_numpy(src))
        res = enc({"src": src, **_zeros(enc_spec, B)})
        errs.torch(res["memory"], _t(memory), f"encoder memory (B={B}, T={T})")
        for n, c in zip(cond_names, cond):
            errs.torch(res[n], _t(c), f"encoder {n} (B={B}, T={T})")
        _compare_states(errs, enc_spec, res, state, f"encoder B={B}, T={T}")
        errs.cases += 1

    # Encoder streaming: memory chunks concatenate to the whole memory; the last chunk's cond is
    # the whole sequence's.
    B, S = 3, sum(CHUNKINGS[0])
    src = rng.integers(0, cfg.src_vocab_size, (B, S))
    whole = enc({"src": src, **_zeros(enc_spec, B)})
    for chunks in CHUNKINGS:
        states, parts, t0 = _zeros(enc_spec, B), [], 0
        for n in chunks:
            res = enc({"src": src[:, t0:t0 + n], **states})
            parts.append(res["memory"])
            states, t0 = _next_states(enc_spec, res), t0 + n
        errs.stream(np.concatenate(parts, 1), whole["memory"], f"encoder chunked {chunks} vs whole: memory")
        for n in cond_names:
            errs.stream(res[n], whole[n], f"encoder chunked {chunks} vs whole: {n}")
        errs.cases += 1

    # Decoder on a padded batch of sources (memory_mask 0 past each row's length).
    lengths = np.array([S, 4, 1])[:B]
    mask = (np.arange(S)[None, :] < lengths[:, None])
    if model is not None:
        memory, cond, _ = model.encode(torch.from_numpy(src), None, torch.from_numpy(lengths))
        ctx = {"memory": _t(memory), "memory_mask": mask.astype(np.float32),
               **{n: _t(c) for n, c in zip(cond_names, cond)}}
        mask_t = torch.from_numpy(mask)
    else:  # the whole pass's memory (rows past a source's length are masked) and conditioning
        ctx = {"memory": whole["memory"], "memory_mask": mask.astype(np.float32),
               **{n: whole[n] for n in cond_names}}
    for T in (1, 6) if model is not None else []:
        tgt = rng.integers(0, cfg.tgt_vocab_size, (B, T))
        want, state = model.decode(torch.from_numpy(tgt), memory, mask_t, cond)
        res = dec({"tgt": tgt, **ctx, **_zeros(dec_spec, B)})
        errs.torch(res["logits"], _t(want), f"decoder logits (B={B}, T={T})")
        _compare_states(errs, dec_spec, res, state, f"decoder B={B}, T={T}")
        errs.cases += 1
    T = sum(CHUNKINGS[1])
    tgt = rng.integers(0, cfg.tgt_vocab_size, (B, T))
    whole = dec({"tgt": tgt, **ctx, **_zeros(dec_spec, B)})
    for chunks in CHUNKINGS:
        states, parts, t0, tstate = _zeros(dec_spec, B), [], 0, None
        for n in chunks:
            res = dec({"tgt": tgt[:, t0:t0 + n], **ctx, **states})
            if model is not None:
                want, tstate = model.decode(torch.from_numpy(tgt[:, t0:t0 + n]), memory, mask_t, cond, tstate)
                errs.torch(res["logits"], _t(want), f"decoder chunk {t0}:{t0 + n} of {chunks}")
            parts.append(res["logits"])
            states, t0 = _next_states(dec_spec, res), t0 + n
        errs.stream(np.concatenate(parts, 1), whole["logits"], f"decoder chunked {chunks} vs whole: logits")
        for s in dec_spec.states:
            errs.stream(states[s.name], whole[s.output], f"decoder chunked {chunks} vs whole: state {s.output}")
        errs.cases += 1


def verify_graphs(model, paths: dict, specs: dict, variant: str, tol: float = DEFAULT_TOL, seed: int = 0,
                  engine: str = "auto", stream_tol: Optional[float] = None) -> dict:
    """Checks the graph files `paths` (role -> path) with manifest entries `specs` (role -> GraphSpec)
    against `model` (eval mode, float32). Returns the figures for the manifest metadata:
    {"engine", "tolerance", "max_abs_error", "max_chunked_vs_whole", "cases"}.
    Raises VerificationError on a mismatch, BuildError when no engine can run the graphs."""
    runs, engine_name = make_runners({r: Path(p) for r, p in paths.items()}, variant, engine)
    errs = _Errors(tol, stream_tol)
    _run_checks(model.model_type, model, model.config, specs, runs, errs, seed)
    return {"engine": engine_name, "tolerance": tol, "stream_tolerance": errs.stream_tol, "max_abs_error": errs.vs_torch,
            "max_chunked_vs_whole": errs.chunked, "cases": errs.cases}


def _run_checks(model_type: str, model, cfg, specs: dict, runs: dict, errs: _Errors, seed: int) -> None:
    """Every check of `model_type`'s graphs (against `model` when given: in eval mode, restored
    after). The inputs are tiny: one thread avoids thread hand-offs that cost more than the work
    (and fights with nothing else on a shared machine)."""
    rng = np.random.default_rng(seed)
    was_training, threads = (model.training if model is not None else False), torch.get_num_threads()
    if model is not None:
        model.eval()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            _verify_model_type(model_type, model, cfg, specs, runs, errs, rng)
    finally:
        if model is not None:
            model.train(was_training)
        torch.set_num_threads(threads)


def _verify_model_type(model_type: str, model, cfg, specs: dict, runs: dict, errs: _Errors,
                       rng: np.random.Generator) -> None:
    if model_type == "seq2seq":
        _verify_seq2seq(model, specs, runs, errs, rng, cfg)
    else:
        role = "lm" if model_type == "language_model" else "classifier"
        _verify_stack(model, specs[role], runs[role], errs, rng, per_step=role == "lm", cfg=cfg)


# ----------------------------------------------------------------------------------------------
# A bundle already written.


def _config_differences(bundle_cfg: dict, model_cfg: dict) -> list:
    keys = sorted(set(bundle_cfg) | set(model_cfg))
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731 (JSON has no tuples)
    return [f"{k}: bundle {bundle_cfg.get(k)!r}, checkpoint {model_cfg.get(k)!r}"
            for k in keys if norm(bundle_cfg.get(k)) != norm(model_cfg.get(k))]


def _sides(vocab: dict) -> tuple:
    """(source, target) vocabulary entries: one shared vocabulary is both."""
    return (vocab["src"], vocab["tgt"]) if "src" in vocab else (vocab, vocab)


def check_model_fits_bundle(model, manifest) -> None:
    """Raises VerificationError (naming the first differences) when `model` is not the model the
    bundle was exported from as far as the manifest can tell: model type, config, vocabulary."""
    from qrnn_deploy.export.exporter import resolve_vocab

    if model.model_type != manifest.model_type:
        raise VerificationError(f"the checkpoint is a {model.model_type} model, the bundle a {manifest.model_type}")
    diffs = _config_differences(manifest.config, dict(model.config.__dict__))
    if diffs:
        more = f" (and {len(diffs) - 2} more)" if len(diffs) > 2 else ""
        raise VerificationError("the checkpoint's config differs from the bundle's: " + "; ".join(diffs[:2]) + more)
    vocab = resolve_vocab(model)
    if vocab is not None and manifest.vocab is not None and _sides(vocab) != _sides(manifest.vocab):
        raise VerificationError("the checkpoint's vocabulary differs from the bundle's: a bundle decodes "
                                "tokens with its own vocabulary, so its translations would be other text")


def verify_bundle(bundle_dir, model=None, tol: Optional[float] = None, seed: int = 0,
                  engine: str = "auto", runners: Optional[dict] = None, stream_tol: Optional[float] = None) -> dict:
    """Checks the bundle at `bundle_dir` again, as `export` did before writing it: with `model`
    (the PyTorch model it was exported from), every graph output and next state against the model
    and chunked streaming against one whole pass; without, the streaming check only (what a
    runtime relies on, and all that can be checked without the model).

    tol: default 1e-4, or the export's quantized tolerance for an int8 bundle (its streaming
    check too, unless `stream_tol` is given: onnxruntime's one-row MatMulNBits kernel rounds
    differently, and its int8 activations can turn that into a whole int8 step). runners: role -> callable(feeds) -> {output: array},
    to check the graphs as another engine runs them (the CLI passes the TensorRT engines through
    the runtime's backends); `engine` is then only its name in the figures. Returns {"engine", "tolerance", "stream_tolerance", "max_abs_error"
    (None without a model), "max_chunked_vs_whole", "cases", "compared_with_model"}.
    Raises BundleError (no bundle), ConfigError (bad options), VerificationError (a mismatch, or a
    model that is not the bundle's), BuildError (no engine can run the graphs).
    """
    from types import SimpleNamespace

    from qrnn_deploy.bundle import load_manifest
    from qrnn_deploy.export.exporter import QUANTIZED_TOL

    for name, v in (("tol", tol), ("stream_tol", stream_tol)):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0):
            raise ConfigError(f"{name} must be a number > 0, got {v!r}")
    if runners is None and engine not in ("auto", "onnxruntime", "reference"):
        raise ConfigError(f"engine must be 'auto', 'onnxruntime' or 'reference', got {engine!r}")
    manifest = load_manifest(bundle_dir)
    quantized = isinstance(manifest.metadata.get("quantization"), dict)
    if quantized and engine == "reference":
        raise ConfigError("an int8 bundle runs on onnxruntime only (MatMulNBits): the reference "
                          "evaluator cannot check it")
    if model is not None:
        check_model_fits_bundle(model, manifest)
    root = Path(bundle_dir)
    paths = {role: root / g.file for role, g in manifest.graphs.items()}
    if runners is not None:
        if set(runners) != set(paths):
            raise ConfigError(f"runners are for graphs {sorted(runners)}, the bundle has {sorted(paths)}")
        runs, engine_name = {r: _guarded(runners[r], r, engine) for r in paths}, engine
    else:
        try:
            runs, engine_name = make_runners(paths, manifest.fo_pool, "onnxruntime" if quantized else engine)
        except ExportError as e:  # a graph file onnxruntime cannot load: the bundle is broken
            raise VerificationError(str(e).replace("the exported graphs", "the bundle's graphs")) from None
    errs = _Errors(tol if tol is not None else (QUANTIZED_TOL if quantized else DEFAULT_TOL),
                   stream_tol if stream_tol is not None else (QUANTIZED_TOL if quantized else DEFAULT_TOL))
    cfg = model.config if model is not None else SimpleNamespace(**manifest.config)
    try:
        cfg_sizes = [getattr(cfg, k) for k in (("src_vocab_size", "tgt_vocab_size", "num_layers")
                                                if manifest.model_type == "seq2seq" else ("vocab_size",))]
    except AttributeError as e:
        raise VerificationError(f"{root}: the manifest's config lacks {e.name!r}") from None
    if not all(isinstance(v, int) and v > 0 for v in cfg_sizes):
        raise VerificationError(f"{root}: the manifest's config has sizes that are not positive integers")
    _run_checks(manifest.model_type, model, cfg, manifest.graphs, runs, errs, seed)
    return {"engine": engine_name, "tolerance": errs.tol, "stream_tolerance": errs.stream_tol,
            "max_abs_error": errs.vs_torch if model is not None else None,
            "max_chunked_vs_whole": errs.chunked, "cases": errs.cases, "compared_with_model": model is not None}
