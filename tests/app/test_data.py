"""Data loaders on small files written by the tests themselves (nothing is downloaded)."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from epi_fast.app.data import DataFormatError, detect_format, load_dataset


def _write_images(root, classes=("cat", "dog"), per_class=6, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")


def _write_cifar(root, n=4, names=None):
    rng = np.random.default_rng(1)
    names = names or [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    os.makedirs(root, exist_ok=True)
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"batch_label": name.encode(),
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def test_digits_split_is_stratified_normalised_and_deterministic():
    a = load_dataset("digits", seed=3)
    b = load_dataset("digits", seed=3)
    c = load_dataset("digits", seed=4)
    assert (len(a.train), len(a.test)) == (1437, 360)
    assert a.num_classes == 10 and a.in_channels == 1 and a.input_size == (8, 8)
    xa, ya = a.train.tensors
    assert xa.shape == (1437, 1, 8, 8) and xa.dtype == torch.float32
    assert abs(float(xa.mean())) < 1e-4 and abs(float(xa.std()) - 1) < 1e-3
    assert torch.equal(xa, b.train.tensors[0]) and torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])
    counts = torch.bincount(a.test.tensors[1], minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # about 36 of each class


def test_imagefolder_single_tree_is_split_and_resized(tmp_path):
    _write_images(tmp_path / "imgs")
    assert detect_format(str(tmp_path / "imgs")) == "imagefolder"
    d = load_dataset(str(tmp_path / "imgs"), input_size=(16, 16), seed=0, test_fraction=0.5)
    assert d.classes == ["cat", "dog"] and d.num_classes == 2 and d.in_channels == 3
    assert len(d.train) == 6 and len(d.test) == 6
    x, y = d.train[0]
    assert x.shape == (3, 16, 16) and y in (0, 1)
    assert sorted(d.test[i][1] for i in range(6)) == [0, 0, 0, 1, 1, 1]


def test_imagefolder_train_val_layout(tmp_path):
    _write_images(tmp_path / "ds" / "train", per_class=3)
    _write_images(tmp_path / "ds" / "val", per_class=2)
    d = load_dataset(str(tmp_path / "ds"), data_format="imagefolder", input_size=[8])
    assert (len(d.train), len(d.test)) == (6, 4)
    assert d.train[0][0].shape == (3, 8, 8) and d.input_size == (8, 8)


def test_imagefolder_mismatched_classes(tmp_path):
    _write_images(tmp_path / "ds" / "train", classes=("a", "b"), per_class=2)
    _write_images(tmp_path / "ds" / "val", classes=("a", "c"), per_class=2)
    with pytest.raises(DataFormatError, match="classes"):
        load_dataset(str(tmp_path / "ds"))


def test_cifar10_batches(tmp_path):
    root = _write_cifar(tmp_path / "cifar-10-batches-py")
    assert detect_format(str(root)) == "cifar10"
    d = load_dataset(str(root))
    assert (len(d.train), len(d.test)) == (20, 4)
    x, y = d.train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y <= 9
    # pixel layout: the first 1024 bytes are the red plane, row-major
    with open(root / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")[b"data"][1]
    expected_red = torch.from_numpy(raw[:1024].reshape(32, 32).astype(np.float32) / 255)
    got_red = d.train[5][0][0] * 0.2470 + 0.4914
    assert torch.allclose(got_red, expected_red, atol=1e-5)
    # the extracted archive's parent directory works too
    assert len(load_dataset(str(tmp_path)).test) == 4


def test_cifar10_errors(tmp_path):
    root = _write_cifar(tmp_path / "partial", names=["data_batch_1", "test_batch"])
    with pytest.raises(FileNotFoundError, match="data_batch_2"):
        load_dataset(str(root))
    bad = _write_cifar(tmp_path / "bad")
    with open(bad / "data_batch_3", "wb") as f:
        pickle.dump({b"images": []}, f)
    with pytest.raises(DataFormatError, match="data_batch_3.*b'data'"):
        load_dataset(str(bad))
    with open(bad / "data_batch_3", "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(DataFormatError, match="data_batch_3"):
        load_dataset(str(bad))
    with pytest.raises(ValueError, match="32x32"):
        load_dataset(str(_write_cifar(tmp_path / "ok")), input_size=(64, 64))


def test_unknown_and_missing_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'digits' nor an existing path"):
        load_dataset(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown data format"):
        load_dataset("digits", data_format="mnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_dataset(str(tmp_path / "empty"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        load_dataset(str(f))
    with pytest.raises(ValueError, match="8x8"):
        load_dataset("digits", input_size=(32, 32))
