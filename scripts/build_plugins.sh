#!/usr/bin/env bash
# Builds the native FoPool plugins (plugins/, one CMake build) into plugins/build/:
#   libqrnn_kernels.so  C ABI CPU kernels used by qrnn_deploy.nn (always built)
#   libqrnn_ort.so      onnxruntime custom-op library (needs onnxruntime's C/C++ headers)
#
# onnxruntime headers, first match wins:
#   QRNN_ORT_INCLUDE_DIR=<dir with onnxruntime_cxx_api.h>
#   ONNXRUNTIME_ROOT=<onnxruntime SDK>   (its include/ or include/onnxruntime/)
#   otherwise fetched once from npm (com.github.asus4.onnxruntime, headers only) into .cache/;
#   QRNN_ORT_NPM_VERSION picks the package version (default below; its ORT_API_VERSION must not
#   exceed the installed onnxruntime wheel's minor version, which is checked).
# Other knobs: QRNN_BUILD_DIR (default plugins/build), QRNN_HEADERS_CACHE (where fetched headers
# are kept, default .cache/), QRNN_CMAKE_ARGS (extra cmake arguments), QRNN_JOBS (parallel compile
# jobs, default 2). `qrnn-deploy build-plugins` runs this script from an installed package.
# Exit status 0 when everything asked for was built; 1 with a one-line reason otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="${QRNN_BUILD_DIR:-$ROOT/plugins/build}"
CACHE="${QRNN_HEADERS_CACHE:-$ROOT/.cache}"
NPM_PKG=com.github.asus4.onnxruntime
# 0.4.9 ships onnxruntime 1.29 headers (ORT_API_VERSION 29), <= the pinned wheel (1.32): a
# library built against older headers loads in a newer onnxruntime, never the reverse.
NPM_VERSION="${QRNN_ORT_NPM_VERSION:-0.4.9}"
PY="${PYTHON:-python3}"

# The last reason is also kept in $REASON: a failure inside find_headers (a subshell) is reported
# again in the final line, which is all `qrnn-deploy build-plugins` shows.
REASON="$(mktemp)"
trap 'rm -f "$REASON"' EXIT
die() { echo "build_plugins: $*" >&2; echo "$*" >"$REASON"; exit 1; }  # in find_headers (a subshell) it fails just that

