"""The embedded digit-canvas detection set: determinism, disjoint splits, boxes that frame
their digit's ink, labels, and the checks of its arguments."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from epi_fast.detection import data as D
from epi_fast.detection import detection_collate, digit_detection_splits, make_digit_canvases

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _digest(ds) -> str:
    h = hashlib.sha256(ds.images.numpy().tobytes())
    for i in range(len(ds)):
        t = ds.target(i)
        h.update(t["boxes"].numpy().tobytes())
        h.update(t["labels"].numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def splits():
    return digit_detection_splits(seed=0)


@pytest.fixture(scope="module")
def canvases():
    return make_digit_canvases(300, seed=5)


def test_same_seed_same_tensors_other_seed_differs():
    a = make_digit_canvases(40, seed=11)
    b = make_digit_canvases(40, seed=11)
    c = make_digit_canvases(40, seed=12)
    assert torch.equal(a.images, b.images)
    for i in range(40):
        assert torch.equal(a.target(i)["boxes"], b.target(i)["boxes"])
        assert torch.equal(a.target(i)["labels"], b.target(i)["labels"])
    assert a.sources == b.sources
    assert not torch.equal(a.images, c.images)
    # A larger set starts with the smaller one: canvas i has its own random stream.
    big = make_digit_canvases(60, seed=11)
    assert torch.equal(big.images[:40], a.images) and big.sources[:40] == a.sources


def test_bitwise_equal_in_another_process():
    ours = _digest(make_digit_canvases(50, seed=3))
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        sys.path.insert(0, sys.argv[2])
        from test_digit_canvases import _digest
        from epi_fast.detection import make_digit_canvases
        print(_digest(make_digit_canvases(50, seed=3)))
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code, ROOT, os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ours


def test_splits_have_disjoint_sources_and_their_sizes(splits):
    train, val, test = splits
    assert (len(train), len(val), len(test)) == (2000, 300, 500)
    pools = [set(s.source_pool) for s in splits]
    assert not (pools[0] & pools[1]) and not (pools[0] & pools[2]) and not (pools[1] & pools[2])
    assert len(pools[0] | pools[1] | pools[2]) == D.DIGIT_SOURCE_COUNT
    _, digit_labels = D._digit_images()
    for ds, pool, share in zip(splits, pools, (0.6, 0.15, 0.25)):
        assert ds.used_sources() <= pool
        assert abs(len(pool) / D.DIGIT_SOURCE_COUNT - share) < 0.01
        assert set(digit_labels[sorted(pool)]) == set(range(10))  # every digit in every split
    again = digit_detection_splits(seed=0, n_train=5, n_val=5, n_test=5)
    assert [a.source_pool for a in again] == [s.source_pool for s in splits]
    assert torch.equal(again[0].images, train.images[:5])
    other = digit_detection_splits(seed=1, n_train=5, n_val=5, n_test=5)
    assert other[2].source_pool != test.source_pool


def test_items_follow_torchvision_convention(canvases):
    ds = canvases
    assert ds.num_classes == 11 and ds.class_names == tuple("0123456789") and ds.image_size == (64, 64)
    image, target = ds[7]
    assert image.dtype == torch.float32 and image.shape == (3, 64, 64)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    # Items are copies: editing one leaves the set as it was.
    target["boxes"].zero_()
    image.zero_()
    assert ds.target(7)["boxes"].abs().sum() > 0 and ds.images[7].sum() > 0
    images, targets = next(iter(DataLoader(ds, batch_size=4, collate_fn=detection_collate)))
    assert isinstance(images, list) and len(images) == 4 and isinstance(targets, list)
    assert torch.equal(targets[2]["labels"], ds.target(2)["labels"])


def test_boxes_inside_tight_and_labelled_by_their_digit(canvases):
    ds = canvases
    _, digit_labels = D._digit_images()
    counts = []
    for i in range(len(ds)):
        t = ds.target(i)
        boxes, labels = t["boxes"], t["labels"]
        counts.append(len(labels))
        canvas = ds.images[i]
        ink = canvas > D.INK_THRESHOLD
        covered = torch.zeros_like(ink)
        assert labels.min() >= 1 and labels.max() <= 10
        assert labels.tolist() == [int(digit_labels[s]) + 1 for s in ds.sources[i]]
        for x0, y0, x1, y1 in boxes.to(torch.int64).tolist():
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            inside = ink[y0:y1, x0:x1]
            # Tight: every edge row and column of the box holds ink.
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y0:y1, x0:x1] = True
        assert torch.equal(boxes, boxes.round())  # whole pixels
        assert not (ink & ~covered).any(), f"canvas {i}: ink outside every box"
        # Overlap limit between every pair of boxes.
        b = boxes.tolist()
        for p in range(len(b)):
            for q in range(p + 1, len(b)):
                w = max(0.0, min(b[p][2], b[q][2]) - max(b[p][0], b[q][0]))
                h = max(0.0, min(b[p][3], b[q][3]) - max(b[p][1], b[q][1]))
                area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
                assert w * h <= 0.1 * min(area(b[p]), area(b[q])) + 1e-9
    assert min(counts) >= 1 and max(counts) <= 4
    assert set(counts) == {1, 2, 3, 4}
    all_labels = torch.cat([ds.target(i)["labels"] for i in range(len(ds))])
    assert set(all_labels.tolist()) == set(range(1, 11))


def test_digit_count_and_scale_options():
    ds = make_digit_canvases(30, seed=2, size=48, min_digits=2, max_digits=2, scale=(2.0, 2.0))
    assert ds.images.shape == (30, 48, 48)
    for i in range(30):
        boxes = ds.target(i)["boxes"]
        assert len(boxes) == 2
        heights = boxes[:, 3] - boxes[:, 1]
        # A 16 px patch; the originals fill all 8 rows, so the box is nearly all of it.
        assert heights.max() <= 16 and heights.min() >= 13


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(n=0, seed=0), ValueError, "n must be"),
    (dict(n=2, seed=-1), ValueError, "seed must be"),
    (dict(n=2, seed=1.5), TypeError, "seed must be"),
    (dict(n=2, seed=0, min_digits=3, max_digits=2), ValueError, "max_digits"),
    (dict(n=2, seed=0, size=16, scale=(1.5, 3.0)), ValueError, "larger than the 16 px canvas"),
    (dict(n=2, seed=0, scale=(3.0, 2.0)), ValueError, "scale must satisfy"),
    (dict(n=2, seed=0, scale="big"), TypeError, "scale must be a pair"),
    (dict(n=2, seed=0, max_overlap=1.5), ValueError, "max_overlap"),
    (dict(n=2, seed=0, sources=[1, 1]), ValueError, "more than once"),
    (dict(n=2, seed=0, sources=[5000]), ValueError, "indices in 0..1796"),
    (dict(n=2, seed=0, sources=[]), ValueError, "at least one"),
    (dict(n=3, seed=0, size=16, min_digits=3, max_digits=3, scale=(2.0, 2.0), max_overlap=0.0), ValueError,
     "fewer than min_digits=3"),
])
def test_bad_arguments_name_the_problem(kwargs, error, words):
    with pytest.raises(error, match=words) as e:
        make_digit_canvases(**kwargs)
    assert "\n" not in str(e.value)


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="adding up to 1"):
        digit_detection_splits(source_split=(0.5, 0.2, 0.2))
    with pytest.raises(TypeError, match="unknown option"):
        digit_detection_splits(colour=True)
    with pytest.raises(ValueError, match="n_val must be"):
        digit_detection_splits(n_val=0)


def test_sources_restrict_the_digits():
    pool = np.arange(0, 1797, 7)
    ds = make_digit_canvases(40, seed=4, sources=pool)
    assert ds.used_sources() <= set(pool.tolist())
    assert ds.source_pool == tuple(pool.tolist())
