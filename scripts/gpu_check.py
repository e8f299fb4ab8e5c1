"""The GPU check of the CUDA FoPool kernels (issue 8) and of the TensorRT AOT PTX (issue 9).

    python3 scripts/gpu_check.py --out DIR          # on a machine with one CUDA GPU (scripts/gpu_check.sh)
    python3 scripts/gpu_check.py --cpu --quick      # the same logic on the CPU, tiny sizes (a test runs it)

1. builds the kernels (cold, into a fresh cache) and reports the build time;
2. parity against a float64 reference (fo_pool_ref) on fresh random inputs, every dtype, pooling,
   reverse, batch_first, with and without c0, forward and backward:
   a) the kernels' C API with NaN-poisoned outputs, b) torch.ops.qrnn.fo_pool with autograd,
   c) the TensorRT AOT PTX (qrnn_deploy.export.tensorrt_aot) loaded with cuModuleLoadData and
      launched with cuLaunchKernel with exactly the launch parameters that module returns;
3. FoPool forward bandwidth at large sizes beside the device-to-device copy bandwidth measured
   in the same run;
4. the paper's Figure 4 (right) table: one QRNN layer of 320 units (window 2, with its gate
   projection) against torch.nn.LSTM (cuDNN) of 320 units, forward, batch x sequence length;
5. a training step of a 2-layer 640-unit language model, QRNN against cuDNN LSTM;
6. a tuning sweep: kernel variants (QRNN_FO_POOL_* macros: register caps, unroll, ...) built side
   by side, each checked for parity and timed forward and backward beside the shipped default.
Writes DIR/benchmarks-gpu.md (the section for docs/benchmarks-gpu.md) and DIR/gpu_check.json.
Exit status 1 when any parity check fails.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from qrnn_deploy.nn import _cuda_kernels  # noqa: E402
from qrnn_deploy.nn.fo_pool import fo_pool, fo_pool_ref  # noqa: E402
from qrnn_deploy.nn.layers import QRNNLayer  # noqa: E402
from qrnn_deploy.nn.lm import QRNNLanguageModel  # noqa: E402

P_OF = {"f": 2, "fo": 3, "ifo": 4}
# Relative to max(1, max |reference|): inputs are rounded to the dtype before both runs, so what
# is left is the kernel's float32 arithmetic and the rounding of its outputs.
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 3e-3, torch.bfloat16: 2e-2}
FIG4_BATCHES = (8, 16, 32, 64, 128, 256)
FIG4_SEQS = (32, 64, 128, 256, 512)


# ---- timing ----------------------------------------------------------------------------------


def timed(fn, device: torch.device, reps: int = 20, warmup: int = 3, inner: int = 1) -> float:
    """Median milliseconds of fn() over `reps` runs (CUDA events on a GPU). With inner > 1 each
    run is `inner` calls back to back, divided by inner: the device's throughput, with the host's
    launch overhead hidden behind the device work (as in a training loop), not one call's latency."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / inner)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / inner)
    times.sort()
    return times[len(times) // 2]


# ---- environment -----------------------------------------------------------------------------


def environment(device: torch.device) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "torch": torch.__version__, "python": platform.python_version()}
    if device.type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
        env["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(device)
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            env["driver"] = "unknown"
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        env["driver"] = "none"
    nvcc = _cuda_kernels.find_nvcc()
    if nvcc:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        env["nvcc"] = next((ln.split("release")[-1].strip() for ln in out.splitlines() if "release" in ln), "?")
    return env


def build_kernels(device: torch.device) -> dict:
    """Cold build of the kernel library for the device (fresh cache dir), timed."""
    if device.type != "cuda":
        return {"status": "skipped (no GPU)"}
    t0 = time.perf_counter()
    try:
        path = _cuda_kernels.build(_cuda_kernels._arch(device), out_dir=Path(tempfile.mkdtemp(prefix="qrnn-build-")))
    except Exception as e:  # reported, and every kernel check below then fails
        return {"status": f"FAILED: {e}"}
    return {"status": "ok", "seconds": round(time.perf_counter() - t0, 2), "library": str(path)}


# ---- parity ----------------------------------------------------------------------------------


def parity_cases(quick: bool, device: torch.device):
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    # Partial blocks, T not a multiple of the unroll, few columns (one a thread); B * H = 263,168
    # (257 x 1024): the launchers' wide form (2 float32 / 4 16-bit columns a thread), T = 9 past one
    # unroll of steps; B * H = 132,096: wide for float32 only (16-bit would keep too few threads).
    sizes = [(9, 3, 5), (9, 3, 16)] if quick else [(37, 5, 67), (5, 130, 129), (9, 257, 1024), (4, 129, 1024)]
    for (T, B, H), dtype, pooling, bf, rev, with_c0 in itertools.product(
            sizes, dtypes, ["f", "fo", "ifo"], [False, True], [False, True], [False, True]):
        yield dict(T=T, B=B, H=H, dtype=dtype, pooling=pooling, batch_first=bf, reverse=rev, with_c0=with_c0)


def make_inputs(case: dict, device: torch.device, gen: torch.Generator):
    T, B, H, P = case["T"], case["B"], case["H"], P_OF[case["pooling"]]
    shape = (B, T, P * H) if case["batch_first"] else (T, B, P * H)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).mul(2).to(device)  # noqa: E731
    dt = case["dtype"]
    gates = r(*shape).to(dt)
    c0 = r(B, H).to(dt) if case["with_c0"] else None
    grad_h = r(*shape[:2], H).to(dt)
    grad_c_last = r(B, H).to(dt)
    return gates, c0, grad_h, grad_c_last


