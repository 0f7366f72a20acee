"""The settings: digits, its harder variant digits-hard, or a dataset on disk, as whole tensors."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from .config import HARD


class Tensors:
    """A whole split as tensors (x float32 [n, C, H, W], y int64 [n])."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)


def to_tensors(ds) -> Tensors:
    from torch.utils.data import TensorDataset

    if isinstance(ds, TensorDataset):
        return Tensors(ds.tensors[0].float(), ds.tensors[1].long())
    if hasattr(ds, "images") and hasattr(ds, "labels") and hasattr(ds, "mean"):  # CIFAR-10 uint8 batches
        x = ds.images.float().div_(255.0).sub_(ds.mean).div_(ds.std)
        return Tensors(x, ds.labels.long())
    xs, ys = [], []
    for i in range(len(ds)):  # an ImageFolder: decoded once, held in memory
        x, y = ds[i]
        xs.append(x)
        ys.append(int(y))
    return Tensors(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))


def flip_labels(t: Tensors, num_classes: int, rng: np.random.Generator) -> Tuple[Tensors, int]:
    """Each label moved to another class with probability HARD["label_noise"]; (set, flipped)."""
    y = t.y.clone()
    flip = torch.from_numpy(rng.random(len(y)) < HARD["label_noise"])
    shift = torch.from_numpy(rng.integers(1, num_classes, size=len(y)))
    y[flip] = (y[flip] + shift[flip]) % num_classes
    return Tensors(t.x, y), int(flip.sum())


def corrupt(t: Tensors, rng: np.random.Generator) -> Tensors:
    """Gaussian pixel noise and one square occlusion (background value) per image."""
    x = t.x.clone()
    n, _, h, w = x.shape
    x += HARD["pixel_noise"] * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    s = HARD["occlusion"]
    r0 = rng.integers(0, h - s + 1, size=n)
    c0 = rng.integers(0, w - s + 1, size=n)
    bg = float(t.x.min())
    for i in range(n):
        x[i, :, r0[i]:r0[i] + s, c0[i]:c0[i] + s] = bg
    return Tensors(x, t.y)


def load_setting(setting: str, seed: int, train_subset: Optional[int] = None):
    """(train Tensors, test Tensors, num_classes, in_channels, input (H, W), description).

    The split changes with the seed; digits-hard's subset, label flips, noise and occlusions are
    drawn from one generator seeded by the seed, in this order (train, then test)."""
    from epi_fast.app.data import load_dataset

    bundle = load_dataset("digits" if setting in ("digits", "digits-hard") else setting, seed=seed)
    train, test = to_tensors(bundle.train), to_tensors(bundle.test)
    desc = f"{bundle.name}: {len(train)} train / {len(test)} test images, split by seed"
    rng = np.random.default_rng(10_000 + seed)
    subset = train_subset or (HARD["train_subset"] if setting == "digits-hard" else None)
    if subset and subset < len(train):
        idx = torch.from_numpy(np.sort(rng.permutation(len(train))[:subset]))
        train = Tensors(train.x[idx], train.y[idx])
        desc += f"; training subset of {subset}"
    if setting == "digits-hard":
        train, flipped = flip_labels(train, bundle.num_classes, rng)
        train, test = corrupt(train, rng), corrupt(test, rng)
        desc += (f"; {flipped} of {len(train)} training labels flipped ({HARD['label_noise']:.0%}), "
                 f"pixel noise sigma {HARD['pixel_noise']}, one {HARD['occlusion']}x{HARD['occlusion']} "
                 "occlusion per image")
    return train, test, bundle.num_classes, bundle.in_channels, tuple(bundle.input_size), desc
