"""fo_pool forward+backward beside one QRNN layer's whole training step (issue: the op must be at
most a quarter of the step), and beside autograd through the reference loop `fo_pool_ref`.

    python3 benchmarks/bench_fo_pool_train.py [--T 128 --B 64 --H 512 --threads 2 --repeat 10]
"""

import argparse
import statistics
import time

import torch

from qrnn_deploy.nn import QRNNLayer, fo_pool, fo_pool_ref


def timeit(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=128)
    ap.add_argument("--B", type=int, default=64)
    ap.add_argument("--H", type=int, default=512)
    ap.add_argument("--window", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    T, B, H = a.T, a.B, a.H

    layer = QRNNLayer(H, H, window=a.window, pooling="fo")
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    x = torch.randn(B, T, H)
    target = torch.randn(B, T, H)

    def train_step():
        y, _ = layer(x)
        loss = torch.nn.functional.mse_loss(y, target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    gates = torch.randn(B, T, 3 * H, requires_grad=True)
    gh = torch.randn(B, T, H)

    def pool(fn):
        def run():
            h, c = fn(gates, None, "fo", True)
            torch.autograd.backward([h], [gh])
            gates.grad = None
        return run

    step = timeit(train_step, a.repeat)
    fast = timeit(pool(fo_pool), a.repeat)
    ref = timeit(pool(fo_pool_ref), max(2, a.repeat // 3))
    print(f"T={T} B={B} H={H} window={a.window} threads={a.threads} (median of {a.repeat})")
    print(f"{'what':44s} {'ms':>9s} {'share of step':>14s}")
    print(f"{'QRNN layer training step (fwd+bwd+SGD)':44s} {step * 1e3:9.2f} {1.0:14.2f}")
    print(f"{'fo_pool fwd+bwd (torch.ops.qrnn.fo_pool)':44s} {fast * 1e3:9.2f} {fast / step:14.2f}")
    print(f"{'fo_pool_ref fwd+bwd (autograd, loop)':44s} {ref * 1e3:9.2f} {ref / step:14.2f}")
    print(f"fo_pool speed-up over the reference: {ref / fast:.1f}x; target share <= 0.25: "
          f"{'met' if fast / step <= 0.25 else 'NOT met'}")


if __name__ == "__main__":
    main()
