"""FoPool alone on CPU: onnxruntime custom op (libqrnn_ort.so) vs this machine's copy bandwidth.

Effective bandwidth = (bytes of gates read + bytes of h written) / time; the baseline is a numpy
copy between two preallocated arrays of the size of gates (bytes read + written / time), measured
in the same run. onnxruntime outputs are bound to preallocated buffers (io_binding), like the
copy's destination, so neither pays first-touch page faults. The same sizes also go through the
PyTorch op torch.ops.qrnn.fo_pool (native kernel, then its PyTorch path) for comparison; these
allocate their outputs on every call (first-touch page faults included).

    python3 benchmarks/bench_fopool_ort.py                       # T=512, B=64, H=1024, 1 and 2 threads
    python3 benchmarks/bench_fopool_ort.py --T 64 --B 8 --H 256 --repeats 3   # quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _args  # noqa: E402  (benchmarks/_args.py: argument checks shared by these scripts)


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(best wall seconds, best process CPU seconds) over `repeats` calls after a warm-up."""
    fn()  # warm-up (threads started, pages touched)
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def fopool_model(T: int, B: int, H: int) -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node("FoPool", ["gates"], ["h", "c_last"], domain="qrnn", pooling="fo")
    graph = helper.make_graph(
        [node], "fopool",
        [helper.make_tensor_value_info("gates", TensorProto.FLOAT, [T, B, 3 * H])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [T, B, H]),
         helper.make_tensor_value_info("c_last", TensorProto.FLOAT, [B, H])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("qrnn", 1)])
    model.ir_version = 9
    return model.SerializeToString()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=_args.count, default=512)
    ap.add_argument("--B", type=_args.count, default=64)
    ap.add_argument("--H", type=_args.count, default=1024)
    ap.add_argument("--threads", type=_args.threads, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=_args.count, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch op rows")
    args = ap.parse_args()

    import onnxruntime as ort

    from qrnn_deploy._native import ort_session

    T, B, H = args.T, args.B, args.H
    rng = np.random.default_rng(0)
    gates = rng.standard_normal((T, B, 3 * H), dtype=np.float32)
    h = np.empty((T, B, H), np.float32)
    c_last = np.empty((B, H), np.float32)
    moved = gates.nbytes + h.nbytes
    print(f"FoPool fp32 'fo', T={T} B={B} H={H}: gates {gates.nbytes / 1e6:.0f} MB read, h {h.nbytes / 1e6:.0f} MB written; "
          f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")

    dst = np.empty_like(gates)
    t_copy, c_copy = best_of(lambda: np.copyto(dst, gates), args.repeats)
    copy_bw = 2 * gates.nbytes / t_copy / 1e9
    del dst
    rows = [("numpy copy (baseline)", t_copy, c_copy, copy_bw)]

    model = fopool_model(T, B, H)
    for n in args.threads:
        sess = ort_session(model, threads=n)
        io = sess.io_binding()
        io.bind_cpu_input("gates", gates)
        io.bind_ortvalue_output("h", ort.OrtValue.ortvalue_from_numpy(h))
        io.bind_ortvalue_output("c_last", ort.OrtValue.ortvalue_from_numpy(c_last))
        t, c = best_of(lambda: sess.run_with_iobinding(io), args.repeats)
        rows.append((f"onnxruntime FoPool, {n} thread(s)", t, c, moved / t / 1e9))

    if not args.no_torch:
        import torch

        from qrnn_deploy.nn import _cpu_kernels
        import qrnn_deploy.nn.fo_pool  # noqa: F401  (registers torch.ops.qrnn.fo_pool)

        g = torch.from_numpy(gates)
        before = torch.get_num_threads()
        native_fwd = _cpu_kernels.forward
        paths = [("PyTorch path", False)]
        if _cpu_kernels.available():
            paths.insert(0, ("native kernel", True))
        else:
            print(f"torch.ops.qrnn.fo_pool: no native kernel rows ({_cpu_kernels.unavailable_reason()})")
        for label, use_native in paths:
            _cpu_kernels.forward = native_fwd if use_native else (lambda *a, **k: None)
            for n in args.threads:
                torch.set_num_threads(n)
                t, c = best_of(lambda: torch.ops.qrnn.fo_pool(g, None, "fo", False, False), args.repeats)
                rows.append((f"torch.ops.qrnn.fo_pool ({label}), {n} thread(s)", t, c, moved / t / 1e9))
        _cpu_kernels.forward = native_fwd
        torch.set_num_threads(before)

    # On a shared machine wall time includes waiting for a core; CPU time does not (for one
    # thread, bytes per CPU-second is what an idle core would deliver, stalls included).
    print(f"{'what':58s} {'wall ms':>8s} {'cpu ms':>8s} {'GB/s':>7s} {'of copy':>8s}")
    for name, t, c, bw in rows:
        print(f"{name:58s} {t * 1e3:8.1f} {c * 1e3:8.1f} {bw:7.2f} {bw / copy_bw:8.0%}")


if __name__ == "__main__":
    _args.run(main)
