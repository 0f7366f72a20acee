"""The embedded detection set: canvases of scikit-learn's handwritten digits, with boxes.

Nothing is downloaded. scikit-learn ships 1,797 real 8x8 digit images (values 0..16); a canvas
is a black S x S image holding `min_digits..max_digits` of them, each upscaled (bilinear) by
its own randomly drawn factor and placed at a random whole-pixel position, brighter pixel
winning where two overlap. Each digit's box is the smallest pixel-aligned rectangle holding
every pixel of that digit brighter than `INK_THRESHOLD`, in xyxy pixel coordinates (pixel
(x, y) spans [x, x + 1) x [y, y + 1), torchvision's convention); its label is the digit + 1,
since label 0 is the background in torchvision's detectors.

A digit is placed only where its box overlaps every box already placed by at most
`max_overlap` of the smaller box's area, so no digit is hidden behind another and every box
still frames one digit. A digit that finds no such place in `max_tries` draws is left out; a
canvas that ends with fewer than `min_digits` digits is an error of the settings (too many or
too large digits for the canvas), never reached with the defaults.

Determinism: canvas i is drawn from its own random stream, seeded by (seed, stream, i), with
numpy's PCG64 and rendered by CPU PyTorch operations whose result does not depend on the
thread count, so the same arguments give bitwise-equal tensors in every call and process, and
the first n canvases of a larger set are the n canvases of a smaller one.

Items follow torchvision's detection convention: `(image, target)` with image float32
[3, S, S] in [0, 1] (the grey value in all three channels, as the ResNet backbones expect three)
and target `{"boxes": float32 [N, 4] xyxy, "labels": int64 [N]}`; `detection_collate` batches
them as lists.
"""

from __future__ import annotations

import functools
import numbers
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._args import check_int, check_unit

__all__ = [
    "DetectionDataset", "DetectionSubset", "DigitCanvasDataset", "make_digit_canvases", "digit_detection_splits",
    "detection_collate", "CANVAS_DEFAULTS", "DIGIT_CLASS_NAMES", "DIGIT_SOURCE_COUNT", "INK_THRESHOLD",
]

DIGIT_CLASS_NAMES = tuple(str(d) for d in range(10))
# scikit-learn's load_digits() holds this many images; the splits divide them.
DIGIT_SOURCE_COUNT = 1797
# A pixel belongs to a digit's box when its value (in [0, 1]) exceeds this. Bilinear upscaling
# spreads a faint fringe around every stroke; a quarter of full ink keeps that fringe (and the
# faintest strokes of the 0..16 originals, 1/16 to 3/16) out of the box.
INK_THRESHOLD = 0.25
_SOURCE_SIDE = 8
# Streams of the canvas generator: one for make_digit_canvases, one per split.
_STREAM_CANVASES, _STREAM_POOLS = 0, 1
_SPLITS = ("train", "val", "test")
# The canvas options and their defaults, shared by make_digit_canvases and the splits.
CANVAS_DEFAULTS = {"min_digits": 1, "max_digits": 4, "scale": (1.5, 3.0), "max_overlap": 0.1, "max_tries": 50}
_STREAM_SPLIT = {name: 2 + k for k, name in enumerate(_SPLITS)}


