"""A wheel carries the native plugin sources, and an installed package builds and finds the plugins
in a per-user cache (`qrnn-deploy build-plugins`). Offline: the wheel is built without build
isolation, the build uses onnxruntime headers already on the machine (skipped without them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from qrnn_deploy import _native
from qrnn_deploy.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("CMakeLists.txt", "common", "kernels", "ort", "cuda", "tensorrt")


def plugin_source_files() -> dict[str, bytes]:
    out = {}
    for part in SHIPPED:
        p = ROOT / "plugins" / part
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())):
            out["plugins/" + str(f.relative_to(ROOT / "plugins"))] = f.read_bytes()
    out["scripts/build_plugins.sh"] = (ROOT / "scripts" / "build_plugins.sh").read_bytes()
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of the tracked inputs (nothing written in the tree)."""
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("setuptools.command.bdist_wheel", "wheel")):
        pytest.skip("setuptools here cannot build wheels without the network (setuptools >= 70.1 or wheel needed)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "qrnn_deploy", src / "qrnn_deploy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "plugins", src / "plugins", ignore=shutil.ignore_patterns("build"))
    (src / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "build_plugins.sh", src / "scripts")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = (tmp / "dist").glob("qrnn_deploy-*.whl")
    return whl


def test_wheel_carries_the_plugin_sources_byte_for_byte(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for rel, data in plugin_source_files().items():
            assert z.read(f"qrnn_deploy/_native_src/{rel}") == data, rel
        assert not [n for n in names if n.endswith((".so", ".o")) or "/build/" in n]
        assert "qrnn_deploy/pretrained/de-en.safetensors" in names
        assert "qrnn_deploy/serve/static/index.html" in names


@pytest.fixture
def installed_layout(tmp_path, monkeypatch):
    """_native as in site-packages: no source tree beside the package, sources in _native_src."""
    shipped = tmp_path / "pkg" / "_native_src"
    shutil.copytree(ROOT / "plugins", shipped / "plugins", ignore=shutil.ignore_patterns("build"))
    (shipped / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "build_plugins.sh", shipped / "scripts")
    monkeypatch.setattr(_native, "_PACKAGE", tmp_path / "pkg")
    monkeypatch.setattr(_native, "_TREE_PLUGINS", tmp_path / "plugins")  # absent
    monkeypatch.setattr(_native, "_SHIPPED", shipped)
    monkeypatch.setattr(_native, "_digests", {})
    for var in ("QRNN_PLUGIN_DIR", "QRNN_ORT_LIBRARY", "QRNN_KERNELS_LIBRARY", "QRNN_PLUGIN_SOURCES",
                "QRNN_PLUGINS_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QRNN_CACHE_DIR", str(tmp_path / "cache"))
    return shipped


def test_installed_package_looks_in_the_user_cache(installed_layout, tmp_path):
    d = _native.default_build_dir()
    assert d.parent == tmp_path / "cache" / "plugins" and len(d.name) == 12
    assert _native.plugin_dirs() == [d]
    assert _native.sources_dir() == installed_layout / "plugins"
    assert _native.cuda_sources_dir() == installed_layout / "plugins" / "cuda"
    with pytest.raises(BuildError, match="qrnn-deploy build-plugins") as e:
        _native.ort_library_path()
    assert "scripts/" not in str(e.value)  # a wheel user has no checkout
    d.mkdir(parents=True)
    (d / "libqrnn_ort.so").write_bytes(b"")
    assert _native.ort_library_path() == str(d / "libqrnn_ort.so")
    # Other sources (a new release) -> another directory: an old build is never picked up.
    (installed_layout / "plugins" / "ort" / "ops.h").write_text("// changed\n")
    _native._digests.clear()
    assert _native.default_build_dir() != d


def _headers() -> Path | None:
    for d in [os.environ.get("QRNN_ORT_INCLUDE_DIR", "")] + [str(p) for p in sorted((ROOT / ".cache").glob(
            "onnxruntime-headers-*"))]:
        if d and (Path(d) / "onnxruntime_cxx_api.h").is_file():
            return Path(d)
    return None


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_build_plugins_from_the_shipped_sources(installed_layout, tmp_path, monkeypatch):
    headers = _headers()
    if headers is None:
        pytest.skip("no onnxruntime headers on this machine (bash scripts/build_plugins.sh fetches them)")
    monkeypatch.setenv("QRNN_CMAKE_ARGS", "-DQRNN_WITH_CUDA=OFF")  # CPU only: seconds, not minutes
    out = _native.build_plugins(jobs=2, ort_include=headers)
    assert out == _native.default_build_dir()
    assert _native.ort_library_path() == str(out / "libqrnn_ort.so")
    assert not list(installed_layout.rglob("*.so")) and not (installed_layout / ".cache").exists()
    node = helper.make_node("FoPool", ["gates"], ["h", "c_last"], domain="qrnn", pooling="fo")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("gates", TensorProto.FLOAT, [3, 1, 3])],
                              [helper.make_tensor_value_info("h", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("c_last", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("qrnn", 1)])
    model.ir_version = 9
    h, _ = _native.ort_session(model.SerializeToString(), threads=1).run(None, {"gates": np.zeros((3, 1, 3), np.float32)})
    assert h.shape == (3, 1, 1)


def test_build_plugins_without_sources_says_so(installed_layout):
    shutil.rmtree(installed_layout)
    with pytest.raises(BuildError, match="plugin sources are not installed"):
        _native.build_plugins()


def test_cli_build_plugins_where_and_bad_options(capsys):
    from qrnn_deploy.cli import main

    with pytest.raises(SystemExit) as e:
        main(["build-plugins", "--where"])
    out = capsys.readouterr().out
    assert not e.value.code and f"sources              {_native.sources_dir()}" in out and "libqrnn_ort.so" in out
    with pytest.raises(SystemExit) as e:
        main(["build-plugins", "--jobs", "0"])
    assert e.value.code == 2 and capsys.readouterr().err.strip() == "error: --jobs must be >= 1, got 0"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_build_plugins_says_why_libqrnn_ort_was_not_built(installed_layout, tmp_path, monkeypatch):
    """`qrnn-deploy build-plugins` shows the script's last stderr line only: it said "...but not
    libqrnn_ort.so: see the message above" and the message above (no npm, npm pack failed, a wrong
    QRNN_ORT_INCLUDE_DIR) was dropped."""
    monkeypatch.setenv("QRNN_CMAKE_ARGS", "-DQRNN_WITH_CUDA=OFF")  # CPU only: seconds, not minutes
    monkeypatch.setenv("QRNN_ORT_INCLUDE_DIR", str(tmp_path / "no-headers"))
    with pytest.raises(BuildError) as e:
        _native.build_plugins(jobs=2)
    msg = str(e.value)
    assert "but not libqrnn_ort.so" in msg and "no-headers has no onnxruntime_cxx_api.h" in msg, msg
    assert "see the message above" not in msg
