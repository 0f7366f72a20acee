"""Build of epi_fast's compiled operators.

The C++ (CPU) kernels are always built. The CUDA kernels are built when the installed torch is
a CUDA build and nvcc is found -- never decided by torch.cuda.is_available(), because the
machines that build often have no GPU. EPI_FAST_CUDA=0 forces a CPU-only build and
EPI_FAST_CUDA=1 turns a missing toolkit into an error.

Sources are found, not listed: every ``csrc/ops/**/*.cpp`` (the CUDA glue under
``csrc/ops/cuda/`` only where CUDA is built) and every ``csrc/ops/cuda/*.cu``, so a new operator
family is new files only.

Build against the installed torch: ``pip install --no-build-isolation -e .``
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_CUDA_HOME = "/usr/local/cuda"


def resolve_cuda_home(default: str = DEFAULT_CUDA_HOME) -> str | None:
    """Point CUDA_HOME at the toolkit unless CUDA_HOME or CUDA_PATH is set: `default` when its
    nvcc exists, else the toolkit of the nvcc on PATH (symlinks followed). Returns the toolkit
    used, or None.

    Runs before torch.utils.cpp_extension is imported: that module reads the variable once, at
    import, and without it guesses from `which nvcc`, which here is /usr/local/bin/nvcc, so it
    would take /usr/local for the toolkit.
    """
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        if os.path.exists(os.path.join(default, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = default
        else:
            nvcc = shutil.which("nvcc")
            if nvcc:
                os.environ["CUDA_HOME"] = str(Path(nvcc).resolve().parent.parent)
    return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")


resolve_cuda_home()

# Below this line torch.utils.cpp_extension may be imported.

import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sysconfig  # noqa: E402

from setuptools import setup  # noqa: E402

# The environment that decides what a build produces: with the sources and this file, what the
# build hash covers (scripts/setup.sh rebuilds when it changes).
SWITCHES = ("EPI_FAST_CUDA", "TORCH_CUDA_ARCH_LIST", "CUDA_HOME")


def cpp_sources(with_cuda: bool) -> list[str]:
    cuda_dir = os.path.join("csrc", "ops", "cuda") + os.sep
    found = sorted(glob.glob("csrc/ops/**/*.cpp", recursive=True, root_dir=ROOT))
    return [s for s in found if with_cuda or not s.startswith(cuda_dir)]


def cuda_sources() -> list[str]:
    return sorted(glob.glob("csrc/ops/cuda/*.cu", root_dir=ROOT))


def build_hash(torch_version: str) -> str:
    """sha256 of everything a build depends on: the files under csrc/, this file, the torch
    release, the Python extension suffix and the build switches."""
    h = hashlib.sha256()
    for path in sorted(p for p in (ROOT / "csrc").rglob("*") if p.is_file()) + [ROOT / "setup.py"]:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    env = {name: os.environ.get(name, "").strip() for name in SWITCHES}
    h.update(json.dumps({"torch": torch_version, "ext_suffix": sysconfig.get_config_var("EXT_SUFFIX"), **env},
                        sort_keys=True).encode())
    return h.hexdigest()


def _want_cuda(torch) -> tuple[bool, str]:
    switch = os.environ.get("EPI_FAST_CUDA", "").strip()
    if switch == "0":
        return False, "EPI_FAST_CUDA=0"
    home = resolve_cuda_home()
    nvcc = home and os.path.exists(os.path.join(home, "bin", "nvcc"))
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is not a CUDA build")
    if not nvcc:
        reasons.append("nvcc was not found (set CUDA_HOME)")
    if reasons:
        if switch == "1":
            sys.exit("epi_fast: EPI_FAST_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        return False, "; ".join(reasons)
    return True, f"CUDA {torch.version.cuda}, nvcc in {home}"


# GPU architectures built when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset: Turing (sm_75,
# the oldest that CUDA 13 supports: T4, RTX 20xx), Ampere (sm_80: A100; the consumer sm_86 cards
# run sm_80 code) and Hopper (sm_90: H100, H200), with sm_90 PTX that the driver compiles for
# newer GPUs (Blackwell) when the extension first loads there.
DEFAULT_ARCH_LIST = "7.5;8.0;9.0+PTX"


def _default_arch_list(torch) -> None:
    # Without a visible GPU torch would compile for every architecture it knows; name the set
    # above instead. With a visible GPU torch builds for that GPU's architecture.
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    if not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST


def _version() -> str:
    text = (ROOT / "epi_fast" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _extension():
    """The extension and the build-info record that a successful build writes beside it."""
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", torch.__version__).groups())
    digest = build_hash(torch.__version__)
    with_cuda, why = _want_cuda(torch)
    print(f"epi_fast: building {'CPU and CUDA' if with_cuda else 'CPU-only'} kernels ({why})")

    macros = [("EPI_FAST_TORCH_MAJOR", str(major)), ("EPI_FAST_TORCH_MINOR", str(minor)),
              ("EPI_FAST_TORCH_PATCH", str(patch))]
    include_dirs = [str(ROOT / "csrc" / "include")]
    # -ffp-contract=off: k = floor(p * N + 0.5) must round exactly as Python's float does.
    # The C++ standard is left to torch (C++17 before 2.10, C++20 after).
    # -fopenmp: ATen's parallel_for is an inline OpenMP region; without the flag it runs serial.
    cxx_flags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    sources = cpp_sources(with_cuda)
    kwargs = {}
    if with_cuda:
        _default_arch_list(torch)
        macros.append(("EPI_FAST_WITH_CUDA", None))
        sources += cuda_sources()
        # The nvidia-* wheels beside a CUDA torch carry headers (cuBLAS, cuSPARSE, ...) that
        # torch's CUDA headers include and that a bare toolkit may lack.
        for site in map(Path, sys.path):
            for inc in sorted(glob.glob(str(site / "nvidia" / "cu*" / "include"))):
                include_dirs.append(inc)
        kwargs["extra_compile_args"] = {"cxx": cxx_flags, "nvcc": ["-O3"]}
        ext = CUDAExtension
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx_flags}
        ext = CppExtension

    info = {
        "version": _version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_kernels_built": with_cuda,
        "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if with_cuda else None,
        "why": why,
        "build_hash": digest,
    }
    kwargs["extra_link_args"] = ["-fopenmp"]
    extension = ext(name="epi_fast._C", sources=sources, include_dirs=include_dirs, define_macros=macros, **kwargs)
    return extension, info


def build_ext_class(info: dict):
    """torch's BuildExtension, which writes epi_fast/_build_info.json beside the built extension
    once the compile and link have succeeded: in the source tree for in-place and editable builds,
    in build_lib for wheels. A failed build leaves the previous record (and binary) as they were."""
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildExt(base):
        def run(self):
            super().run()
            out_dir = os.path.dirname(self.get_ext_fullpath("epi_fast._C"))
            os.makedirs(out_dir, exist_ok=True)
            tmp = os.path.join(out_dir, "_build_info.json.tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps(info, indent=2) + "\n")
            os.replace(tmp, os.path.join(out_dir, "_build_info.json"))

    return BuildExt


def main() -> None:
    extension, info = _extension()
    setup(ext_modules=[extension], cmdclass={"build_ext": build_ext_class(info)})


if __name__ == "__main__":
    main()
