"""fo_pool forward + backward on CPU against one QRNN layer's whole training step, same run.

Target (issue 2): at T=128, B=64, H=512, fo_pool forward+backward takes at most a quarter of a
QRNNLayer(512 -> 512, window 1, 'fo') training step (forward, loss, backward, Adam step).
Rows: fo_pool with the native kernel (libqrnn_kernels.so) and with its PyTorch path, and the
layer step with each.

    python3 benchmarks/bench_fopool_train.py
    python3 benchmarks/bench_fopool_train.py --T 32 --B 8 --H 128 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=_args.count, default=128)
    ap.add_argument("--B", type=_args.count, default=64)
    ap.add_argument("--H", type=_args.count, default=512)
    ap.add_argument("--input", type=_args.count, default=512)
    ap.add_argument("--threads", type=_args.threads, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--repeats", type=_args.count, default=5)
    args = ap.parse_args()

    import torch

    from qrnn_deploy.nn import QRNNLayer, _cpu_kernels, fo_pool

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    T, B, H = args.T, args.B, args.H
    print(f"T={T} B={B} H={H} input={args.input} fp32, torch threads {torch.get_num_threads()}, "
          f"native kernel: {_cpu_kernels.available() or _cpu_kernels.unavailable_reason()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    gates = torch.randn(B, T, 3 * H, requires_grad=True)
    grad_h = torch.randn(B, T, H)

    def pool_fwd_bwd():
        h, _ = fo_pool(gates, None, "fo", batch_first=True)
        torch.autograd.grad(h, gates, grad_h)

    layer = QRNNLayer(args.input, H, window=1, pooling="fo")
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
    x = torch.randn(B, T, args.input)

    def train_step():
        opt.zero_grad(set_to_none=True)
        y, _ = layer(x)
        y.square().mean().backward()
        opt.step()

    native_fwd, native_bwd = _cpu_kernels.forward, _cpu_kernels.backward
    results = {}
    for label, use_native in (("native kernel", True), ("PyTorch path", False)):
        _cpu_kernels.forward = native_fwd if use_native else (lambda *a, **k: None)
        _cpu_kernels.backward = native_bwd if use_native else (lambda *a, **k: None)
        results[label] = (best_of(pool_fwd_bwd, args.repeats), best_of(train_step, args.repeats))
    _cpu_kernels.forward, _cpu_kernels.backward = native_fwd, native_bwd

    print(f"{'fo_pool path':16s} {'fo_pool fwd+bwd ms':>19s} {'layer step ms':>14s} {'share':>6s}")
    for label, (t_pool, t_step) in results.items():
        print(f"{label:16s} {t_pool * 1e3:19.1f} {t_step * 1e3:14.1f} {t_pool / t_step:6.0%}")
    speedup = results["PyTorch path"][0] / results["native kernel"][0]
    print(f"native fo_pool fwd+bwd is {speedup:.1f}x the PyTorch path; target share <= 25%")


if __name__ == "__main__":
    _args.run(main)
