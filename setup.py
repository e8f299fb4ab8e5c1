"""Wheel/sdist packaging of the native plugin sources (everything else is in pyproject.toml).

plugins/ (top level, one source) and scripts/build_plugins.sh are copied into the built package
as qrnn_deploy/_native_src/{plugins,scripts}/ at build time, so an installed qrnn-deploy can run
`qrnn-deploy build-plugins` (the same script, building into a per-user cache) and compile the
CUDA kernels at run time. Nothing is copied inside the repository; editable installs use the
source tree's plugins/ directly.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PLUGIN_PARTS = ("CMakeLists.txt", "common", "kernels", "ort", "cuda", "tensorrt")
SUFFIXES = {".txt", ".h", ".cc", ".cpp", ".cu", ".cuh"}


def native_source_files():
    """(source, path inside qrnn_deploy/_native_src) of every file shipped for the native build."""
    out = [(ROOT / "scripts" / "build_plugins.sh", Path("scripts/build_plugins.sh"))]
    for part in PLUGIN_PARTS:
        p = ROOT / "plugins" / part
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
        out += [(f, Path("plugins") / f.relative_to(ROOT / "plugins")) for f in files]
    return out


class BuildPyWithNativeSources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the source tree's plugins/
        dest = Path(self.build_lib) / "qrnn_deploy" / "_native_src"
        missing = [str(s) for s, _ in native_source_files() if not s.is_file()]
        if missing:
            raise SystemExit(f"qrnn-deploy packaging: native sources missing: {missing}")
        for src, rel in native_source_files():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


setup(cmdclass={"build_py": BuildPyWithNativeSources})