class DetectionDataset(Dataset):
    """A detection data set: items `(image float32 [3, H, W] in [0, 1], {"boxes", "labels"})`.

    `class_names[k - 1]` names label k (labels run 1..K); `num_classes` is K + 1, the count
    torchvision's detectors take (label 0 is the background). `image_size` is `(H, W)` when
    every image has that size, else None. Subclasses provide `image(i)`; `target(i)` reads the
    boxes without loading the image.
    """

    def __init__(self, targets: Sequence[Dict[str, torch.Tensor]], class_names: Sequence[str],
                 image_size: Optional[Tuple[int, int]] = None, name: str = "detection"):
        self._targets = list(targets)
        self.class_names = tuple(class_names)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.class_names) + 1

    def __len__(self) -> int:
        return len(self._targets)

    def _index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"{self.name} index must be an integer, got {i!r}")
        n = len(self._targets)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"{self.name} index {i} is out of range for {n} images")
        return j

    def image(self, i: int) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define image(i), the float32 [3, H, W] image i")

    def target(self, i: int) -> Dict[str, torch.Tensor]:
        # Copies: a caller (or a transform) that edits a target in place must not edit the set.
        t = self._targets[self._index(i)]
        return {"boxes": t["boxes"].clone(), "labels": t["labels"].clone()}

    def __getitem__(self, i: int):
        return self.image(i), self.target(i)

    def __repr__(self) -> str:
        size = "x".join(map(str, self.image_size)) if self.image_size else "mixed size"
        return f"{type(self).__name__}({self.name!r}, {len(self)} images, {size}, {len(self.class_names)} classes)"


class DetectionSubset(DetectionDataset):
    """The images `indices` of a `DetectionDataset` (in that order), with its classes: a part
    of one data set that is still a detection data set (`num_classes`, `class_names`,
    `image_size`, `target(i)`)."""

    def __init__(self, dataset: DetectionDataset, indices: Sequence[int], name: Optional[str] = None):
        indices = [dataset._index(i) for i in indices]
        super().__init__([dataset.target(i) for i in indices], dataset.class_names, None,
                         name or f"{dataset.name}[{len(indices)} images]")
        self.dataset = dataset
        self.indices = tuple(indices)
        sizes = getattr(dataset, "sizes", None)  # a COCO set's per-image (height, width)
        if sizes is not None:
            distinct = {sizes[i] for i in indices}
            self.image_size = next(iter(distinct)) if len(distinct) == 1 else None
        else:
            self.image_size = dataset.image_size

    def image(self, i: int) -> torch.Tensor:
        return self.dataset.image(self.indices[self._index(i)])


class DigitCanvasDataset(DetectionDataset):
    """Digit canvases held in memory (grey float32 [n, S, S]), made by `make_digit_canvases`.

    Beside the items: `images` (the grey canvases), `sources[i]` (the scikit-learn index of
    each digit of canvas i, in the order of its boxes) and `source_pool` (the sorted indices
    the canvases could draw from).
    """

    def __init__(self, images: torch.Tensor, targets, sources: Sequence[Tuple[int, ...]],
                 source_pool: Sequence[int], name: str):
        super().__init__(targets, DIGIT_CLASS_NAMES, tuple(images.shape[-2:]), name)
        self.images = images
        self.sources = [tuple(s) for s in sources]
        self.source_pool = tuple(int(s) for s in source_pool)

    def image(self, i: int) -> torch.Tensor:
        return self.images[self._index(i)].unsqueeze(0).repeat(3, 1, 1)

    def used_sources(self) -> set:
        """Every scikit-learn index that some canvas shows."""
        return {s for canvas in self.sources for s in canvas}


def detection_collate(batch):
    """`(list of images, list of targets)`: what torchvision's detectors take (images may
    differ in size, so they are not stacked)."""
    images, targets = [], []
    for image, target in batch:
        images.append(image)
        targets.append(target)
    return images, targets


@functools.lru_cache(maxsize=1)
def _digit_images() -> Tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    if images.shape != (DIGIT_SOURCE_COUNT, _SOURCE_SIDE, _SOURCE_SIDE):
        raise RuntimeError(f"scikit-learn's digits have shape {tuple(images.shape)}, expected "
                           f"({DIGIT_SOURCE_COUNT}, 8, 8)")
    return images, d.target.astype(np.int64)


def _check_scale(scale, size: int) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a pair of numbers (low, high), got {scale!r}") from None
    if not (0.5 <= lo <= hi) or not np.isfinite(hi):
        raise ValueError(f"scale must satisfy 0.5 <= low <= high, got {scale!r}")
    if round(_SOURCE_SIDE * hi) > size:
        raise ValueError(f"scale {scale!r} makes digits up to {round(_SOURCE_SIDE * hi)} px, larger than the "
                         f"{size} px canvas")
    return lo, hi


