#!/usr/bin/env bash
# The GPU check (issues 8 and 9), one prepared run on one CUDA GPU (expected: a few minutes at most on an H100/H200;
# not yet timed): GPU tests, then scripts/gpu_check.py (kernel build, parity of the CUDA kernels, of
# torch.ops.qrnn.fo_pool and of the TensorRT AOT PTX against a float64 reference, bandwidth,
# the paper's Figure 4 table, the LM training step). Results go to $OUT (default gpu_check_out/):
# benchmarks-gpu.md (paste into docs/benchmarks-gpu.md), gpu_check.json, pytest-gpu.txt.
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
rm -rf "$QRNN_CACHE_DIR"
echo "gpu_check: exit status $status (0 = every check passed); results in $OUT_DIR"
exit $status
