#!/usr/bin/env bash
# The GPU check (issues 8 and 9), one prepared run on one CUDA GPU (about 200 s on an H200,
# 2026-11-28): GPU tests, then scripts/gpu_check.py (kernel build, parity of the CUDA kernels, of
# torch.ops.qrnn.fo_pool and of the TensorRT AOT PTX against a float64 reference, bandwidth,
# the paper's Figure 4 table, the LM training step, a tuning sweep of kernel variants). Results go to $OUT (default gpu_check_out/):
# benchmarks-gpu.md (paste into docs/benchmarks-gpu.md), gpu_check.json, pytest-gpu.txt, and
# bench-serve.txt (the server's batching on the machine's CPU cores, when its packages are there).
# Needs: python3 with a CUDA build of PyTorch, nvcc, nvidia-smi. Nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# A fresh kernel cache, so the build is part of the check and nothing stale is loaded.
QRNN_CACHE_DIR=$(mktemp -d)
export QRNN_CACHE_DIR
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || status=1
command -v nvcc >/dev/null && nvcc --version | tail -n 2

python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_cuda_gpu.py 2>&1 | tail -n 40 | tee "$OUT_DIR/pytest-gpu.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

python3 scripts/gpu_check.py --out "$OUT_DIR" || status=1

# Issue 7 on a bigger CPU (the device machine has 16 cores; ours 2): the server's batching ratio.
# Needs uvicorn, starlette, websockets and httpx (and their dependencies), which that machine lacks: carry
# them as wheels in .whl/ (DEVELOPERS.md says how). Informational: it does not change the exit status.
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/serve-site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/serve-site
fi
if python3 -c "import uvicorn, starlette, websockets, httpx" 2>/dev/null; then
  echo "== bench_serve on $(nproc) CPU cores"
  timeout 240 python3 benchmarks/bench_serve.py --clients 1,8,32 --seconds 6 --rounds 10 2>&1 | tail -n 20 \
    | tee "$OUT_DIR/bench-serve.txt"
else
  echo "bench_serve skipped: uvicorn / starlette / websockets / httpx are not importable here"
fi
rm -rf "$QRNN_CACHE_DIR"
echo "gpu_check: exit status $status (0 = every check passed); results in $OUT_DIR"
exit $status
