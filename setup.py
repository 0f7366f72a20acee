"""Build of epi_fast's compiled operators.

The C++ (CPU) kernels are always built. The CUDA kernels are built when the installed torch is
a CUDA build and nvcc is found -- never decided by torch.cuda.is_available(), because the
machines that build often have no GPU. EPI_FAST_CUDA=0 forces a CPU-only build and
EPI_FAST_CUDA=1 turns a missing toolkit into an error.

Build against the installed torch: ``pip install --no-build-isolation -e .``
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def _cuda_home() -> str | None:
    # torch guesses /usr/local when CUDA_HOME is unset and nvcc is not on PATH; point it at the
    # toolkit before torch.utils.cpp_extension reads the variable at import time.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        for candidate in ("/usr/local/cuda",):
            if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
                os.environ["CUDA_HOME"] = candidate
                break
        else:
            nvcc = shutil.which("nvcc")
            if nvcc:
                os.environ["CUDA_HOME"] = str(Path(nvcc).resolve().parent.parent)
    return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")


def _want_cuda(torch) -> tuple[bool, str]:
    switch = os.environ.get("EPI_FAST_CUDA", "").strip()
    if switch == "0":
        return False, "EPI_FAST_CUDA=0"
    home = _cuda_home()
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


def _default_arch_list(torch) -> None:
    # Without a visible GPU torch would compile for every architecture it knows; name a small
    # set instead (Ampere and Hopper, with PTX for newer GPUs). Users with a GPU get their own.
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return
    if not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"


def _extension():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", torch.__version__).groups())
    with_cuda, why = _want_cuda(torch)
    print(f"epi_fast: building {'CPU and CUDA' if with_cuda else 'CPU-only'} kernels ({why})")

    macros = [("EPI_FAST_TORCH_MAJOR", str(major)), ("EPI_FAST_TORCH_MINOR", str(minor)),
              ("EPI_FAST_TORCH_PATCH", str(patch))]
    include_dirs = [str(ROOT / "csrc" / "include")]
    # -ffp-contract=off: k = floor(p * N + 0.5) must round exactly as Python's float does.
    # The C++ standard is left to torch (C++17 before 2.10, C++20 after).
    # -fopenmp: ATen's parallel_for is an inline OpenMP region; without the flag it runs serial.
    cxx_flags = ["-O3", "-ffp-contract=off", "-fopenmp"]
    sources = ["csrc/ops.cpp", "csrc/cpu/ops_cpu.cpp"]
    kwargs = {}
    if with_cuda:
        _default_arch_list(torch)
        macros.append(("EPI_FAST_WITH_CUDA", None))
        sources += ["csrc/cuda/ops_cuda.cpp", "csrc/cuda/kernels.cu"]
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
    }
    tmp = ROOT / "epi_fast" / "_build_info.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, ROOT / "epi_fast" / "_build_info.json")

    kwargs["extra_link_args"] = ["-fopenmp"]
    return ext(
        name="epi_fast._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=macros,
        **kwargs,
    )


def _version() -> str:
    text = (ROOT / "epi_fast" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        package_data={"epi_fast": ["_build_info.json"]},
    )


if __name__ == "__main__":
    main()
