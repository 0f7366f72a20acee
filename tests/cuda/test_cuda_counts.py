"""layer_counts and mask_overlap on CUDA: segments short and long (several 2 KiB pieces), empty
segments, masks with a storage offset (a scalar head before the 16-byte loads; two masks
misaligned differently read byte by byte), more than 65,535 mask rows, and the grid-stride loop
past 65,535 blocks. Counts are exact: compared for equality with the reference."""

from __future__ import annotations

import pytest
import torch

import epi_fast.ops as ops
import epi_fast.ops.reference as R
from cuda_support import CUDA, DEV, GRID_STRIDE_WARPS, with_offset
from epi_fast.testing import assert_exact

pytestmark = CUDA

PIECE = 2048  # bytes a warp counts at most (epi_fast/work_split.h, kPieceBytes)

SEGMENTS = {
    "short": [1, 3, 16, 17, 5, 64, 9, 0, 2],
    "empty_edges": [0, 0, 40, 0, 7, 0, 0],
    "long": [PIECE - 1, PIECE, PIECE + 1, 3 * PIECE + 17],
    "one_huge": [40_000],
    "resnet_like": [64] * 10 + [128] * 8 + [256] * 12 + [512] * 6 + [2048] * 3,
}


def _masks(m, n, seed, p=0.5):
    return torch.rand(m, n, generator=torch.Generator().manual_seed(seed)) < p


@pytest.mark.parametrize("segments", list(SEGMENTS))
@pytest.mark.parametrize("m", [1, 3, 9])
def test_layer_counts_and_overlap_against_the_reference(segments, m):
    sizes = SEGMENTS[segments]
    n = sum(sizes)
    a, b = _masks(m, n, 1), _masks(m, n, 2, 0.3)
    assert_exact(ops.layer_counts(a.to(DEV), sizes), R.layer_counts(a, sizes), "layer_counts")
    both, diff = ops.mask_overlap(a.to(DEV), b.to(DEV), sizes)
    rb, rd = R.mask_overlap(a, b, sizes)
    assert_exact(both, rb, "overlap")
    assert_exact(diff, rd, "differing")
    both, diff = ops.mask_overlap(a.to(DEV), b.to(DEV))  # one segment of all n
    rb, rd = R.mask_overlap(a, b)
    assert_exact(both, rb, "overlap, one segment")
    assert_exact(diff, rd, "differing, one segment")


@pytest.mark.sanitize
@pytest.mark.parametrize("offsets", [(0, 0), (1, 1), (3, 3), (5, 2), (0, 9)], ids=lambda o: f"a+{o[0]},b+{o[1]}")
def test_storage_offsets(offsets):
    sizes = [3, 0, 33, 100, PIECE + 5, 1]
    n, m = sum(sizes), 3
    a, b = _masks(m, n, 3), _masks(m, n, 4)
    da, db = with_offset(a.to(DEV), offsets[0]), with_offset(b.to(DEV), offsets[1])
    assert_exact(ops.layer_counts(da, sizes), R.layer_counts(a, sizes), "layer_counts")
    both, diff = ops.mask_overlap(da, db, sizes)
    rb, rd = R.mask_overlap(a, b, sizes)
    assert_exact(both, rb, "overlap")
    assert_exact(diff, rd, "differing")


@pytest.mark.sanitize
def test_all_true_all_false_and_one_dimensional_masks():
    sizes = [5, PIECE * 2, 0, 11]
    n = sum(sizes)
    ones = torch.ones(2, n, dtype=torch.bool)
    zeros = torch.zeros(2, n, dtype=torch.bool)
    assert_exact(ops.layer_counts(ones.to(DEV), sizes), torch.tensor([sizes, sizes]), "all kept")
    assert_exact(ops.layer_counts(zeros.to(DEV), sizes), torch.zeros(2, 4, dtype=torch.int64), "none kept")
    both, diff = ops.mask_overlap(ones.to(DEV), zeros.to(DEV), sizes)
    assert_exact(both, torch.zeros(2, 4, dtype=torch.int64), "overlap")
    assert_exact(diff, torch.tensor([sizes, sizes]), "differing")
    row = _masks(1, n, 5)[0]
    assert_exact(ops.layer_counts(row.to(DEV), sizes), R.layer_counts(row, sizes), "1-D mask")


def test_more_than_65535_mask_rows():
    # the rows were a grid dimension limited to 65,535
    m, sizes = 70_000, [10, 0, 30]
    a, b = _masks(m, 40, 6), _masks(m, 40, 7)
    assert_exact(ops.layer_counts(a.to(DEV), sizes), R.layer_counts(a, sizes), "layer_counts, 70,000 rows")
    both, diff = ops.mask_overlap(a.to(DEV), b.to(DEV), sizes)
    rb, rd = R.mask_overlap(a, b, sizes)
    assert_exact(both, rb, "overlap, 70,000 rows")
    assert_exact(diff, rd, "differing, 70,000 rows")


@pytest.mark.large
def test_grid_stride_past_65535_blocks():
    # 70,000 rows x 8 segments are more pieces (a warp each) than 65,535 blocks hold
    m, sizes = 70_000, [4, 9, 1, 16, 7, 3, 30, 2]
    assert m * len(sizes) > GRID_STRIDE_WARPS
    a = torch.rand(m, sum(sizes), device=DEV) < 0.5
    b = torch.rand(m, sum(sizes), device=DEV) < 0.5
    assert_exact(ops.layer_counts(a, sizes), R.layer_counts(a.cpu(), sizes), "layer_counts")
    both, diff = ops.mask_overlap(a, b, sizes)
    rb, rd = R.mask_overlap(a.cpu(), b.cpu(), sizes)
    assert_exact(both, rb, "overlap")
    assert_exact(diff, rd, "differing")