def _check_sources(sources) -> np.ndarray:
    if sources is None:
        return np.arange(DIGIT_SOURCE_COUNT, dtype=np.int64)
    pool = np.asarray(list(sources))
    if pool.size == 0:
        raise ValueError("sources must name at least one scikit-learn digit image")
    if pool.ndim != 1 or not np.issubdtype(pool.dtype, np.integer):
        raise TypeError(f"sources must be a sequence of integer image indices, got dtype {pool.dtype}")
    if pool.min() < 0 or pool.max() >= DIGIT_SOURCE_COUNT:
        raise ValueError(f"sources must be indices in 0..{DIGIT_SOURCE_COUNT - 1}, got {pool.min()}..{pool.max()}")
    if len(np.unique(pool)) != len(pool):
        raise ValueError("sources holds an index more than once")
    return np.sort(pool.astype(np.int64))


def _ink_box(patch: torch.Tensor) -> Tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the pixels above INK_THRESHOLD, end-exclusive."""
    ink = patch > INK_THRESHOLD
    cols = torch.nonzero(ink.any(0)).flatten()
    rows = torch.nonzero(ink.any(1)).flatten()
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap_ok(box, placed, max_overlap: float) -> bool:
    x0, y0, x1, y1 = box
    area = (x1 - x0) * (y1 - y0)
    for a0, b0, a1, b1 in placed:
        inter = max(0, min(x1, a1) - max(x0, a0)) * max(0, min(y1, b1) - max(y0, b0))
        if inter > max_overlap * min(area, (a1 - a0) * (b1 - b0)):
            return False
    return True


def _render(n: int, entropy: Tuple[int, int], pool: np.ndarray, size: int, min_digits: int, max_digits: int,
            scale: Tuple[float, float], max_overlap: float, max_tries: int, name: str) -> DigitCanvasDataset:
    digits, digit_labels = _digit_images()
    images = torch.zeros(n, size, size, dtype=torch.float32)
    targets, sources = [], []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence((*entropy, i)))
        canvas = images[i]
        boxes, labels, used = [], [], []
        for _ in range(int(rng.integers(min_digits, max_digits + 1))):
            src = int(pool[rng.integers(len(pool))])
            side = max(1, int(round(_SOURCE_SIDE * rng.uniform(scale[0], scale[1]))))
            patch = F.interpolate(digits[src][None, None], size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0]
            bx0, by0, bx1, by1 = _ink_box(patch)
            for _ in range(max_tries):
                ox, oy = (int(v) for v in rng.integers(0, size - side + 1, size=2))
                box = (ox + bx0, oy + by0, ox + bx1, oy + by1)
                if _overlap_ok(box, boxes, max_overlap):
                    region = canvas[oy:oy + side, ox:ox + side]
                    torch.maximum(region, patch, out=region)
                    boxes.append(box)
                    labels.append(int(digit_labels[src]) + 1)
                    used.append(src)
                    break
        if len(boxes) < min_digits:
            raise ValueError(f"canvas {i} of {name} holds only {len(boxes)} digit(s) after {max_tries} tries each, "
                             f"fewer than min_digits={min_digits}: the digits are too many or too large for a "
                             f"{size} px canvas with max_overlap={max_overlap}")
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
        sources.append(tuple(used))
    return DigitCanvasDataset(images, targets, sources, pool.tolist(), name)


def _make(n, seed, size, min_digits, max_digits, scale, max_overlap, max_tries, sources, stream, name, n_name="n"):
    n = check_int(n, n_name, 1)
    seed = check_int(seed, "seed", 0)
    size = check_int(size, "size", _SOURCE_SIDE)
    min_digits = check_int(min_digits, "min_digits", 1)
    max_digits = check_int(max_digits, "max_digits", 1)
    if max_digits < min_digits:
        raise ValueError(f"max_digits ({max_digits}) must be >= min_digits ({min_digits})")
    scale = _check_scale(scale, size)
    max_overlap = check_unit(max_overlap, "max_overlap", low_open=False, high_open=False)
    max_tries = check_int(max_tries, "max_tries", 1)
    pool = _check_sources(sources)
    return _render(n, (seed, stream), pool, size, min_digits, max_digits, scale, max_overlap, max_tries, name)


def make_digit_canvases(n: int, seed: int, size: int = 64, min_digits: int = CANVAS_DEFAULTS["min_digits"],
                        max_digits: int = CANVAS_DEFAULTS["max_digits"],
                        scale: Tuple[float, float] = CANVAS_DEFAULTS["scale"],
                        max_overlap: float = CANVAS_DEFAULTS["max_overlap"],
                        max_tries: int = CANVAS_DEFAULTS["max_tries"],
                        sources: Optional[Sequence[int]] = None) -> DigitCanvasDataset:
    """`n` canvases of `size` x `size` pixels, each holding `min_digits..max_digits` digits
    (uniform), each digit upscaled by a factor drawn uniformly from `scale` (8 px originals:
    the defaults give 12 to 24 px digits).

    `sources`: the scikit-learn image indices to draw digits from (default: all 1,797).
    `max_overlap`: the largest fraction of the smaller of two boxes that they may share.
    `max_tries`: positions drawn for a digit before it is left out.
    Same arguments, same tensors (bitwise), in any process.
    """
    return _make(n, seed, size, min_digits, max_digits, scale, max_overlap, max_tries, sources,
                 _STREAM_CANVASES, f"digit-canvases(seed={seed})")


def _source_pools(seed: int, fractions: Tuple[float, float, float]) -> List[np.ndarray]:
    """The 1,797 source images split three ways, per digit class (so every split holds every
    digit in the same proportion), shuffled by the seed."""
    _, digit_labels = _digit_images()
    rng = np.random.default_rng(np.random.SeedSequence((seed, _STREAM_POOLS)))
    pools: List[List[int]] = [[], [], []]
    for c in range(10):
        members = rng.permutation(np.flatnonzero(digit_labels == c))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        for k, part in enumerate((members[:n_train], members[n_train:n_train + n_val], members[n_train + n_val:])):
            pools[k].extend(int(v) for v in part)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in pools]


def digit_detection_splits(seed: int = 0, size: int = 64, n_train: int = 2000, n_val: int = 300,
                           n_test: int = 500, source_split: Tuple[float, float, float] = (0.6, 0.15, 0.25),
                           **canvas_options) -> Tuple[DigitCanvasDataset, DigitCanvasDataset, DigitCanvasDataset]:
    """(train, val, test) digit canvases whose source images are disjoint.

    scikit-learn's 1,797 images are first divided by `seed` into three pools in the
    proportions `source_split` (per digit class); each split's canvases draw only from its own
    pool, so no handwritten digit of the test canvases was seen in training. `canvas_options`
    are `make_digit_canvases`'s (`min_digits`, `max_digits`, `scale`, `max_overlap`,
    `max_tries`).
    """
    seed = check_int(seed, "seed", 0)
    unknown = set(canvas_options) - set(CANVAS_DEFAULTS)
    if unknown:
        raise TypeError(f"digit_detection_splits() got unknown option(s) {', '.join(sorted(unknown))}")
    try:
        fractions = tuple(float(f) for f in source_split)
    except (TypeError, ValueError):
        raise TypeError(f"source_split must be three fractions (train, val, test), got {source_split!r}") from None
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"source_split must be three positive fractions adding up to 1, got {source_split!r}")
    options = {**CANVAS_DEFAULTS, **canvas_options}
    # Every count checked before the first split is drawn.
    counts = {split: check_int(n, f"n_{split}", 1) for split, n in zip(_SPLITS, (n_train, n_val, n_test))}
    pools = _source_pools(seed, fractions)
    return tuple(
        _make(counts[split], seed, size, sources=pool, stream=_STREAM_SPLIT[split],
              name=f"digit-canvases/{split}(seed={seed})", n_name=f"n_{split}", **options)
        for split, pool in zip(_SPLITS, pools)
    )