def reference(case, gates, c0, grad_h, grad_c_last):
    """float64 (h, c_last, d gates, d c0) of the inputs as rounded to their dtype."""
    g = gates.double().requires_grad_()
    c = None if c0 is None else c0.double().requires_grad_()
    h, cl = fo_pool_ref(g, c, case["pooling"], case["batch_first"], case["reverse"])
    ((h * grad_h.double()).sum() + (cl * grad_c_last.double()).sum()).backward()
    return h.detach(), cl.detach(), g.grad, (None if c is None else c.grad)


def rel_errors(got, want) -> list:
    errs = []
    for a, b in zip(got, want):
        if b is None:
            errs.append(0.0 if a is None else float("inf"))
            continue
        if a is None or a.shape != b.shape:
            errs.append(float("inf"))
            continue
        e = (a.double() - b).abs().max().item() if b.numel() else 0.0
        errs.append(e / max(1.0, b.abs().max().item() if b.numel() else 1.0))
    return [float("inf") if e != e else e for e in errs]  # NaN (an unwritten output) fails


def run_c_api(lib, case, gates, c0, grad_h, grad_c_last):
    """The kernels through their C API, outputs poisoned with NaN before the launch."""
    codes = _cuda_kernels.DTYPE_CODES
    T, B, H, P = case["T"], case["B"], case["H"], P_OF[case["pooling"]]
    dt, bf, rev = gates.dtype, int(case["batch_first"]), int(case["reverse"])
    nan = float("nan")
    h = torch.full(grad_h.shape, nan, dtype=dt, device=gates.device)
    c_last = torch.full((B, H), nan, dtype=dt, device=gates.device)
    stream = torch.cuda.current_stream(gates.device).cuda_stream
    p = lambda t: None if t is None else t.data_ptr()  # noqa: E731
    rc = lib.qrnn_fo_pool_cuda_forward(codes[dt], codes[dt], p(gates), p(c0), p(h), p(c_last), T, B, H, P, bf, rev,
                                       stream)
    dg = torch.full_like(gates, nan)
    dc0 = None if c0 is None else torch.full((B, H), nan, dtype=dt, device=gates.device)
    ws = torch.empty(max(1, lib.qrnn_fo_pool_cuda_backward_workspace_size(codes[dt], T, B, H)), dtype=torch.uint8,
                     device=gates.device)
    rc2 = lib.qrnn_fo_pool_cuda_backward(codes[dt], codes[dt], p(grad_h), p(grad_c_last), p(gates), p(c0), p(dg),
                                         p(dc0), p(ws), T, B, H, P, bf, rev, stream)
    torch.cuda.synchronize(gates.device)
    if rc or rc2:
        raise RuntimeError(f"kernel launch failed: {lib.qrnn_fo_pool_cuda_error_string(rc or rc2).decode()}")
    return h, c_last, dg, dc0


