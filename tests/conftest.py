"""Shared fixtures for the operator tests: the three implementations.

Implementations (the ``impl`` fixture, ids read as ``[reference]``, ``[cpu]``, ``[cuda]``):

- ``reference``: ``epi_fast.ops.reference`` (plain PyTorch) on CPU tensors, the oracle;
- ``cpu``: the compiled operators ``epi_fast.ops`` on CPU tensors;
- ``cuda``: the compiled operators on CUDA tensors, skipped (with the reason) when
  ``torch.cuda.is_available()`` is false; marked ``cuda`` (``pytest -m cuda`` selects them).

A missing or broken extension is a FAILURE of the ``cpu`` / ``cuda`` tests, never a skip: the
project does not hide a missing build. Run ``pytest -k reference`` to test only the oracle.

The comparisons (``assert_scores_close`` and friends) and their tolerances are in
``epi_fast.testing``, which the benchmarks share.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

import epi_fast.ops.reference as reference


@dataclass(frozen=True)
class Impl:
    name: str
    ops: ModuleType
    device: torch.device

    @property
    def compiled(self) -> bool:
        return self.name != "reference"

    def t(self, data, dtype=None) -> torch.Tensor:
        """A tensor on this implementation's device (copies a tensor, builds one otherwise)."""
        if isinstance(data, torch.Tensor):
            return data.to(device=self.device, dtype=dtype if dtype is not None else data.dtype)
        return torch.tensor(data, dtype=dtype, device=self.device)

    def __repr__(self) -> str:  # shows up in assertion messages
        return f"Impl({self.name})"


def compiled_ops() -> ModuleType:
    """``epi_fast.ops``, or a loud failure that says how to build it (never a skip)."""
    try:
        return importlib.import_module("epi_fast.ops")
    except Exception as exc:  # ImportError, or an ABI error raised by the loader
        pytest.fail(
            "the compiled operators (epi_fast.ops) cannot be imported: "
            f"{type(exc).__name__}: {exc}. Build the extension (pip install -e . --no-build-isolation) "
            "or run only the oracle's tests with `-k reference`.",
            pytrace=False,
        )


def make_impl(name: str) -> Impl:
    if name == "reference":
        return Impl("reference", reference, torch.device("cpu"))
    if name == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA implementation not tested: torch.cuda.is_available() is False on this machine")
    ops = compiled_ops()
    return Impl(name, ops, torch.device(name))


IMPL_NAMES = ("reference", "cpu", "cuda")
COMPILED_NAMES = ("cpu", "cuda")


def _params(names):
    # The cuda implementation's cases carry the `cuda` marker, so that `pytest -m cuda` runs them
    # with the tests of tests/cuda/ (scripts/gpu_check.sh does).
    return [pytest.param(n, marks=pytest.mark.cuda) if n == "cuda" else n for n in names]


@pytest.fixture(params=_params(IMPL_NAMES))
def impl(request) -> Impl:
    return make_impl(request.param)


@pytest.fixture(params=_params(COMPILED_NAMES))
def compiled(request) -> Impl:
    """The compiled implementations only (for comparisons against the reference)."""
    return make_impl(request.param)
