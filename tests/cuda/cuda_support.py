"""What the CUDA tests (tests/cuda/) share: the marks that skip them cleanly without a GPU, a
guard under which any host synchronisation is an error, a counter of synchronisations, tensors
with a storage offset, and the CPU reference of a CUDA call.

Every test module sets ``pytestmark = CUDA`` (marked ``cuda``, skipped with the reason where
``torch.cuda.is_available()`` is false), so ``pytest -m cuda`` selects them and this CPU machine
collects and skips them. Tests that allocate gigabytes to reach the grid-stride loops past 65,535
blocks are also marked ``large``; the small tests that reach every kernel once are marked
``sanitize`` (scripts/gpu_check.sh runs those under compute-sanitizer).
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch

import epi_fast.ops as ops  # noqa: F401  (a missing build fails these tests, it does not skip them)

HAS_CUDA = torch.cuda.is_available()
CUDA = [pytest.mark.cuda,
        pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")]
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
DEV = torch.device("cuda")

# Elements past which a kernel's grid of at most 65,535 blocks of 256 threads starts its second
# grid-stride pass (a thread an element), and units past which a warp-per-unit grid does.
GRID_STRIDE_ELEMENTS = 65535 * 256
GRID_STRIDE_WARPS = 65535 * 8


@contextlib.contextmanager
def no_sync():
    """Any synchronising CUDA call inside raises RuntimeError (sync debug mode "error")."""
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@contextlib.contextmanager
def count_syncs():
    """Yields a list that, on exit, holds the warning of every synchronising CUDA call made inside
    (sync debug mode "warn")."""
    found: list = []
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    found.extend(str(w.message) for w in caught if "synchroniz" in str(w.message))


def with_offset(t: torch.Tensor, elements: int) -> torch.Tensor:
    """A contiguous copy of `t` whose storage starts `elements` elements earlier: the same values,
    data_ptr() misaligned by that many elements."""
    flat = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    view = flat[elements:].view(t.shape)
    view.copy_(t)
    assert view.is_contiguous() and view.storage_offset() == elements
    return view


def cpu(x):
    """Tensors (in lists and tuples too) copied to the CPU, the reference's inputs."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, (list, tuple)):
        return type(x)(cpu(v) for v in x)
    return x
