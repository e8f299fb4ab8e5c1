"""The benchmark scripts refuse bad arguments with argparse's one `error:` line and exit 2 before
any work starts (found by review: tracebacks such as ZeroDivisionError after a whole run)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import _args  # noqa: E402

CASES = [
    ("bench_fopool_ort.py", ["--repeats", "0"], "argument --repeats: must be an integer >= 1, got '0'"),
    ("bench_fopool_ort.py", ["--T", "0"], "argument --T"),
    ("bench_fopool_train.py", ["--threads", "0"], "argument --threads: must be in 1..256"),
    ("bench_export_variants.py", ["--repeat", "0"], "argument --repeat"),
    ("bench_runtime.py", ["--chunk", "0"], "argument --chunk"),
    ("bench_serve.py", ["--clients", "1,x"], "argument --clients: must be an integer, got 'x'"),
    ("bench_serve.py", ["--clients", "0"], "argument --clients"),
    ("bench_serve.py", ["--seconds", "nan"], "argument --seconds: must be a positive number"),
    ("bench_train_gru.py", ["--rounds", "0"], "argument --rounds"),
    ("bench_quantize.py", ["--limit", "-1"], "argument --limit: must be an integer >= 0"),
    ("bench_cpp_runtime.py", ["--tokens", "0"], "argument --tokens"),
]


@pytest.mark.parametrize("script,args,needle", CASES, ids=[f"{c[0]}{' '.join(c[1])}" for c in CASES])
def test_bad_argument_is_one_error_line(script, args, needle):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr.strip().splitlines()[-1], r.stderr


def test_argument_types():
    import argparse

    assert _args.counts("32, 1,8,1") == [1, 8, 32]  # sorted: the 1-stream row is the ratio base
    assert _args.count0("0") == 0 and _args.threads("256") == 256 and _args.seconds("0.5") == 0.5
    for fn, bad in ((_args.counts, ""), (_args.counts, ",,"), (_args.count, "1.5"), (_args.threads, "257"),
                    (_args.seconds, "inf"), (_args.seconds, "-1"), (_args.count0, "-1")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(bad)
