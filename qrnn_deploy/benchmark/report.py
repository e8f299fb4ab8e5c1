"""Turning a BenchResult into figures a reader can judge: ratios to the LSTM baseline, the matrix-
product floor, the targets of issue 11, a rich table on the terminal, CSV and JSON files.

Ratios are always against `lstm-ort` (onnxruntime's LSTM operator) measured in the same run, at the
same (H, B, T): speedup = lstm-ort time / contender time, so > 1 means faster than the LSTM.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from qrnn_deploy.benchmark.suite import BenchResult

BASELINE = "lstm-ort"
# The bundle we hold to the targets: the custom-op one; the portable one stands in when the
# custom-op library is not built (the targets block then says so).
PREFERRED_BUNDLES = ("qrnn-custom", "qrnn-portable")
OVERHEAD_TARGET = 1.15  # QRNN encoding time <= 1.15 x the time of its matrix products alone
STREAM_TARGET = 2.0  # custom-op bundle per-token p50 at least 2x below PyTorch eager QRNN's


def _key(r: dict, *fields) -> tuple:
    return tuple(r.get(f) for f in fields)


def derive(res: BenchResult) -> list:
    """The records with derived fields added (copies): speedup_vs_lstm_ort, mac_ratio_vs_lstm,
    matmul_ms, time_over_matmuls, outside_matmul_share, gemm_floor_ms (the MACs at the measured
    GEMM rate), gflops (achieved)."""
    recs = [dict(r) for r in res.records]
    base = {_key(r, "section", "H", "B", "T"): r for r in recs if r["impl"] == BASELINE}
    # The faster LSTM of the two (onnxruntime's kernel is not the fastest everywhere: see the docs).
    best_lstm: dict = {}
    for r in recs:
        if r["family"] == "lstm" and r["section"] == "encode":
            k = _key(r, "H", "B", "T")
            best_lstm[k] = min(best_lstm.get(k, float("inf")), r["ms"])
    mm = {_key(r, "H", "window", "B", "T"): r for r in recs if r["impl"] == "qrnn-matmuls"}
    gemm = res.floors.get("ort_gemm_gflops") or float("nan")
    for r in recs:
        b = base.get(_key(r, "section", "H", "B", "T"))
        if b is not None:
            t, tb = (r["p50_ms"], b["p50_ms"]) if r["section"] == "stream_latency" else (r["ms"], b["ms"])
            r["speedup_vs_lstm_ort"] = tb / t
        if r["section"] == "encode":
            if r["family"] == "qrnn":
                r["mac_ratio_vs_lstm"] = b["macs_per_token"] / r["macs_per_token"] if b else None
                if _key(r, "H", "B", "T") in best_lstm:
                    r["speedup_vs_best_lstm"] = best_lstm[_key(r, "H", "B", "T")] / r["ms"]
                m = mm.get(_key(r, "H", "window", "B", "T"))
                if m is not None and r["impl"] in PREFERRED_BUNDLES:
                    r["matmul_ms"] = m["ms"]
                    r["time_over_matmuls"] = r["ms"] / m["ms"]
                    r["outside_matmul_share"] = max(0.0, 1.0 - m["ms"] / r["ms"])
            if r.get("macs_per_token"):
                flops = 2.0 * r["macs_per_token"] * r["B"] * r["T"]
                r["gemm_floor_ms"] = flops / (gemm * 1e9) * 1e3
                r["gflops"] = flops / (r["ms"] * 1e-3) / 1e9  # achieved, to hold against the GEMM rate
    return recs


def _held_bundle(recs: list) -> str | None:
    names = {r["impl"] for r in recs}
    return next((n for n in PREFERRED_BUNDLES if n in names), None)


def _geomean(xs) -> float | None:
    xs = [x for x in xs if x and x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def targets(recs: list) -> dict:
    """The three targets of issue 11, each with met/total and the figures behind it."""
    bundle = _held_bundle(recs)
    out: dict = {"bundle": bundle}
    if bundle is None:
        out["note"] = "no QRNN bundle ran (see notes): no target can be judged"
        return out
    enc = [r for r in recs if r["section"] == "encode" and r["impl"] == bundle]
    over = [r for r in enc if "time_over_matmuls" in r]
    out["encode_within_15pct_of_matmuls"] = {
        "target": f"{bundle} encoding time <= {OVERHEAD_TARGET} x its matrix products alone",
        "met": sum(r["time_over_matmuls"] <= OVERHEAD_TARGET for r in over), "total": len(over),
        "geomean": _geomean(r["time_over_matmuls"] for r in over), "geomean_of": "time / matmul time",
        "cases": [{k: r[k] for k in ("H", "window", "B", "T", "time_over_matmuls")} for r in over]}
    mac = [r for r in enc if r.get("speedup_vs_lstm_ort") and r.get("mac_ratio_vs_lstm")]
    out["speedup_at_least_mac_ratio"] = {
        "target": f"{bundle} speedup over lstm-ort >= LSTM MACs / QRNN MACs",
        "met": sum(r["speedup_vs_lstm_ort"] >= r["mac_ratio_vs_lstm"] for r in mac), "total": len(mac),
        "geomean": _geomean(r["speedup_vs_lstm_ort"] / r["mac_ratio_vs_lstm"] for r in mac),
        "geomean_of": "speedup / MAC ratio",
        "vs_best_lstm_met": sum(r.get("speedup_vs_best_lstm", 0) >= r["mac_ratio_vs_lstm"] for r in mac),
        "vs_best_lstm_geomean": _geomean(r.get("speedup_vs_best_lstm", 0) / r["mac_ratio_vs_lstm"] for r in mac),
        "cases": [{k: r[k] for k in ("H", "window", "B", "T", "speedup_vs_lstm_ort", "mac_ratio_vs_lstm")}
                  for r in mac]}
    cases = []
    for r in recs:
        if r["section"] == "stream_latency" and r["impl"] == bundle:
            t = next((x for x in recs if x["section"] == "stream_latency" and x["impl"] == "qrnn-torch"
                      and x["H"] == r["H"] and x["window"] == r["window"]), None)
            if t is not None:
                cases.append({"H": r["H"], "window": r["window"], "p50_ms": r["p50_ms"],
                              "torch_p50_ms": t["p50_ms"], "ratio": t["p50_ms"] / r["p50_ms"]})
    out["stream_latency_2x_below_torch"] = {
        "target": f"{bundle} per-token p50 at batch 1 >= {STREAM_TARGET}x below PyTorch eager QRNN",
        "met": sum(c["ratio"] >= STREAM_TARGET for c in cases), "total": len(cases), "cases": cases,
        "geomean": _geomean(c["ratio"] for c in cases), "geomean_of": "PyTorch p50 / bundle p50"}
    return out


# ----------------------------------------------------------------------------------------------
# Files.


CSV_FIELDS = ["section", "impl", "family", "H", "window", "B", "T", "ms", "ms_median", "p50_ms", "p99_ms",
              "tokens_per_s", "speedup_vs_lstm_ort", "speedup_vs_best_lstm", "macs_per_token", "mac_ratio_vs_lstm", "matmul_ms",
              "time_over_matmuls", "outside_matmul_share", "gemm_floor_ms", "gflops", "samples"]


def write_csv(recs: list, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in recs:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return path


def _clean(x):
    # JSON has no NaN / inf: write null.
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json(res: BenchResult, recs: list, tgt: dict, path: Path) -> Path:
    d = res.to_json()
    d["records"] = recs
    d["targets"] = tgt
    path.write_text(json.dumps(_clean(d), indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# The terminal.


def floors_line(res: BenchResult) -> str:
    """The floors in one sentence (the better of the start and end measurements, both shown)."""
    fl = res.floors

    def one(key, unit):
        both = (f" (start {fl[key + '_start']:.1f}, end {fl[key + '_end']:.1f})"
                if key + "_start" in fl else "")
        return f"{fl[key]:.1f} {unit}{both}"
    return (f"onnxruntime MatMul {one('ort_gemm_gflops', 'GFLOP/s')}, numpy matmul "
            f"{one('numpy_gemm_gflops', 'GFLOP/s')} (n = {fl['gemm_n']}; numpy's BLAS uses all cores, reference "
            f"only), copy {one('copy_gbs', 'GB/s')} "
            "(read + write)")


def _vs_best(x: dict) -> str:
    if "vs_best_lstm_met" not in x:
        return ""
    return (f" (against the faster of the two LSTMs: {x['vs_best_lstm_met']}/{x['total']}, geometric mean "
            f"{_f(x['vs_best_lstm_geomean'], '.2f')})")


def _f(x, spec=".2f", suffix="") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:{spec}}{suffix}"


def render(res: BenchResult, recs: list, tgt: dict, console) -> None:
    """Prints the floors, the encoding and streaming tables and the targets with rich."""
    from rich.table import Table

    fl = res.floors
    console.print(f"[bold]Floors[/]: {floors_line(res)}; {res.config.threads} thread(s); load average "
                  f"{_f(res.meta.get('load_avg_1m_start'), '.1f')} -> {_f(res.meta.get('load_avg_1m_end'), '.1f')}")
    enc = [r for r in recs if r["section"] == "encode"]
    for k in res.config.windows:
        t = Table(title=f"Encoding whole sequences, QRNN window {k}, {res.config.layers} layers: "
                        f"speedup over onnxruntime LSTM", caption="vs best LSTM: bundle speedup over the faster of the two LSTMs; MACs: LSTM / QRNN "
                        "multiply-adds; /MM: bundle time / its matrix products alone; non-MM: share of time outside them")
        for col in ("H", "B", "T", "LSTM-ort tok/s", "torch LSTM", "custom", "portable", "torch QRNN",
                    "vs best LSTM", "MACs", "/MM", "non-MM"):
            t.add_column(col, justify="right")
        for (H, B, T) in sorted({(r["H"], r["B"], r["T"]) for r in enc}):
            row = {r["impl"]: r for r in enc if (r["H"], r["B"], r["T"]) == (H, B, T) and r["window"] in (None, k)}
            base = row.get(BASELINE)
            held = row.get("qrnn-custom") or row.get("qrnn-portable") or {}
            t.add_row(str(H), str(B), str(T), _f(base and base["tokens_per_s"], ",.0f"),
                      *[_f(row.get(n, {}).get("speedup_vs_lstm_ort"), ".2f", "x")
                        for n in ("lstm-torch", "qrnn-custom", "qrnn-portable", "qrnn-torch")],
                      _f(held.get("speedup_vs_best_lstm"), ".2f", "x"),
                      _f(held.get("mac_ratio_vs_lstm"), ".2f", "x"), _f(held.get("time_over_matmuls"), ".2f", "x"),
                      _f(held.get("outside_matmul_share") and 100 * held["outside_matmul_share"], ".0f", "%"))
        console.print(t)

    t = Table(title=f"Streaming decode, one token per call with carried states "
                    f"(batch 1 latency; batch {res.config.stream_batch} throughput)")
    for col in ("H", "k", "impl", "p50 ms", "p99 ms", "vs LSTM-ort", f"B={res.config.stream_batch} tok/s",
                "vs LSTM-ort"):
        t.add_column(col, justify="right", no_wrap=True)
    lat = [r for r in recs if r["section"] == "stream_latency"]
    thr = {_key(r, "H", "window", "impl"): r for r in recs if r["section"] == "stream_batch"}
    for r in sorted(lat, key=lambda r: (r["H"], r["window"] or 0, r["family"] != "lstm")):
        b = thr.get(_key(r, "H", "window", "impl"), {})
        t.add_row(str(r["H"]), "-" if r["window"] is None else str(r["window"]), r["impl"], _f(r["p50_ms"], ".3f"),
                  _f(r["p99_ms"], ".3f"), _f(r.get("speedup_vs_lstm_ort"), ".2f", "x"),
                  _f(b.get("tokens_per_s"), ",.0f"), _f(b.get("speedup_vs_lstm_ort"), ".2f", "x"))
    console.print(t)

    console.print("[bold]Targets[/] (benchmarks, not tests):")
    if "note" in tgt:
        console.print(f"  {tgt['note']}")
    for name in ("encode_within_15pct_of_matmuls", "speedup_at_least_mac_ratio", "stream_latency_2x_below_torch"):
        if name in tgt:
            x = tgt[name]
            mark = "[green]met[/]" if x["total"] and x["met"] == x["total"] else "[red]not met[/]"
            console.print(f"  {x['target']}: {x['met']}/{x['total']} cases ({mark}); geometric mean of "
                          f"{x['geomean_of']}: {_f(x['geomean'], '.2f')}" + _vs_best(x))
    for n in res.notes:
        console.print(f"  [dim]note: {n}[/]")


# ----------------------------------------------------------------------------------------------
# Markdown (what docs/benchmarks.md quotes).


def write_markdown(res: BenchResult, recs: list, tgt: dict, path: Path) -> Path:
    """The same tables as `render`, as Markdown."""
    m, cfg = res.meta, res.config
    lines = [f"Run {m.get('started_utc', '?')} on {m.get('host', '?')} ({m.get('cpu_count')} CPUs, "
             f"{cfg.threads} threads; load average {_f(m.get('load_avg_1m_start'), '.1f')} -> "
             f"{_f(m.get('load_avg_1m_end'), '.1f')}); torch {m.get('torch')}, onnxruntime {m.get('onnxruntime')}.",
             "", f"Floors: {floors_line(res)}.", ""]
    enc = [r for r in recs if r["section"] == "encode"]
    for k in cfg.windows:
        lines += [f"Encoding, window {k} ({cfg.layers} layers): LSTM-ort tokens/s and each contender's "
                  "speedup over it; vs best = custom-op bundle over the faster of the two LSTMs; MACs = "
                  "LSTM / QRNN multiply-adds; /MM = custom-op bundle time / its matrix products alone.", "",
                  "| H | B | T | LSTM-ort tok/s | torch LSTM | custom | portable | torch QRNN | vs best | MACs | /MM |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (H, B, T) in sorted({(r["H"], r["B"], r["T"]) for r in enc}):
            row = {r["impl"]: r for r in enc if (r["H"], r["B"], r["T"]) == (H, B, T) and r["window"] in (None, k)}
            base = row.get(BASELINE) or {}
            held = row.get("qrnn-custom") or row.get("qrnn-portable") or {}
            cells = [_f(row.get(n, {}).get("speedup_vs_lstm_ort"), ".2f", "x")
                     for n in ("lstm-torch", "qrnn-custom", "qrnn-portable", "qrnn-torch")]
            lines.append(f"| {H} | {B} | {T} | {_f(base.get('tokens_per_s'), ',.0f')} | " + " | ".join(cells)
                         + f" | {_f(held.get('speedup_vs_best_lstm'), '.2f', 'x')}"
                         + f" | {_f(held.get('mac_ratio_vs_lstm'), '.2f', 'x')} | "
                           f"{_f(held.get('time_over_matmuls'), '.2f', 'x')} |")
        lines.append("")
    lines += [f"Streaming decode (one token per call, carried states): batch 1 latency, batch "
              f"{cfg.stream_batch} throughput; ratios to LSTM-ort.", "",
              f"| H | k | impl | p50 ms | p99 ms | vs LSTM-ort | B={cfg.stream_batch} tok/s | vs LSTM-ort |",
              "|---|---|---|---|---|---|---|---|"]
    thr = {_key(r, "H", "window", "impl"): r for r in recs if r["section"] == "stream_batch"}
    for r in sorted((r for r in recs if r["section"] == "stream_latency"),
                    key=lambda r: (r["H"], r["window"] or 0, r["family"] != "lstm")):
        b = thr.get(_key(r, "H", "window", "impl"), {})
        lines.append(f"| {r['H']} | {'-' if r['window'] is None else r['window']} | {r['impl']} | "
                     f"{_f(r['p50_ms'], '.3f')} | {_f(r['p99_ms'], '.3f')} | {_f(r.get('speedup_vs_lstm_ort'), '.2f', 'x')} | "
                     f"{_f(b.get('tokens_per_s'), ',.0f')} | {_f(b.get('speedup_vs_lstm_ort'), '.2f', 'x')} |")
    lines += ["", "Targets:", ""]
    for name in ("encode_within_15pct_of_matmuls", "speedup_at_least_mac_ratio", "stream_latency_2x_below_torch"):
        if name in tgt:
            x = tgt[name]
            lines.append(f"- {x['target']}: {x['met']}/{x['total']} cases; geometric mean of {x['geomean_of']}: "
                         f"{_f(x['geomean'], '.2f')}" + _vs_best(x))
    if "note" in tgt:
        lines.append(f"- {tgt['note']}")
    lines += [f"- note: {n}" for n in res.notes]
    path.write_text("\n".join(lines) + "\n")
    return path
