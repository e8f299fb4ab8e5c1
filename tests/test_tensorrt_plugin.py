"""The C++ TensorRT plugin (plugins/tensorrt) on machines without TensorRT.

TensorRT is not installed here, so the plugin is compiled against tests/trt_api_subset/NvInferRuntime.h,
a hand-written subset of TensorRT 10's documented plugin API, its logic is run on the CPU by
tests/trt_api_subset/plugin_harness.cpp (the CUDA launcher recorded, not launched), and CMake is
checked to build the plugin only when TensorRT's headers are found. None of this proves the plugin
against NVIDIA's real headers or inside a real engine: that run is owed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CXX = shutil.which("g++") or shutil.which("clang++")
CUDA_INCLUDE = Path("/usr/local/cuda/include")


@pytest.mark.skipif(CXX is None or not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file(),
                    reason="needs a C++ compiler and the CUDA headers")
def test_plugin_compiles_against_the_documented_api_subset():
    cmd = ["nice", CXX, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter", "-fsyntax-only",
           "-I", str(ROOT / "tests" / "trt_api_subset"), "-I", str(ROOT / "plugins" / "cuda"),
           "-I", str(CUDA_INCLUDE), str(ROOT / "plugins" / "tensorrt" / "fo_pool_plugin.cpp")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.skipif(CXX is None or not (CUDA_INCLUDE / "cuda_runtime_api.h").is_file(),
                    reason="needs a C++ compiler and the CUDA headers")
def test_plugin_logic_runs_in_the_cpu_harness(tmp_path):
    # Fields, serialisation round trip, output shape expressions, formats, shape checks and the
    # exact arguments enqueue gives the CUDA launcher (recorded, not launched).
    exe = tmp_path / "harness"
    cmd = ["nice", CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Wno-unused-parameter",
           "-I", str(ROOT / "tests" / "trt_api_subset"), "-I", str(ROOT / "plugins" / "tensorrt"),
           "-I", str(ROOT / "plugins" / "cuda"), "-I", str(CUDA_INCLUDE),
           str(ROOT / "plugins" / "tensorrt" / "fo_pool_plugin.cpp"),
           str(ROOT / "tests" / "trt_api_subset" / "plugin_harness.cpp"), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr


def test_plugin_identity_matches_the_design():
    src = (ROOT / "plugins" / "tensorrt" / "fo_pool_plugin.h").read_text()
    assert 'kPluginName = "FoPool"' in src and 'kPluginVersion = "1"' in src and 'kPluginNamespace = "qrnn"' in src
    cpp = (ROOT / "plugins" / "tensorrt" / "fo_pool_plugin.cpp").read_text()
    assert "getCreators(int32_t& nbCreators)" in cpp and '#include "fo_pool_cuda.h"' in cpp


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("nvcc") is None, reason="needs cmake and nvcc")
def test_cmake_builds_the_plugin_only_with_tensorrt_headers(tmp_path):
    def configure(build, *extra):
        res = subprocess.run(["nice", "cmake", "-S", str(ROOT / "plugins"), "-B", str(build), "-DQRNN_BUILD_ORT=OFF",
                              *extra], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    assert "TensorRT plugin OFF" in configure(tmp_path / "none", "-DTensorRT_ROOT=" + str(tmp_path / "missing"))
    fake = tmp_path / "trt" / "include"
    fake.mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "trt_api_subset" / "NvInferRuntime.h", fake)
    assert "TensorRT plugin ON" in configure(tmp_path / "with", "-DTensorRT_ROOT=" + str(tmp_path / "trt"))
