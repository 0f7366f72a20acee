"""channel_scores on CUDA: every row plan of the multi-tensor row-sum launcher (a team of 1 to 32
lanes per short row, a warp per chunk of a long row; epi_fast/work_split.h), vector loads after
a storage offset, more tensors than one launch's table holds, NaN and inf in late chunks, the
grid-stride loop past 65,535 blocks, and bit-for-bit repeatability. The reference is
epi_fast.ops.reference on the CPU."""

from __future__ import annotations

import pytest
import torch

import epi_fast.ops as ops
import epi_fast.ops.reference as R
from cuda_support import CUDA, DEV, DTYPES, GRID_STRIDE_WARPS, cpu, with_offset
from epi_fast.testing import assert_exact, assert_scores_close

pytestmark = CUDA

# Row lengths that reach every team size (1..32 lanes for fp32 and for fp16), the edges of one
# chunk (1024 fp32 / 2048 fp16 elements), several chunks and empty rows.
COLS = [0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 27, 31, 33, 64, 65, 100, 128, 255, 256, 257, 511, 512, 1000, 1023, 1024,
        1025, 2047, 2048, 2049, 4608, 20000]


def _rows(rows, cols, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 3).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_every_row_plan_against_the_reference(dtype, criterion):
    tensors = [_rows(rows, cols, dtype, i) for i, cols in enumerate(COLS) for rows in (1, 3, 40)]
    got = ops.channel_scores([t.to(DEV) for t in tensors], criterion)
    expected = R.channel_scores(tensors, criterion)
    assert got.device.type == "cuda"
    assert_scores_close(got, expected, row_len=max(COLS), msg=f"{criterion} {dtype}")


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", DTYPES)
def test_small_plans_and_chunks(dtype):
    # one tensor of each kind, small enough for compute-sanitizer: BN-like, short, one warp, chunked
    tensors = [_rows(37, 1, dtype, 0).reshape(37), _rows(9, 27, dtype, 1), _rows(5, 300, dtype, 2),
               _rows(3, 5000, dtype, 3)]
    for criterion in ("l1", "l2"):
        got = ops.channel_scores([t.to(DEV) for t in tensors], criterion)
        assert_scores_close(got, R.channel_scores(tensors, criterion), row_len=5000, msg=criterion)
    got = ops.channel_scores([tensors[0].to(DEV)], "abs")
    assert_exact(got, tensors[0].float().abs(), "abs")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1, 2, 3, 5, 7])
def test_storage_offsets(dtype, offset):
    # data_ptr() misaligned by whole elements: a scalar head, then aligned vector loads
    tensors = [_rows(rows, cols, dtype, cols) for cols in (1, 9, 64, 300, 1023, 3000) for rows in (1, 6)]
    got = ops.channel_scores([with_offset(t.to(DEV), offset) for t in tensors], "l2")
    assert_scores_close(got, R.channel_scores(tensors, "l2"), row_len=3000, msg=f"offset {offset}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_more_tensors_than_one_launch_takes(dtype):
    # 48 tensors per table: 130 tensors of mixed plans take three launches (and chunk scratch
    # that continues across them)
    shapes = [(7,), (16, 3, 3, 3), (4, 2048 + 5), (33, 9), (1, 70), (0, 5), (2, 4097)]
    tensors = [_rows(s[0], 1 if len(s) == 1 else int(torch.tensor(s[1:]).prod()), dtype, i).reshape(s)
               for i, s in enumerate(shapes * 19)][:130]
    for criterion in ("l1", "l2"):
        got = ops.channel_scores([t.to(DEV) for t in tensors], criterion)
        assert_scores_close(got, R.channel_scores(tensors, criterion), row_len=4097, msg=criterion)
    bn = [t for t in tensors if t.dim() == 1]
    assert_exact(ops.channel_scores([t.to(DEV) for t in bn * 3], "abs"), R.channel_scores(bn * 3, "abs"), "abs")


def test_long_rows():
    # a 10-row classifier and a 1 x 4M float16 layer: a warp per chunk, then the chunk sums in order
    fc = _rows(10, 20000, torch.float32, 0)
    huge = _rows(1, 4 << 20, torch.float16, 1)
    for criterion in ("l1", "l2"):
        assert_scores_close(ops.channel_scores([fc.to(DEV)], criterion), R.channel_scores([fc], criterion),
                            row_len=20000, msg=f"fc {criterion}")
        got = ops.channel_scores([huge.to(DEV)], criterion)
        assert_scores_close(got, R.channel_scores([huge], criterion), row_len=4 << 20, msg=f"huge {criterion}")


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_values_in_late_chunks(dtype):
    # NaN and inf in the last chunk of their rows, and in the scalar tail after an offset
    t = _rows(4, 5000, dtype, 3)
    t[1, 4990] = float("nan")
    t[2, 4999] = float("inf")
    t[3, 3000] = float("-inf")
    for d in (t.to(DEV), with_offset(t.to(DEV), 1)):
        for criterion in ("l1", "l2"):
            got = ops.channel_scores([d], criterion).cpu()
            assert torch.isfinite(got[0]) and torch.isnan(got[1]) and got[2] == float("inf") and got[3] == float("inf")
            assert_scores_close(got, R.channel_scores([t], criterion), row_len=5000, msg=criterion)


@pytest.mark.large
def test_grid_stride_past_65535_blocks():
    # one-value rows take one lane each: 17 M rows are more warps than 65,535 blocks hold
    rows = 17_000_000
    assert rows / 32 > GRID_STRIDE_WARPS
    x = torch.randn(rows, device=DEV)
    assert_exact(ops.channel_scores([x], "abs"), x.abs(), "abs, 17 M rows")
    l1 = ops.channel_scores([x.reshape(rows, 1)], "l1")
    assert_exact(l1, x.abs(), "l1, 17 M one-value rows")
    # chunked rows: 1100 rows of 1 M float16 are 1100 * 489 chunks, past 524,280 warps too
    w = torch.randn(1100, 1_000_000, device=DEV, dtype=torch.float16)
    assert 1100 * 489 > GRID_STRIDE_WARPS
    got = ops.channel_scores([w], "l2")
    expected = w.float().square().sum(1).sqrt()
    assert_scores_close(got, expected, row_len=1_000_000, msg="l2, 1100 x 1M fp16")


def test_repeats_bit_for_bit():
    tensors = [_rows(512, 4608, torch.float32, 0), _rows(2048, 1, torch.float32, 1).reshape(2048),
               _rows(10, 100_000, torch.bfloat16, 2).float(), _rows(300, 27, torch.float32, 3)]
    on = [t.to(DEV) for t in tensors]
    for criterion in ("l1", "l2"):
        first = ops.channel_scores(on, criterion)
        for _ in range(3):
            assert torch.equal(ops.channel_scores(on, criterion), first), criterion


def test_strided_inputs_are_read_as_their_values():
    base = _rows(64, 40, torch.float32, 5)
    views = [base.t(), base[:, ::3], base[::2]]  # transposed, strided columns, strided rows
    got = ops.channel_scores([v.to(DEV) for v in views], "l2")
    assert_scores_close(got, R.channel_scores(views, "l2"), row_len=64, msg="strided")
    assert_scores_close(got, ops.channel_scores(cpu(views), "l2"), row_len=64, msg="strided vs cpu")
