"""How the operators' results are compared: by the tests (the ``assert_*`` functions) and the
benchmarks (the boolean ``close`` / ``equal``).

- Masks, thresholds, counts and max-reductions: exact (``equal``, ``assert_exact``).
- Scores: rtol 1e-5, atol 1e-6 for short rows. Every implementation accumulates in float32
  (float16/bfloat16 inputs are widened exactly to float32 first, so the same tolerance applies
  to them), but in a different order: the CPU kernels sum a row in 16 interleaved lanes folded
  in a fixed tree, PyTorch uses its own blocked order, the CUDA kernels a team of lanes (a long
  row's chunk sums added in order), and CUDA may contract a multiply-add into an FMA. For a sum of n non-negative terms (L1, L2 squares)
  two such orders differ by at most about (n/8 + 32) units of roundoff (u = 2^-24) relative to
  the sum, so long rows get rtol = (n/8 + 32) * u when that exceeds 1e-5 (``score_rtol``).
  Signed sums (Taylor, group sums) cancel, so their bound is absolute and scales with the sum of
  the magnitudes of the terms (``taylor_bound``).
"""

from __future__ import annotations

import math

import torch

U = 2.0 ** -24  # unit roundoff of float32
RTOL = 1e-5
ATOL = 1e-6


def score_rtol(row_len: int) -> float:
    """Relative tolerance for a float32 sum of ``row_len`` non-negative terms (see the module doc)."""
    return max(RTOL, (row_len / 8 + 32) * U)


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, equal_nan: bool = True) -> bool:
    """Same shape and |actual - expected| <= atol + rtol * |expected| everywhere (torch.allclose),
    both read as float32 on the CPU; NaN matches NaN where ``equal_nan``."""
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    return a.shape == e.shape and bool(torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=equal_nan))


def equal(actual, expected) -> bool:
    """Same dtype, shape and values; tuples and lists of tensors item by item."""
    if isinstance(actual, (tuple, list)):
        return (isinstance(expected, (tuple, list)) and len(actual) == len(expected)
                and all(equal(a, e) for a, e in zip(actual, expected)))
    return actual.dtype == expected.dtype and actual.shape == expected.shape and bool(
        torch.equal(actual.cpu(), expected.cpu()))


def assert_scores_close(actual: torch.Tensor, expected: torch.Tensor, row_len: int = 1, msg: str = "") -> None:
    """Float32 scores within tolerance; NaN matches NaN and inf matches the same inf."""
    assert actual.dtype == torch.float32, f"{msg}: scores are {actual.dtype}, expected float32"
    assert actual.shape == expected.shape, f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(
        actual.cpu(), expected.cpu().float(), rtol=score_rtol(row_len), atol=ATOL, equal_nan=True, msg=msg or None
    )


def assert_bounded(actual: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor, msg: str = "") -> None:
    """|actual - expected| <= bound + rtol*|expected| + atol elementwise; non-finite values must match exactly."""
    a, e, b = actual.cpu().double(), expected.cpu().double(), bound.cpu().double()
    assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    fin = torch.isfinite(e)
    same_nonfinite = (a[~fin] == e[~fin]) | (torch.isnan(a[~fin]) & torch.isnan(e[~fin]))
    assert bool(same_nonfinite.all()), f"{msg}: non-finite values differ: {a[~fin]} vs {e[~fin]}"
    err = (a[fin] - e[fin]).abs()
    allowed = b[fin] + RTOL * e[fin].abs() + ATOL
    bad = ~(err <= allowed)  # NaN in `a` where `e` is finite fails too
    assert not bool(bad.any()), (
        f"{msg}: {int(bad.sum())} of {err.numel()} values outside tolerance; worst "
        f"actual={a[fin][bad][:5].tolist()} expected={e[fin][bad][:5].tolist()} allowed={allowed[bad][:5].tolist()}"
    )


def taylor_bound(params, grads, offsets=None, num_channels=None, mode="square", inv_scale=1.0,
                 lanes: int = 8) -> torch.Tensor:
    """Per-channel error bound between two float32 Taylor implementations.

    raw = sum of w*g over the channel's elements: two float32 summation orders (and an FMA or
    a different place to apply inv_scale) differ by at most E = (n/8 + 32 + t) * 2u * S, with
    S the sum of |w*g| (float64), n the elements of the channel and t the tensors adding into
    it. The score f(raw) then differs by E (abs) or 2|raw|E + E^2 (square). ``lanes=1`` gives
    the bound against the exact (float64) value for a plain sequential float32 sum.
    """
    offs = offsets
    if offs is None:
        offs, acc = [], 0
        for p in params:
            offs.append(acc)
            acc += p.shape[0]
    if num_channels is None:
        num_channels = max((o + p.shape[0] for o, p in zip(offs, params)), default=0)
    s = torch.zeros(num_channels, dtype=torch.float64)
    raw = torch.zeros(num_channels, dtype=torch.float64)
    n = torch.zeros(num_channels, dtype=torch.float64)
    t = torch.zeros(num_channels, dtype=torch.float64)
    for p, g, o in zip(params, grads, offs):
        rows = p.shape[0]
        prod = (p.detach().cpu().double() * g.cpu().double()).reshape(rows, math.prod(p.shape[1:]))
        s[o:o + rows] += prod.abs().sum(1)
        raw[o:o + rows] += prod.sum(1)
        n[o:o + rows] += prod.shape[1]
        t[o:o + rows] += 1
    scale = abs(float(inv_scale))
    e = (n / lanes + 32 + t) * 2 * U * s * scale
    raw = raw.abs() * scale
    return e if mode == "abs" else 2 * raw * e + e * e


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Same dtype, shape and values (NaN-free tensors: masks, thresholds, counts)."""
    a, e = actual.cpu(), expected.cpu()
    assert a.dtype == e.dtype, f"{msg}: dtype {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    if not equal(a, e):
        diff = (a != e).nonzero()[:10].tolist()
        raise AssertionError(f"{msg}: values differ at {diff}:\nactual   {a}\nexpected {e}")