def run_op(case, gates, c0, grad_h, grad_c_last):
    """torch.ops.qrnn.fo_pool forward + autograd backward (the path training uses)."""
    g = gates.clone().requires_grad_()
    c = None if c0 is None else c0.clone().requires_grad_()
    h, cl = fo_pool(g, c, case["pooling"], case["batch_first"], case["reverse"])
    torch.autograd.backward([h, cl], [grad_h, grad_c_last])
    return h.detach(), cl.detach(), g.grad, (None if c is None else c.grad)


def pack_args(params, pointers_in, pointers_out):
    """cuLaunchKernel's kernelParams in TensorRT's AOT order: input pointers, the int32 extra
    args, output pointers. Returns (the argument objects, the void* array pointing at them)."""
    args = ([ctypes.c_void_p(p) for p in pointers_in] + [ctypes.c_int32(int(v)) for v in params.extra_args]
            + [ctypes.c_void_p(p) for p in pointers_out])
    argv = (ctypes.c_void_p * len(args))(*[ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args])
    return args, argv


class PTXLauncher:
    """Loads PTX with the CUDA driver API (ctypes on libcuda) into the context PyTorch uses."""

    def __init__(self):
        self.cu = ctypes.CDLL("libcuda.so.1")
        vp = ctypes.c_void_p
        self.cu.cuModuleLoadData.argtypes = [ctypes.POINTER(vp), ctypes.c_char_p]
        self.cu.cuModuleGetFunction.argtypes = [ctypes.POINTER(vp), vp, ctypes.c_char_p]
        self.cu.cuLaunchKernel.argtypes = [vp] + [ctypes.c_uint] * 7 + [vp, ctypes.POINTER(vp), ctypes.POINTER(vp)]
        self.cu.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
        self.modules = {}

    def _check(self, rc, what):
        if rc != 0:
            msg = ctypes.c_char_p()
            self.cu.cuGetErrorString(rc, ctypes.byref(msg))
            raise RuntimeError(f"{what}: CUDA driver error {rc} ({(msg.value or b'?').decode()})")

    def function(self, ptx: str, name: str):
        key = (hash(ptx), name)
        if key not in self.modules:
            torch.cuda.init()
            torch.zeros(1, device="cuda")  # makes PyTorch's (primary) context current on this thread
            mod, fn = ctypes.c_void_p(), ctypes.c_void_p()
            self._check(self.cu.cuModuleLoadData(ctypes.byref(mod), ptx.encode() + b"\0"), "cuModuleLoadData")
            self._check(self.cu.cuModuleGetFunction(ctypes.byref(fn), mod, name.encode()), "cuModuleGetFunction")
            self.modules[key] = (mod, fn)
        return self.modules[key][1]

    def launch(self, fn, params, pointers_in, pointers_out, stream: int):
        args, argv = pack_args(params, pointers_in, pointers_out)  # args keeps the values alive
        self._check(self.cu.cuLaunchKernel(fn, *params.grid, *params.block, params.shared_mem,
                                           ctypes.c_void_p(stream), argv, None), "cuLaunchKernel")


