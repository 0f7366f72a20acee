"""Data sets for the training job: the embedded digits, an ImageFolder tree, CIFAR-10 batches.

Nothing is downloaded. `load_dataset(spec, ...)` returns a `DataBundle` (train and test
datasets of `(image float32 [C,H,W], label int)` pairs plus their shape and class count).

- `"digits"`: scikit-learn's 1,797 real 8x8 handwritten digits (ships with the package), one
  channel, scaled to [0, 1] and standardised with the training split's mean and std; a
  stratified train/test split that depends only on the seed.
- An ImageFolder directory: either `root/train/<class>/...` beside `root/val/<class>/...` (or
  `test/`), or class folders directly under `root`, split stratified by the seed. Images are
  resized to `input_size` and normalised with the ImageNet statistics.
- A CIFAR-10 "python version" directory (`data_batch_1..5`, `test_batch`; the directory itself
  or one holding `cifar-10-batches-py/`). These files are pickles: only open ones you trust.

Errors: `FileNotFoundError` for a path or file that is not there, `ValueError` for a spec or
option that cannot be used (both name the problem), `DataFormatError` for files that are
there but are not what their format promises.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = ["DataBundle", "DataFormatError", "load_dataset", "detect_format", "FORMATS"]

FORMATS = ("auto", "digits", "imagefolder", "cifar10")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST = "test_batch"


class DataFormatError(ValueError):
    """Files exist but do not hold what their format promises."""


@dataclass
class DataBundle:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_size: Tuple[int, int]
    classes: List[str]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, self.in_channels, *self.input_size)


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction!r}")
    idx = np.arange(len(labels))
    try:
        train_idx, test_idx = train_test_split(
            idx, test_size=test_fraction, random_state=seed, stratify=labels, shuffle=True
        )
    except ValueError as e:  # too few samples of a class to stratify
        raise DataFormatError(f"cannot split {len(labels)} samples into train and test stratified by class: {e}") from None
    return np.sort(train_idx), np.sort(test_idx)


# -- digits ---------------------------------------------------------------------------------------

def _digits(seed: int, test_fraction: float) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8] in [0, 1]
    y = torch.from_numpy(d.target.astype(np.int64))
    train_idx, test_idx = _stratified_split(d.target, test_fraction, seed)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    # Statistics from the training split only, so the test set stays held out.
    mean = x[train_idx].mean()
    std = x[train_idx].std().clamp_min(1e-6)
    x = (x - mean) / std
    return DataBundle(
        name="digits",
        train=TensorDataset(x[train_idx], y[train_idx]),
        test=TensorDataset(x[test_idx], y[test_idx]),
        num_classes=10,
        in_channels=1,
        input_size=(8, 8),
        classes=[str(i) for i in range(10)],
    )


# -- CIFAR-10 python batches ---------------------------------------------------------------------

class _UInt8Images(Dataset):
    """Images kept as uint8 [N, C, H, W] (4x smaller than float) and normalised per item."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        self.images = images
        self.labels = labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].to(torch.float32).div_(255.0)
        return (x - self.mean) / self.std, int(self.labels[i])


def _cifar_dir(root: str) -> Optional[str]:
    for d in (root, os.path.join(root, "cifar-10-batches-py")):
        if os.path.isfile(os.path.join(d, _CIFAR10_TRAIN[0])) or os.path.isfile(os.path.join(d, _CIFAR10_TEST)):
            return d
    return None


