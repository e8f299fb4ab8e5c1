#!/usr/bin/env bash
# One-step set-up on a fresh machine (Debian, Python 3.10+): system packages, PyTorch (CPU wheel
# first, so no multi-GB CUDA build is pulled), the package with its test extras, native plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # trans-de-en: the German-English dictionary (training data); nlohmann-json: the C++ runtime.
  need=()
  for p in trans-de-en nlohmann-json3-dev valgrind chromium; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  # Native plugins (scripts/build_plugins.sh): cmake, a C++ compiler, npm (onnxruntime headers).
  for tool in cmake g++ npm; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e '.[dev]'
if [ -x scripts/build_plugins.sh ]; then
  # Without a compiler the package still works (PyTorch fallback); the reason is printed.
  bash scripts/build_plugins.sh || echo "setup: native plugins not built; FoPool onnxruntime sessions will be unavailable" >&2
fi
if [ -x scripts/build_cpp_runtime.sh ]; then
  # The C++ runtime (runtime/): its tests skip with the reason when it cannot be built.
  bash scripts/build_cpp_runtime.sh || echo "setup: C++ runtime not built; its tests will skip" >&2
fi