def run_aot(launcher, ptx_by_arch, case, gates, c0):
    """The TensorRT AOT PTX launched with qrnn_deploy.export.tensorrt_aot's own parameters."""
    from qrnn_deploy.export import tensorrt_aot as aot
    T, B, H = case["T"], case["B"], case["H"]
    dtype = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}[gates.dtype]
    name = aot.kernel_name(dtype, c0 is not None)
    params = aot.launch_params(T, B, H, case["pooling"], case["batch_first"], case["reverse"])
    nan = float("nan")
    h = torch.full(gates.shape[:2] + (H,), nan, dtype=gates.dtype, device=gates.device)
    c_last = torch.full((B, H), nan, dtype=gates.dtype, device=gates.device)
    ins = [gates.data_ptr()] + ([c0.data_ptr()] if c0 is not None else [])
    launcher.launch(launcher.function(ptx_by_arch, name), params, ins, [h.data_ptr(), c_last.data_ptr()],
                    torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    return h, c_last


def parity(device: torch.device, quick: bool, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lib = _cuda_kernels.library(device) if device.type == "cuda" else None
    launcher, ptx = None, None
    if device.type == "cuda":
        from qrnn_deploy.export import tensorrt_aot as aot
        ptx = aot.compile_ptx("compute_80")
        launcher = PTXLauncher()
    paths = {"c_api": [], "op": [], "aot": []}
    failures = []
    for case in parity_cases(quick, device):
        gen_cpu = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        inputs = make_inputs(case, device, gen_cpu)
        want = reference(case, *inputs)
        tol = TOL[case["dtype"]]
        runs = {"op": lambda: rel_errors(run_op(case, *inputs), want)}
        if lib is not None:
            runs["c_api"] = lambda: rel_errors(run_c_api(lib, case, *inputs), want)
        if launcher is not None:
            runs["aot"] = lambda: rel_errors(run_aot(launcher, ptx, case, inputs[0], inputs[1]), want[:2])
        for path, run in runs.items():
            try:
                errs = run()
            except Exception as e:  # a failed launch is a failed case, and the other paths still run
                errs, note = [float("inf")], f"{type(e).__name__}: {e}"
            else:
                note = None
            paths[path].append((case["dtype"], max(errs)))
            if max(errs) > tol:
                failures.append({"path": path, **{k: str(v) for k, v in case.items()}, "errors": errs,
                                 **({"exception": note} if note else {})})
    summary = {}
    for path, rows in paths.items():
        if not rows:
            summary[path] = "skipped (no GPU)" if device.type != "cuda" else "skipped (kernels unavailable)"
            continue
        summary[path] = {str(dt).replace("torch.", ""): max(e for d, e in rows if d == dt)
                         for dt in sorted({d for d, _ in rows}, key=str)}
        summary[path]["cases"] = len(rows)
    # On a GPU the kernels must have run: a silent fallback to the PyTorch path is a failure.
    ok = not failures and (lib is not None or device.type != "cuda")
    return {"ok": ok,
            "max_rel_error": summary, "failures": failures[:20], "kernel_library": lib is not None}


# ---- bandwidth -------------------------------------------------------------------------------


def bandwidth(device: torch.device, quick: bool) -> list:
    """FoPool forward (fo, c0 given) effective bandwidth beside a device copy of the same bytes."""
    sizes = [(16, 8, 64)] if quick else [(256, 256, 1024), (1024, 64, 2048)]
    rows = []
    for (T, B, H), dtype in itertools.product(sizes, [torch.float32, torch.float16]):
        gates = torch.randn(T, B, 3 * H, device=device).to(dtype)
        c0 = torch.randn(B, H, device=device).to(dtype)
        es = gates.element_size()
        moved = (T * B * 3 * H + T * B * H + 2 * B * H) * es  # gates read, h written, c0 read, c_last written
        ms = timed(lambda: fo_pool(gates, c0, "fo"), device, inner=10)
        src = torch.empty(moved // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        copy_ms = timed(lambda: dst.copy_(src), device, inner=10)  # reads and writes moved // 2 bytes each
        fo_gbs, copy_gbs = moved / ms / 1e6, moved / copy_ms / 1e6
        rows.append({"T": T, "B": B, "H": H, "dtype": str(dtype).replace("torch.", ""), "fo_pool_ms": round(ms, 4),
                     "fo_pool_GBps": float(f"{fo_gbs:.4g}"), "copy_GBps": float(f"{copy_gbs:.4g}"),
                     "ratio": round(fo_gbs / copy_gbs, 3)})
        del gates, src, dst
    return rows


# ---- tuning sweep -----------------------------------------------------------------------------

# Kernel variants: a label and the QRNN_FO_POOL_* macros it defines (fo_pool_kernels.cuh); the
# first is the shipped default. (Run 3's sweep, docs/benchmarks-gpu.md, also tried libm math,
# one column a thread everywhere, 16-byte accesses, unroll 8 and 256-thread blocks; run 4 the
# register caps.)
SWEEP = (("default", {}),
         ("no register cap (run 3's kernels)", {"MIN_BLOCKS_BWD": 0}),
         ("forward capped too (run 4's default)", {"MIN_BLOCKS_FWD": 8}),
         ("unroll 2", {"UNROLL": 2}))


def _build_variant(arch: str, index: int, defines: dict, out_dir: Path):
    """Starts nvcc on fo_pool_cuda.cu with the QRNN_FO_POOL_* `defines`: (process, library path)."""
    from qrnn_deploy._native import cuda_sources_dir
    lib = out_dir / f"libqrnn_fo_pool_cuda_variant{index}.so"
    cmd = [_cuda_kernels.find_nvcc(), *_cuda_kernels.nvcc_flags(arch),
           *[f"-DQRNN_FO_POOL_{k}={v}" for k, v in defines.items()], "-shared", "-o", str(lib),
           str(cuda_sources_dir() / "fo_pool_cuda.cu")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), lib


def _time_c_api(lib, device, T, B, H, dtype, backward: bool) -> float:
    """Median ms of one forward (fo, c0 given) or backward launch through the C API."""
    codes = _cuda_kernels.DTYPE_CODES
    gates = torch.randn(T, B, 3 * H, device=device).to(dtype)
    c0 = torch.randn(B, H, device=device).to(dtype)
    h = torch.randn(T, B, H, device=device).to(dtype)  # the backward's grad_h / grad_c_last
    cl = torch.randn(B, H, device=device).to(dtype)
    stream = torch.cuda.current_stream(device).cuda_stream
    if not backward:
        fn = lambda: lib.qrnn_fo_pool_cuda_forward(codes[dtype], codes[dtype], gates.data_ptr(), c0.data_ptr(),  # noqa: E731
                                                   h.data_ptr(), cl.data_ptr(), T, B, H, 3, 0, 0, stream)
    else:
        dg, dc0 = torch.empty_like(gates), torch.empty_like(c0)
        ws = torch.empty(lib.qrnn_fo_pool_cuda_backward_workspace_size(codes[dtype], T, B, H), dtype=torch.uint8,
                         device=device)
        fn = lambda: lib.qrnn_fo_pool_cuda_backward(codes[dtype], codes[dtype], h.data_ptr(), cl.data_ptr(),  # noqa: E731
                                                    gates.data_ptr(), c0.data_ptr(), dg.data_ptr(), dc0.data_ptr(),
                                                    ws.data_ptr(), T, B, H, 3, 0, 0, stream)
    rc = fn()
    if rc:
        raise RuntimeError(f"launch failed: {lib.qrnn_fo_pool_cuda_error_string(rc).decode()}")
    return timed(fn, device, inner=10)


def sweep(device: torch.device, quick: bool) -> list:
    """Kernel variants (SWEEP): parity through the C API on small and wide cases, and forward /
    backward times at the bandwidth sizes, beside the shipped default. A variant that fails to
    build or launch gets its error in its row; the others still run."""
    if device.type != "cuda":
        return []
    arch = _cuda_kernels._arch(device)
    out_dir = Path(tempfile.mkdtemp(prefix="qrnn-sweep-"))
    procs = [(label, defines, *_build_variant(arch, i, defines, out_dir))  # built side by side
             for i, (label, defines) in enumerate(SWEEP)]
    sizes = [(16, 8, 64)] if quick else [(256, 256, 1024), (1024, 64, 2048), (512, 8, 320)]
    # Parity on small shapes (one column a thread) and on B * H = 263,168 (the wide form), T = 9:
    # past one unroll of steps.
    cases = [c for c in parity_cases(True, device) if c["H"] == 16]
    cases += [dict(c, T=9, B=257, H=1024) for c in cases]
    gen = torch.Generator().manual_seed(7)
    rows = []
    for label, defines, proc, path in procs:
        log = proc.communicate()[0]
        row = {"variant": label, "defines": " ".join(f"{k}={v}" for k, v in defines.items()) or "(none)"}
        if proc.returncode != 0:
            row["error"] = "nvcc: " + next((ln for ln in log.splitlines() if "error" in ln), log[-300:])
            rows.append(row)
            continue
        try:
            lib = _cuda_kernels._load(path)
            worst = 0.0
            for case in cases:
                inputs = make_inputs(case, device, gen)
                errs = rel_errors(run_c_api(lib, case, *inputs), reference(case, *inputs))
                worst = max(worst, max(errs) / TOL[case["dtype"]])
            row["parity"] = "PASS" if worst <= 1 else f"FAIL ({worst:.2g} x tolerance)"
            for (T, B, H), dtype in itertools.product(sizes, [torch.float32, torch.float16]):
                tag = f"{T}x{B}x{H} {str(dtype).replace('torch.', '')}"
                row[f"fwd {tag}"] = round(_time_c_api(lib, device, T, B, H, dtype, False), 4)
                row[f"bwd {tag}"] = round(_time_c_api(lib, device, T, B, H, dtype, True), 4)
        except Exception as e:  # this variant's row says why; the other variants still run
            row = {k: v for k, v in row.items() if not k.startswith(("fwd ", "bwd "))}
            row["error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    return rows


# ---- the paper's Figure 4 and the LM training step --------------------------------------------


def figure4(device: torch.device, quick: bool) -> list:
    """One 320-unit QRNN layer (window 2, with its gate projection) vs cuDNN LSTM, forward, fp32."""
    torch.manual_seed(0)
    qrnn = QRNNLayer(320, 320, window=2, pooling="fo").to(device).eval()
    lstm = nn.LSTM(320, 320, batch_first=True).to(device).eval()
    batches, seqs = ((8,), (32,)) if quick else (FIG4_BATCHES, FIG4_SEQS)
    rows = []
    with torch.inference_mode():
        for B, T in itertools.product(batches, seqs):
            x = torch.randn(B, T, 320, device=device)
            q = timed(lambda: qrnn(x), device, reps=3 if quick else 20)
            lstm_ms = timed(lambda: lstm(x), device, reps=3 if quick else 20)
            rows.append({"batch": B, "seq": T, "qrnn_ms": round(q, 4), "lstm_ms": round(lstm_ms, 4),
                         "speedup": round(lstm_ms / q, 2)})
    return rows


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab, embed, hidden, layers):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        y, _ = self.rnn(self.embed(tokens))
        return self.out(y), None


def lm_training_step(device: torch.device, quick: bool) -> list:
    """Forward + backward + clip + SGD of a 2-layer 640-unit LM (the paper's PTB setting: batch 20,
    105 steps, vocabulary 10k), QRNN (window 2 then 1) against cuDNN LSTM, float32."""
    vocab, B, T, H = (100, 2, 8, 64) if quick else (10000, 20, 105, 640)
    torch.manual_seed(0)
    models = {"QRNN": QRNNLanguageModel(vocab, H, H, 2, window=[2, 1]),
              "cuDNN LSTM" if device.type == "cuda" else "LSTM": LSTMLanguageModel(vocab, H, H, 2)}
    tokens = torch.randint(0, vocab, (B, T + 1), device=device)
    rows = []
    for name, model in models.items():
        model.to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)

        def step():
            opt.zero_grad(set_to_none=True)
            logits, _ = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            opt.step()

        rows.append({"model": name, "step_ms": round(timed(step, device, reps=3 if quick else 20), 3),
                     "hidden": H, "batch": B, "seq": T, "vocab": vocab})
    base = rows[1]["step_ms"]
    for r in rows:
        r["speedup_vs_lstm"] = round(base / r["step_ms"], 2)
    return rows


# ---- report ----------------------------------------------------------------------------------


def _md_parity(p: dict) -> list:
    lines = [f"Parity against a float64 reference (max error relative to max(1, |ref|)): "
             f"**{'PASS' if p['ok'] else 'FAIL'}**", "", "| path | float32 | float16 | bfloat16 | cases |",
             "| --- | --- | --- | --- | --- |"]
    for path, s in p["max_rel_error"].items():
        if isinstance(s, str):
            lines.append(f"| {path} | {s} | | | |")
        else:
            lines.append(f"| {path} | {s.get('float32', 0):.1e} | {s.get('float16', 0):.1e} | "
                         f"{s.get('bfloat16', 0):.1e} | {s['cases']} |")
    for f in p["failures"][:5]:
        lines.append(f"- failed: {f}")
    return lines


def _md_bandwidth(rows: list) -> list:
    lines = ["FoPool forward (fo, with c0) bandwidth beside a device copy of the same bytes:", "",
             "| T | B | H | dtype | fo_pool ms | fo_pool GB/s | copy GB/s | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['T']} | {r['B']} | {r['H']} | {r['dtype']} | {r['fo_pool_ms']} | {r['fo_pool_GBps']} | "
                     f"{r['copy_GBps']} | {r['ratio']:.0%} |")
    return lines


def _md_figure4(rows: list) -> list:
    seqs = sorted({r["seq"] for r in rows})
    lines = ["Figure 4 (right): one 320-unit QRNN layer (window 2, gate projection included) vs a 320-unit "
             "torch.nn.LSTM, forward, float32; speedup = LSTM time / QRNN time (QRNN ms / LSTM ms):", "",
             "| batch \\ seq | " + " | ".join(str(s) for s in seqs) + " |", "| --- |" + " --- |" * len(seqs)]
    for B in sorted({r["batch"] for r in rows}):
        cells = []
        for s in seqs:
            r = next(r for r in rows if r["batch"] == B and r["seq"] == s)
            cells.append(f"**{r['speedup']}x** ({r['qrnn_ms']:.3g} / {r['lstm_ms']:.3g})")
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    lines += ["", "Paper (Titan X Maxwell, 2016): 5.5x-16.9x at batch 8, 1.3x-1.4x at batch 256."]
    return lines


def _md_lm(rows: list) -> list:
    lines = ["Training step (forward, backward, clipping, SGD) of a 2-layer {hidden}-unit LM (batch {batch}, "
             "{seq} steps, vocabulary {vocab}, float32; QRNN windows 2 and 1):".format(**rows[0]), "",
             "| model | ms / step | speedup vs LSTM |", "| --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['step_ms']} | {r['speedup_vs_lstm']}x |")
    return lines


def _md_sweep(rows: list) -> list:
    if not rows:
        return ["Tuning sweep: skipped (no GPU)."]
    keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith(("fwd ", "bwd "))))
    base = rows[0]  # the shipped default; its times are the baseline when it has them

    def cell(r, k):
        if k not in r:
            return ""
        return f"{r[k]} ({base[k] / r[k]:.2f})" if base.get(k) and r[k] else str(r[k])

    lines = ["Tuning sweep of the kernel (C API launches, 10 back to back per timing; ms, and in brackets the "
             "default's time / this one's, > 1 is faster than the default; fo pooling with c0, [T, B, *] layout, "
             "T x B x H; the variants define QRNN_FO_POOL_* macros of fo_pool_kernels.cuh):", "",
             "| " + " | ".join(["variant", "defines", "parity", *keys]) + " |",
             "| " + " | ".join(["---"] * (3 + len(keys))) + " |"]
    for r in rows:
        status = f"failed: {r['error']}" if "error" in r else r["parity"]
        lines.append("| " + " | ".join([r["variant"], r["defines"], status, *(cell(r, k) for k in keys)]) + " |")
    return lines


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [f"## GPU check: {env['device']}", "",
             f"Driver {env.get('driver')}, {env.get('capability', 'no GPU')}, CUDA compiler {env.get('nvcc', 'none')}, "
             f"PyTorch {env['torch']}, {env['date']}. Command: `bash scripts/gpu_check.sh`.", ""]
    b = res["build"]
    lines += [f"Kernel build: {b.get('status', b.get('error'))}" + (f" in {b['seconds']} s" if "seconds" in b else ""),
              ""]
    for key, fn in (("parity", _md_parity), ("bandwidth", _md_bandwidth), ("figure4", _md_figure4),
                    ("lm_training", _md_lm), ("sweep", _md_sweep)):
        value = res[key]
        if isinstance(value, dict) and "error" in value:
            lines += [f"{key}: **FAILED** ({value['error']})", ""]
        else:
            lines += fn(value) + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run the same logic on the CPU (no kernels, no AOT launch)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for tests)")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"), help="output directory")
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to PyTorch (use --cpu for the CPU run of the same logic)",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"environment": environment(device)}
    t0 = time.perf_counter()
    for key, fn in [("build", lambda: build_kernels(device)), ("parity", lambda: parity(device, args.quick)),
                    ("bandwidth", lambda: bandwidth(device, args.quick)),
                    ("figure4", lambda: figure4(device, args.quick)),
                    ("lm_training", lambda: lm_training_step(device, args.quick)),
                    ("sweep", lambda: sweep(device, args.quick))]:
        t = time.perf_counter()
        try:
            res[key] = fn()
        except Exception as e:  # one broken section must not lose the report of the others
            traceback.print_exc()
            res[key] = {"error": f"{type(e).__name__}: {e}"}
        print(f"gpu_check: {key} done in {time.perf_counter() - t:.1f} s", flush=True)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    md = markdown(res)
    (out / "benchmarks-gpu.md").write_text(md)
    print(md)
    failed = [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    return 0 if res["parity"].get("ok") and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
