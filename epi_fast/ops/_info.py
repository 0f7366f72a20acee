"""What was built, and what this machine can run: ``epi_fast.info()`` and ``python -m epi_fast.info``.

Kept apart from ``epi_fast/info.py`` (the runnable module): the package imports this one, so
running ``python -m epi_fast.info`` does not find its own module already imported.
"""

from __future__ import annotations

import json

import torch

from ._ext import BUILD_INFO, _C
from .._version import __version__

OPS = ("channel_scores", "taylor_scores", "taylor_accumulate_", "group_reduce", "global_masks",
       "layer_counts", "global_masks_counts", "mask_overlap")
# Schema overloads beside each operator's default one (registered as "name.overload").
OVERLOADS = {"global_masks": ("per_segment",), "global_masks_counts": ("per_segment",)}


def info() -> dict:
    return {
        "version": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "built_against_torch": BUILD_INFO["torch"],
        "cuda_kernels_built": bool(_C.cuda_kernels_built),
        "cuda_arch_list": BUILD_INFO.get("cuda_arch_list"),
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "ops": [name for name in OPS if hasattr(torch.ops.epi_fast, name)],
        "threads": torch.get_num_threads(),
        "cpu_simd": _C.cpu_simd(),
    }


def main() -> None:
    print(json.dumps(info(), indent=2))

