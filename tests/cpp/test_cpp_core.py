"""The torch-free C++ tests (tests/cpp/*.cpp), compiled with the host's C++ compiler and run, so
that the shared kernel math and the CUDA kernels' work split are checked by every pytest run, not
only by CTest in CI (.ci/run). Skipped where no C++ compiler is found."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "tests" / "cpp").glob("test_*.cpp"))
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=[s.stem for s in SOURCES])
def test_cpp(source, tmp_path):
    exe = tmp_path / source.stem
    # -ffp-contract=off as in setup.py and CMakeLists.txt: removal_count must round as Python does.
    build = subprocess.run([CXX, "-std=c++17", "-O1", "-ffp-contract=off", "-I", str(ROOT / "csrc" / "include"),
                            str(source), "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all checks passed" in done.stdout
