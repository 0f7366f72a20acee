"""Saved pruned models: plain data that loads with weights_only, and rebuilds to the same model."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from epi_fast.models import build_model
from epi_fast.surgery import FORMAT, load_pruned, save_pruned
from epi_fast.surgery import prune
from test_surgery import randomize


def pruned(name, in_channels=1, ratio=0.5, size=8, **kwargs):
    torch.manual_seed(0)
    model = randomize(build_model(name, num_classes=10, in_channels=in_channels, **kwargs))
    x = torch.randn(2, in_channels, size, size)
    prune(model, ratio, x, criterion="l1")
    return model.eval(), x


@pytest.mark.parametrize("name", ["resnet_small", "mobilenet_small", "densenet_small"])
def test_round_trip_gives_identical_outputs(tmp_path, name):
    model, x = pruned(name)
    arch = {"name": name, "kwargs": {"num_classes": 10, "in_channels": 1}}
    path = save_pruned(model, tmp_path / "model.pt", arch=arch)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["arch"] == arch
    assert raw["channels"]["fc" if name == "resnet_small" else "classifier"] == 10
    assert set(raw["state_dict"]) == set(model.state_dict())
    loaded = load_pruned(path).eval()
    assert [p.shape for p in loaded.parameters()] == [p.shape for p in model.parameters()]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_torchvision_model_round_trip_into_a_given_dense_instance(tmp_path):
    torch.manual_seed(0)
    model = randomize(torchvision.models.mobilenet_v3_small(weights=None, num_classes=5))
    x = torch.randn(1, 3, 32, 32)
    prune(model, 0.4, x)
    model.eval()
    path = save_pruned(model, tmp_path)  # a directory: model.pt inside it
    assert os.path.basename(path) == "model.pt"
    dense = torchvision.models.mobilenet_v3_small(weights=None, num_classes=5)
    loaded = load_pruned(tmp_path, model=dense).eval()
    assert loaded is dense
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    model, _ = pruned("resnet_small")
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_pruned(model, target, arch="resnet_small")
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.pt"]


def test_missing_file_and_wrong_format_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load_pruned(tmp_path / "nope.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not an epi_fast pruned model"):
        load_pruned(other, model=build_model("resnet_small"))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not an epi_fast pruned model"):
        load_pruned(junk)


def test_file_without_arch_needs_a_model(tmp_path):
    model, _ = pruned("resnet_small")
    path = save_pruned(model, tmp_path / "m.pt")
    with pytest.raises(ValueError, match="model="):
        load_pruned(path)


def test_wrong_architecture_is_reported(tmp_path):
    model, _ = pruned("resnet_small")
    path = save_pruned(model, tmp_path / "m.pt", arch="resnet_small")
    with pytest.raises(ValueError, match="wrong arch"):
        load_pruned(path, model=build_model("densenet_small"))


def test_arch_kwargs_must_be_plain_data(tmp_path):
    model, _ = pruned("resnet_small")
    with pytest.raises(TypeError, match="plain"):
        save_pruned(model, tmp_path / "m.pt", arch={"name": "resnet_small", "kwargs": {"act": torch.nn.ReLU}})
