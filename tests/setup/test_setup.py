"""setup.py: where it finds the CUDA toolkit, what its build hash covers, and that the build-info
record appears only after a successful build.

(In tests/setup/, not tests/build/: pytest does not descend into directories named "build"
unless told to, and .gitignore ignores them.)"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "setup.py"


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH", "EPI_FAST_CUDA",
                                                          "TORCH_CUDA_ARCH_LIST")}
    env.update(extra)
    return env


def run_python(code: str, env: dict, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def expected_cuda_home() -> str | None:
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def test_cuda_home_is_resolved_before_torch_reads_it():
    # torch.utils.cpp_extension reads CUDA_HOME once, when imported; loading setup.py first must
    # leave it the toolkit, not torch's guess from `which nvcc` (/usr/local for /usr/local/bin/nvcc).
    code = (f"import runpy; runpy.run_path({str(SETUP)!r}, run_name='setup'); "
            "import torch.utils.cpp_extension as c; print(repr(c.CUDA_HOME))")
    done = run_python(code, clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == repr(expected_cuda_home())
    assert "using CUDA_HOME='/usr/local'" not in done.stderr


def test_cuda_home_from_nvcc_on_path_and_a_set_value_kept(tmp_path):
    toolkit = tmp_path / "cuda-x"
    (toolkit / "bin").mkdir(parents=True)
    nvcc = toolkit / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\nexit 0\n")
    nvcc.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").symlink_to(nvcc)  # as /usr/local/bin/nvcc links the toolkit's
    code = (f"import os, runpy; m = runpy.run_path({str(SETUP)!r}, run_name='setup'); "
            f"os.environ.pop('CUDA_HOME'); print(m['resolve_cuda_home'](default={str(tmp_path / 'none')!r}))")
    done = run_python(code, clean_env(PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(toolkit)
    code = f"import runpy; m = runpy.run_path({str(SETUP)!r}, run_name='setup'); print(m['resolve_cuda_home']())"
    done = run_python(code, clean_env(CUDA_HOME="/opt/my-cuda"))
    assert done.stdout.strip() == "/opt/my-cuda"


@pytest.fixture(scope="module")
def setup_module():
    return runpy.run_path(str(SETUP), run_name="setup")


def copy_tree(dst: Path) -> Path:
    for part in ("csrc", "setup.py", "epi_fast/_version.py"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, dst / part)
        else:
            (dst / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / part)
    return dst


def test_build_hash_covers_sources_setup_and_switches(tmp_path, monkeypatch):
    tree = copy_tree(tmp_path / "tree")
    code = ("import runpy, sys; m = runpy.run_path('setup.py', run_name='setup'); "
            "print(m['build_hash'](sys.argv[1] if len(sys.argv) > 1 else '2.14.1'))")

    def digest(env=None, torch_version=None):
        args = [sys.executable, "-c", code] + ([torch_version] if torch_version else [])
        done = subprocess.run(args, cwd=tree, env=env or clean_env(CUDA_HOME="/usr/local/cuda"),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    base = digest()
    assert digest() == base  # deterministic
    assert digest(torch_version="2.11.0") != base
    for name, value in [("EPI_FAST_CUDA", "0"), ("TORCH_CUDA_ARCH_LIST", "8.0"), ("CUDA_HOME", "/opt/other")]:
        env = clean_env(CUDA_HOME="/usr/local/cuda")
        env[name] = value
        assert digest(env) != base, name
    (tree / "csrc" / "ops" / "cpu" / "scores_kernel.cpp").write_text("// edited\n", "utf-8")
    edited = digest()
    assert edited != base
    (tree / "csrc" / "ops" / "cuda" / "new_family_kernel.cu").write_text("// a new file\n")
    assert digest() != edited
    before = digest()
    (tree / "README.txt").write_text("not a source")
    assert digest() == before


def test_build_info_written_only_after_the_build_succeeded(tmp_path, monkeypatch, setup_module):
    from setuptools import Distribution, Extension
    from torch.utils.cpp_extension import BuildExtension

    info = {"torch": "x", "build_hash": "abc"}
    cmd_class = setup_module["build_ext_class"](info)
    dist = Distribution({"name": "epi_fast", "ext_modules": [Extension("epi_fast._C", ["x.cpp"])]})
    cmd = cmd_class(dist)
    cmd.build_lib = str(tmp_path / "lib")
    cmd.build_temp = str(tmp_path / "temp")
    cmd.ensure_finalized()
    record = tmp_path / "lib" / "epi_fast" / "_build_info.json"

    def broken(self):
        raise RuntimeError("compile failed")

    monkeypatch.setattr(BuildExtension, "run", broken)
    with pytest.raises(RuntimeError, match="compile failed"):
        cmd.run()
    assert not record.exists()
    monkeypatch.setattr(BuildExtension, "run", lambda self: None)
    cmd.run()
    assert json.loads(record.read_text()) == info
    assert os.path.dirname(cmd.get_ext_fullpath("epi_fast._C")) == str(record.parent)
    assert not list(record.parent.glob("*.tmp"))


def test_failed_compile_leaves_the_previous_build_info(tmp_path):
    # A real build of a copy of the tree with one broken source: the compiler fails, setup.py
    # fails, and the build-info record that an earlier build left is untouched.
    tree = copy_tree(tmp_path / "tree")
    (tree / "csrc" / "ops" / "_broken.cpp").write_text('#error "deliberately broken"\n')
    (tree / "epi_fast").mkdir(exist_ok=True)
    previous = tree / "epi_fast" / "_build_info.json"
    previous.write_text('{"earlier": "build"}\n')
    # One job: the broken file sorts first, so the build stops at once.
    env = clean_env(EPI_FAST_CUDA="0", MAX_JOBS="1")
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "deliberately broken" in done.stdout + done.stderr
    assert previous.read_text() == '{"earlier": "build"}\n'
    assert not list((tree / "epi_fast").glob("_C*.so"))


def test_sources_are_found_not_listed(setup_module):
    cpp = setup_module["cpp_sources"](True)
    assert "csrc/ops/module.cpp" in cpp and "csrc/ops/cpu/scores_kernel.cpp" in cpp
    assert any(s.startswith("csrc/ops/cuda/") for s in cpp)
    assert not any(s.startswith("csrc/ops/cuda/") for s in setup_module["cpp_sources"](False))
    assert setup_module["cuda_sources"]() == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/ops/cuda").glob("*.cu"))
    # every family has its schema file, a CPU kernel and, where CUDA is built, glue and kernels
    for family in ("scores", "taylor", "groups", "masks", "counts"):
        assert f"csrc/ops/{family}.cpp" in cpp
        assert f"csrc/ops/cpu/{family}_kernel.cpp" in cpp
        assert f"csrc/ops/cuda/{family}_glue.cpp" in cpp
        assert f"csrc/ops/cuda/{family}_kernel.cu" in setup_module["cuda_sources"]()