missing=()
command -v cmake >/dev/null 2>&1 || missing+=("cmake")
if ! command -v c++ >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
  missing+=("a C++17 compiler (g++ or clang++)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  die "cannot build the native plugins: missing ${missing[*]} (Debian: apt-get install cmake g++). The Python package works without them (slower PyTorch fo_pool on CPU, no onnxruntime FoPool op)."
fi

find_headers() {
  if [ -n "${QRNN_ORT_INCLUDE_DIR:-}" ]; then
    [ -f "$QRNN_ORT_INCLUDE_DIR/onnxruntime_cxx_api.h" ] || die "QRNN_ORT_INCLUDE_DIR=$QRNN_ORT_INCLUDE_DIR has no onnxruntime_cxx_api.h"
    echo "$QRNN_ORT_INCLUDE_DIR"; return
  fi
  if [ -n "${ONNXRUNTIME_ROOT:-}" ]; then
    for d in "$ONNXRUNTIME_ROOT/include" "$ONNXRUNTIME_ROOT/include/onnxruntime" "$ONNXRUNTIME_ROOT/include/onnxruntime/core/session"; do
      [ -f "$d/onnxruntime_cxx_api.h" ] && { echo "$d"; return; }
    done
    die "ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT has no include/onnxruntime_cxx_api.h"
  fi
  local dest="$CACHE/onnxruntime-headers-$NPM_VERSION"
  if [ ! -f "$dest/onnxruntime_cxx_api.h" ]; then
    command -v npm >/dev/null 2>&1 || die "onnxruntime headers needed for libqrnn_ort.so: install npm (Debian: apt-get install npm), or set QRNN_ORT_INCLUDE_DIR / ONNXRUNTIME_ROOT to an onnxruntime SDK"
    mkdir -p "$CACHE/npm"
    local tgz="$CACHE/npm/$NPM_PKG-$NPM_VERSION.tgz"
    if [ ! -f "$tgz" ]; then
      echo "build_plugins: fetching onnxruntime headers: npm pack $NPM_PKG@$NPM_VERSION" >&2
      # npm's own cache (a second copy of the tarball, and its logs) goes under ours, not ~/.npm,
      # and is removed with the tarball below.
      (cd "$CACHE/npm" && npm pack --silent --cache "$CACHE/npm/cache" "$NPM_PKG@$NPM_VERSION" >/dev/null) \
        || { rm -rf "$CACHE/npm/cache"; die "npm pack $NPM_PKG@$NPM_VERSION failed (no registry access?); set QRNN_ORT_INCLUDE_DIR to onnxruntime headers instead"; }
    fi
    local tmp; tmp="$(mktemp -d "$CACHE/headers.XXXXXX")"
    # Any slice of the xcframework: the C/C++ API headers are platform-independent.
    tar -xzf "$tgz" -C "$tmp" --wildcards 'package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers/*' \
      || die "$tgz has no onnxruntime headers where expected (package/Plugins/iOS~/onnxruntime.xcframework/*/onnxruntime.framework/Headers)"
    rm -rf "$dest"
    mv "$tmp/package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers" "$dest"
    rm -rf "$tmp"
    # Headers are what we need; the 150 MB tarball (and npm's cached copy of it) are not.
    rm -f "$tgz"
    rm -rf "$CACHE/npm/cache"
  fi
  echo "$dest"
}

# Without usable headers the C ABI kernel library is still built; the reason is reported at the end.
ort_problem=""
if INC="$(find_headers)"; then
  api_version="$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$INC/onnxruntime_c_api.h" | head -1)"
  if [ -z "$api_version" ]; then
    ort_problem="$INC/onnxruntime_c_api.h has no ORT_API_VERSION"
  elif wheel="$("$PY" -c 'import onnxruntime, sys; sys.stdout.write(onnxruntime.__version__)' 2>/dev/null)"; then
    wheel_minor="$(echo "$wheel" | cut -d. -f2)"
    if [ "${wheel_minor:-0}" -lt "$api_version" ] 2>/dev/null; then
      ort_problem="onnxruntime headers in $INC are API $api_version, newer than the installed onnxruntime $wheel: use headers of 1.$wheel_minor or older (QRNN_ORT_NPM_VERSION / QRNN_ORT_INCLUDE_DIR)"
    fi
  fi
else
  ort_problem="$(cat "$REASON")"
  [ -n "$ort_problem" ] || ort_problem="no onnxruntime headers (see the message above)"
fi
ort_args=(-DQRNN_BUILD_ORT=ON -DQRNN_ORT_INCLUDE_DIR="${INC:-}")
[ -z "$ort_problem" ] || ort_args=(-DQRNN_BUILD_ORT=OFF)

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ -f "$BUILD/CMakeCache.txt" ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=${generator[1]:-Unix Makefiles}" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"   # a cache from another generator cannot be reused
fi
# shellcheck disable=SC2086
cmake -S "$ROOT/plugins" -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  "${ort_args[@]}" ${QRNN_CMAKE_ARGS:-} >/dev/null
if ! nice cmake --build "$BUILD" -j "${QRNN_JOBS:-2}" >"$BUILD/build.log" 2>&1; then
  tail -n 40 "$BUILD/build.log" >&2
  die "compile failed (full log: $BUILD/build.log)"
fi
if [ -n "$ort_problem" ]; then
  rm -f "$BUILD/libqrnn_ort.so"  # never leave a stale library from an earlier build behind
  die "built $(cd "$BUILD" && echo lib*.so) in $BUILD, but not libqrnn_ort.so: $ort_problem"
fi
echo "build_plugins: built $(cd "$BUILD" && echo lib*.so) in $BUILD (onnxruntime headers: API $api_version from $INC)"
