#!/usr/bin/env bash
# Builds the C++ streaming runtime (runtime/, one CMake build) into runtime/build/:
#   libqrnn_runtime.a, qrnn_translate, qrnn_stream, qrnn_stream_bench, qrnn_stream_check
#
# onnxruntime headers: QRNN_ORT_INCLUDE_DIR when set, otherwise the ones the plugin build used
# (scripts/build_plugins.sh finds or fetches them; it is run here when it has not been).
# onnxruntime library: QRNN_ORT_SHARED_LIBRARY when set, otherwise the libonnxruntime.so inside the
# installed onnxruntime Python wheel. The FoPool custom-op library of the plugin build becomes the
# runtime's default (an app can still name another one, or set $QRNN_ORT_LIBRARY); so does its
# TensorRT plugin when built. The TensorRT backend is compiled when TensorRT is found (TensorRT_ROOT).
# Other knobs: QRNN_RUNTIME_BUILD_DIR (default runtime/build), QRNN_RUNTIME_CMAKE_ARGS (extra cmake
# arguments, e.g. -DQRNN_SANITIZE=address), QRNN_JOBS (parallel compile jobs, default 2).
# Exit status 0 when built; 1 with a one-line reason otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${QRNN_RUNTIME_BUILD_DIR:-$ROOT/runtime/build}"
PLUGIN_BUILD="${QRNN_BUILD_DIR:-$ROOT/plugins/build}"
PY="${PYTHON:-python3}"

die() { echo "build_cpp_runtime: $*" >&2; exit 1; }

missing=()
command -v cmake >/dev/null 2>&1 || missing+=("cmake")
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  missing+=("a C++17 compiler (g++ or clang++)")
fi
[ -f /usr/include/nlohmann/json.hpp ] || [ -n "${QRNN_RUNTIME_CMAKE_ARGS:-}" ] || missing+=("nlohmann-json (Debian: nlohmann-json3-dev)")
if [ ${#missing[@]} -gt 0 ]; then
  die "cannot build the C++ runtime: missing ${missing[*]}. The Python runtime works without it."
fi

inc="${QRNN_ORT_INCLUDE_DIR:-}"
if [ -z "$inc" ]; then
  if ! grep -q '^QRNN_ORT_INCLUDE_DIR:PATH=.' "$PLUGIN_BUILD/CMakeCache.txt" 2>/dev/null; then
    bash "$ROOT/scripts/build_plugins.sh" >&2 || die "the plugin build (which finds the onnxruntime headers) failed; see above, or set QRNN_ORT_INCLUDE_DIR"
  fi
  inc="$(sed -n 's/^QRNN_ORT_INCLUDE_DIR:PATH=//p' "$PLUGIN_BUILD/CMakeCache.txt" | head -1)"
fi
[ -f "$inc/onnxruntime_cxx_api.h" ] || die "no onnxruntime_cxx_api.h in '$inc': set QRNN_ORT_INCLUDE_DIR to onnxruntime's C/C++ headers"

lib="${QRNN_ORT_SHARED_LIBRARY:-}"
if [ -z "$lib" ]; then
  capi="$("$PY" -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null)" \
    || die "the onnxruntime Python wheel is not installed (pip install onnxruntime), or set QRNN_ORT_SHARED_LIBRARY to libonnxruntime.so"
  lib="$(ls "$capi"/libonnxruntime.so* 2>/dev/null | head -1)"
fi
[ -f "$lib" ] || die "libonnxruntime.so not found (looked for '$lib'); set QRNN_ORT_SHARED_LIBRARY"

custom=""
[ -f "$PLUGIN_BUILD/libqrnn_ort.so" ] && custom="$PLUGIN_BUILD/libqrnn_ort.so"
trt_plugin=""
[ -f "$PLUGIN_BUILD/libqrnn_trt_plugin.so" ] && trt_plugin="$PLUGIN_BUILD/libqrnn_trt_plugin.so"

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"   # a cache from another generator cannot be reused
fi
# shellcheck disable=SC2086
cmake -S "$ROOT/runtime" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DQRNN_ORT_INCLUDE_DIR="$inc" -DQRNN_ORT_LIBRARY="$lib" -DQRNN_DEFAULT_ORT_LIBRARY="$custom" \
  -DQRNN_DEFAULT_TRT_PLUGIN_LIBRARY="$trt_plugin" \
  ${QRNN_RUNTIME_CMAKE_ARGS:-} >/dev/null || die "cmake configure failed: rerun it without >/dev/null to see why"
nice cmake --build "$BUILD" -j "${QRNN_JOBS:-2}" >/dev/null || die "compile failed: rerun 'cmake --build $BUILD' to see the errors"
echo "build_cpp_runtime: built qrnn_translate qrnn_stream qrnn_stream_bench qrnn_stream_check in $BUILD (onnxruntime $lib)"
