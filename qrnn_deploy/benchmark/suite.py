"""The benchmark suite: QRNN bundles (custom op, portable), PyTorch eager QRNN, and the LSTM
baselines (onnxruntime's LSTM operator, PyTorch eager nn.LSTM), all in one process and one run.

Every model is a language model: tokens [B, T] -> embedding (E = H) -> `layers` recurrent layers
of hidden size H -> linear to a small vocabulary. The QRNN uses fo-pooling with the same window k
in every layer; the LSTM has the same E, H, layers and vocabulary, so the only difference is the
recurrent layer.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from qrnn_deploy.benchmark import floors
from qrnn_deploy.benchmark.contenders import (Contender, bundle_state_io, macs_per_token_lstm,
                                              macs_per_token_qrnn, ort_contender, ort_session,
                                              runtime_stream_contender, torch_contender)
from qrnn_deploy.benchmark.lstm import LSTMLanguageModel, check_parity, lstm_to_onnx, zero_state_feeds
from qrnn_deploy.benchmark.timing import interleaved, per_call_latency
from qrnn_deploy.errors import ConfigError, QRNNError, VerificationError


@dataclass
class BenchConfig:
    """What to run. `mode` names the preset it came from (full, quick, smoke)."""

    mode: str
    batches: tuple
    steps: tuple
    hiddens: tuple
    windows: tuple = (1, 2)
    layers: int = 2
    vocab: int = 64
    threads: int = 1
    # Encoding and batched streaming report the best round of each contender: on a shared machine
    # the fastest of interleaved rounds is the one least disturbed by other processes, so ratios of
    # bests compare the code, not the neighbours (medians are kept in the CSV as ms_median).
    rounds: int = 5  # encoding: at most this many interleaved rounds per (B, T, H) case ...
    min_rounds: int = 2
    case_budget_s: float = 5.0  # ... and stop after this many seconds (once min_rounds are done)
    stream_tokens: int = 50  # per-token latency: tokens per block ...
    stream_blocks: int = 4  # ... blocks per contender (interleaved)
    stream_batch: int = 32
    stream_rounds: int = 20
    gemm_n: int = 1024
    seed: int = 0


PRESETS = {
    "full": dict(batches=(1, 8, 32), steps=(32, 128, 512), hiddens=(256, 512), rounds=15, min_rounds=5,
                 case_budget_s=12.0, stream_tokens=100, stream_blocks=5, stream_rounds=30),
    "quick": dict(batches=(1, 8, 32), steps=(32, 128), hiddens=(256,), rounds=10, min_rounds=3,
                  case_budget_s=4.0, stream_tokens=40, stream_blocks=3, stream_rounds=12),
    "smoke": dict(batches=(1, 2), steps=(8,), hiddens=(32,), windows=(1, 2), rounds=2, min_rounds=1,
                  case_budget_s=0.2, stream_tokens=5, stream_blocks=2, stream_batch=4, stream_rounds=3,
                  gemm_n=256),
}


def preset(mode: str, threads: Optional[int] = None, **overrides) -> BenchConfig:
    """The BenchConfig of preset `mode` ('full', 'quick', 'smoke') with `threads` (default: all cores)."""
    if mode not in PRESETS:
        raise ConfigError(f"unknown benchmark mode {mode!r}: use one of {sorted(PRESETS)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    cfg = BenchConfig(mode=mode, threads=threads or os.cpu_count() or 1, **PRESETS[mode])
    return replace(cfg, **overrides)


@dataclass
class BenchResult:
    config: BenchConfig
    meta: dict
    floors: dict
    records: list = field(default_factory=list)  # one dict per (section, impl, H, window, B, T)
    notes: list = field(default_factory=list)  # contenders that could not run, and why

    def to_json(self) -> dict:
        return {"config": asdict(self.config), "meta": self.meta, "floors": self.floors,
                "records": self.records, "notes": self.notes}


Progress = Callable[[str, float], None]  # (what is running now, units of work done since last call)


def total_work(cfg: BenchConfig) -> float:
    """Units of work `run_bench` reports through `progress` (for a progress bar's total)."""
    return 1 + len(cfg.hiddens) * (1 + len(cfg.batches) * len(cfg.steps) + 2) + 1


def _meta(cfg: BenchConfig) -> dict:
    import onnxruntime

    return {"started_utc": floors.now_utc(), "host": platform.node(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": cfg.threads, "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "load_avg_1m_start": floors.host_load(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "ort_spinning": "off",
            "qrnn_torch_fo_pool": _torch_fo_pool_path()}


def _torch_fo_pool_path() -> str:
    """Which fo_pool the `qrnn-torch` contender runs on CPU: the native kernel or the PyTorch path."""
    from qrnn_deploy.nn import _cpu_kernels

    return "native kernel" if _cpu_kernels.available() else f"PyTorch path ({_cpu_kernels.unavailable_reason()})"


def run_bench(cfg: BenchConfig, workdir: Path, progress: Optional[Progress] = None) -> BenchResult:
    """Runs the suite described by `cfg`; bundles are exported under `workdir/bundles`."""
    progress = progress or (lambda what, advance: None)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    res = BenchResult(cfg, _meta(cfg), {})
    if res.meta["qrnn_torch_fo_pool"] != "native kernel":
        res.notes.append(f"qrnn-torch runs fo_pool on the {res.meta['qrnn_torch_fo_pool']}, not the native "
                         "CPU kernel")

    progress("floors: GEMM rate and copy bandwidth", 0)
    res.floors = _floors(cfg)
    progress("floors done", 1)

    for H in cfg.hiddens:
        progress(f"H={H}: exporting bundles and building the LSTM baseline", 0)
        lstm, qrnns = _build(cfg, H, Path(workdir), res, rng)
        progress(f"H={H}: ready", 1)
        for B in cfg.batches:
            for T in cfg.steps:
                progress(f"H={H} encode B={B} T={T}", 0)
                _encode_case(cfg, H, B, T, lstm, qrnns, res, rng)
                progress(f"H={H} encode B={B} T={T}", 1)
        progress(f"H={H} streaming: per-token latency at batch 1", 0)
        _stream_latency(cfg, H, lstm, qrnns, res, rng)
        progress(f"H={H} streaming latency done", 1)
        progress(f"H={H} streaming: tokens/s at batch {cfg.stream_batch}", 0)
        _stream_batch(cfg, H, lstm, qrnns, res, rng)
        progress(f"H={H} streaming throughput done", 1)
    # The floors are "what this machine can do at best": measured again at the end and the better
    # of the two kept, so a burst of load at the start does not lower them.
    progress("floors again", 0)
    again = _floors(cfg)
    for key in ("numpy_gemm_gflops", "copy_gbs", "ort_gemm_gflops"):
        res.floors[key + "_start"], res.floors[key + "_end"] = res.floors[key], again[key]
        res.floors[key] = max(res.floors[key], again[key])
    res.meta["load_avg_1m_end"] = floors.host_load()
    res.meta["finished_utc"] = floors.now_utc()
    progress("done", 1)
    return res


def _floors(cfg: BenchConfig) -> dict:
    repeat = 3 if cfg.mode == "smoke" else 15
    sess = lambda m: ort_session(m, cfg.threads)  # noqa: E731
    return {"numpy_gemm_gflops": floors.numpy_gemm_gflops(cfg.gemm_n, repeat),
            "copy_gbs": floors.copy_bandwidth_gbs(64 if cfg.mode != "smoke" else 8, repeat),
            "ort_gemm_gflops": floors.ort_gemm_gflops(sess, cfg.gemm_n, repeat),
            "gemm_n": cfg.gemm_n}


# ----------------------------------------------------------------------------------------------
# Building the contenders of one hidden size.


@dataclass
class _QRNNSet:
    """The QRNN contenders of one window size at one H, with their matrix-product floor."""

    window: int
    contenders: list  # Contender, in table order
    matmuls: Optional[object]  # onnxruntime session of the matrix products alone
    matmul_weights: list
    stream_only: list  # contenders that only decode (runtime Stream.feed)
    macs: int


def _build(cfg: BenchConfig, H: int, workdir: Path, res: BenchResult, rng) -> tuple:
    from qrnn_deploy.nn import QRNNLanguageModel

    torch.manual_seed(cfg.seed)
    V, L = cfg.vocab, cfg.layers
    probe = rng.integers(0, V, (2, 9)).astype(np.int64)

    lstm_model = LSTMLanguageModel(V, H, H, L).eval()
    lstm_sess = ort_session(lstm_to_onnx(lstm_model), cfg.threads)
    diff = check_parity(lstm_model, lstm_sess, probe)
    res.notes.append(f"H={H}: ONNX LSTM vs torch.nn.LSTM max |diff| = {diff:.1e} (whole and chunked)")
    outs = {f"{s}_state_{l}_out": f"{s}_state_{l}" for l in range(L) for s in ("h", "c")}
    lstm = [ort_contender("lstm-ort", "lstm", lstm_sess, lambda b: zero_state_feeds(L, b, H), outs),
            torch_contender("lstm-torch", "lstm", lstm_model)]

    qrnns = []
    for k in cfg.windows:
        torch.manual_seed(cfg.seed + k)
        model = QRNNLanguageModel(V, H, H, L, window=[k] * L, pooling="fo").eval()
        with torch.inference_mode():
            ref = model(torch.from_numpy(probe))[0].numpy()
        contenders, stream_only, matmul_src = [], [], None
        for variant in ("custom", "portable"):
            name = f"qrnn-{variant}"
            try:
                bundle = _export_and_load(model, workdir / "bundles" / f"H{H}_k{k}_{variant}", variant, cfg.threads)
            except (QRNNError, ImportError, OSError) as e:
                res.notes.append(f"H={H} k={k}: {name} not run: {type(e).__name__}: {e}")
                continue
            graph = bundle.graph("lm")
            session = graph.runner.session
            feeds, outputs = bundle_state_io(graph)
            c = ort_contender(name, "qrnn", session, feeds, outputs)
            got = session.run(["logits"], {"tokens": probe, **feeds(probe.shape[0])})[0]
            err = float(np.abs(got - ref).max())
            if not err <= 1e-3:
                raise VerificationError(f"H={H} k={k}: {name} disagrees with the PyTorch model by {err:.2e}; "
                                        "its timings would be meaningless")
            contenders.append(c)
            if variant == "custom":
                stream_only.append(runtime_stream_contender("qrnn-custom-stream", bundle))
            if matmul_src is None:
                matmul_src = bundle.path / bundle.manifest.graphs["lm"].file
        contenders.append(torch_contender("qrnn-torch", "qrnn", model))
        weights, mm = [], None
        if matmul_src is not None:
            import onnx

            weights = floors.matmul_weights(onnx.load(str(matmul_src)))
            mm = ort_session(floors.matmul_only_graph(weights), cfg.threads)
        qrnns.append(_QRNNSet(k, contenders, mm, weights, stream_only,
                              macs_per_token_qrnn(H, H, L, [k] * L, V)))
    return lstm, qrnns


def _export_and_load(model, out_dir: Path, variant: str, threads: int):
    """Exports `model` as a bundle with FoPool `variant` and loads it on onnxruntime."""
    from qrnn_deploy.export import export_bundle
    from qrnn_deploy.runtime import load_bundle

    from qrnn_deploy.benchmark.contenders import register_bench_backend

    # The suite checks each loaded session against PyTorch itself (the very session it times), so
    # the exporter's own, slower verification is skipped.
    export_bundle(model, out_dir, fo_pool=variant, verify=False)
    return load_bundle(out_dir, backend=register_bench_backend(), threads=threads)


# ----------------------------------------------------------------------------------------------
# The three measurements.


def _encode_case(cfg, H, B, T, lstm, qrnns, res, rng) -> None:
    tokens = rng.integers(0, cfg.vocab, (B, T)).astype(np.int64)
    entries = [(c, None) for c in lstm]
    for q in qrnns:
        entries += [(c, q) for c in q.contenders]
        if q.matmuls is not None:
            feeds = floors.matmul_only_feeds(q.matmul_weights, B, T)
            mm = q.matmuls
            entries.append((Contender("qrnn-matmuls", "floor",
                                      lambda _tokens, f=feeds, s=mm: (lambda: s.run(None, f)), None), q))
    fns = [c.encode(tokens) for c, _ in entries]
    timings = interleaved(fns, cfg.rounds, warmup=1, budget_s=cfg.case_budget_s, min_rounds=cfg.min_rounds)
    lstm_macs = macs_per_token_lstm(H, H, cfg.layers, cfg.vocab)
    for (c, q), t in zip(entries, timings):
        res.records.append({
            "section": "encode", "impl": c.name, "family": c.family, "H": H,
            "window": q.window if q else None, "B": B, "T": T,
            "ms": t.best * 1e3, "ms_median": t.median * 1e3, "tokens_per_s": B * T / t.best,
            "macs_per_token": q.macs if q else lstm_macs, "samples": len(t.samples)})


def _stream_latency(cfg, H, lstm, qrnns, res, rng) -> None:
    tokens = rng.integers(0, cfg.vocab, 64)
    entries = [(c, None) for c in lstm] + [(c, q) for q in qrnns for c in q.contenders + q.stream_only]
    steps = [c.stepper(1, tokens) for c, _ in entries]
    timings = per_call_latency(steps, cfg.stream_tokens, cfg.stream_blocks, warmup=3)
    for (c, q), t in zip(entries, timings):
        res.records.append({
            "section": "stream_latency", "impl": c.name, "family": c.family, "H": H,
            "window": q.window if q else None, "B": 1, "T": 1,
            "ms": t.median * 1e3, "p50_ms": t.percentile(50) * 1e3, "p99_ms": t.percentile(99) * 1e3,
            "tokens_per_s": 1.0 / float(np.mean(t.samples)), "samples": len(t.samples)})


def _stream_batch(cfg, H, lstm, qrnns, res, rng) -> None:
    tokens = rng.integers(0, cfg.vocab, 64)
    B = cfg.stream_batch
    entries = [(c, None) for c in lstm] + [(c, q) for q in qrnns for c in q.contenders]
    steps = [c.stepper(B, tokens) for c, _ in entries]
    timings = interleaved(steps, cfg.stream_rounds, warmup=3, min_rounds=cfg.stream_rounds)
    for (c, q), t in zip(entries, timings):
        res.records.append({
            "section": "stream_batch", "impl": c.name, "family": c.family, "H": H,
            "window": q.window if q else None, "B": B, "T": 1,
            "ms": t.best * 1e3, "ms_median": t.median * 1e3, "tokens_per_s": B / t.best,
            "samples": len(t.samples)})