def _read_cifar_batch(path: str) -> Tuple[np.ndarray, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR-10 batch file is missing: {path}")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
    except Exception as e:
        raise DataFormatError(f"{path} is not a readable CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise DataFormatError(f"{path} is not a CIFAR-10 batch: expected keys b'data' and b'labels', found {keys}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFormatError(f"{path}: b'data' must be uint8 [n, 3072], got {data.dtype} {list(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise DataFormatError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"{path}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return data, labels


def _cifar10(root: str) -> DataBundle:
    d = _cifar_dir(root)
    if d is None:
        raise FileNotFoundError(f"no CIFAR-10 python batches (data_batch_1..5, test_batch) in {root}")
    missing = [n for n in _CIFAR10_TRAIN + (_CIFAR10_TEST,) if not os.path.isfile(os.path.join(d, n))]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 directory {d} lacks {', '.join(missing)}")

    def load(names):
        parts = [_read_cifar_batch(os.path.join(d, n)) for n in names]
        x = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
        y = np.concatenate([p[1] for p in parts])
        return _UInt8Images(torch.from_numpy(x), torch.from_numpy(y), _CIFAR10_MEAN, _CIFAR10_STD)

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta = os.path.join(d, "batches.meta")
    if os.path.isfile(meta):
        try:
            with open(meta, "rb") as f:
                names = pickle.load(f, encoding="bytes").get(b"label_names")
            if names and len(names) == 10:
                classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except Exception:
            pass  # the names are cosmetic; the batches themselves were validated
    return DataBundle("cifar10", load(_CIFAR10_TRAIN), load([_CIFAR10_TEST]), 10, 3, (32, 32), classes)


# -- ImageFolder ---------------------------------------------------------------------------------

def _has_class_dirs(path: str) -> bool:
    return os.path.isdir(path) and any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(path))


def _image_folder(root: str, input_size: Tuple[int, int], seed: int, test_fraction: float) -> DataBundle:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Resize(tuple(input_size)),
            transforms.ToTensor(),
            transforms.Normalize(_IMAGENET_MEAN, _IMAGENET_STD),
        ]
    )

    def folder(path):
        try:
            return datasets.ImageFolder(path, transform=tf)
        except FileNotFoundError as e:  # torchvision's message for an empty class folder
            raise DataFormatError(f"ImageFolder {path}: {e}") from None

    train_dir = os.path.join(root, "train")
    test_dir = next((os.path.join(root, n) for n in ("val", "test") if _has_class_dirs(os.path.join(root, n))), None)
    if _has_class_dirs(train_dir) and test_dir is not None:
        train, test = folder(train_dir), folder(test_dir)
        if train.classes != test.classes:
            raise DataFormatError(
                f"ImageFolder {root}: train classes {train.classes} differ from {os.path.basename(test_dir)} classes {test.classes}"
            )
        classes = train.classes
    else:
        full = folder(root)
        train_idx, test_idx = _stratified_split(np.asarray(full.targets), test_fraction, seed)
        train, test = Subset(full, train_idx.tolist()), Subset(full, test_idx.tolist())
        classes = full.classes
    if len(classes) < 2:
        raise DataFormatError(f"ImageFolder {root} has {len(classes)} class folder(s); classification needs at least 2")
    return DataBundle("imagefolder", train, test, len(classes), 3, tuple(input_size), classes)


# -- entry point -----------------------------------------------------------------------------------

def detect_format(spec: str) -> str:
    """'digits', 'cifar10' or 'imagefolder' for a --data value; raises naming what is wrong."""
    if spec == "digits":
        return "digits"
    if not os.path.exists(spec):
        raise FileNotFoundError(
            f"data {spec!r} is neither 'digits' nor an existing path (an ImageFolder or CIFAR-10 python batches directory)"
        )
    if not os.path.isdir(spec):
        raise ValueError(f"data path {spec} is a file; expected an ImageFolder or CIFAR-10 python batches directory")
    if _cifar_dir(spec) is not None:
        return "cifar10"
    if _has_class_dirs(spec):
        return "imagefolder"
    raise ValueError(
        f"cannot tell the format of {spec}: no CIFAR-10 batches (data_batch_1, test_batch) and no class sub-directories"
    )


def load_dataset(
    spec: str = "digits",
    data_format: str = "auto",
    input_size: Optional[Sequence[int]] = None,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> DataBundle:
    """Load `spec` ('digits' or a directory) as train/test datasets.

    `input_size` (H, W) applies to ImageFolder only (default 32x32); digits are 8x8 and
    CIFAR-10 32x32 by definition, so asking for another size there is an error rather than a
    silent resize.
    """
    if data_format not in FORMATS:
        raise ValueError(f"unknown data format {data_format!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(spec) if data_format == "auto" else data_format
    if fmt != "digits" and not os.path.isdir(spec):
        raise FileNotFoundError(f"data directory {spec} does not exist")
    if input_size is not None:
        input_size = tuple(int(s) for s in input_size)
        if len(input_size) == 1:
            input_size = input_size * 2
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input size must be one or two positive integers, got {input_size}")
    if fmt == "digits":
        if spec != "digits":
            raise ValueError(f"data format 'digits' takes --data digits, got {spec!r}")
        if input_size not in (None, (8, 8)):
            raise ValueError(f"digits are 8x8 images; input size {input_size} is not supported")
        return _digits(seed, test_fraction)
    if fmt == "cifar10":
        if input_size not in (None, (32, 32)):
            raise ValueError(f"CIFAR-10 images are 32x32; input size {input_size} is not supported")
        return _cifar10(spec)
    return _image_folder(spec, input_size or (32, 32), seed, test_fraction)
