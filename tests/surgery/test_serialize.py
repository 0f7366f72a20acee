"""Saved pruned models: plain data that loads with weights_only, and rebuilds to the same model."""

from __future__ import annotations

import os
import re

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


# -- format version, files written by 0.1 ---------------------------------------------------------

def test_files_carry_the_format_and_the_writer_version(tmp_path):
    import epi_fast

    model, _ = pruned("resnet_small")
    raw = torch.load(save_pruned(model, tmp_path / "m.pt", arch="resnet_small"), weights_only=True)
    assert raw["format"] == FORMAT == "epi_fast.pruned/1"
    assert raw["epi_fast_version"] == epi_fast.__version__


def _as_written_by_0_1(model, arch):
    # The payload of epi_fast 0.1's save_pruned, key for key: no "epi_fast_version".
    from epi_fast.surgery.serialize import _module_attrs

    modules = {n: _module_attrs(m) for n, m in model.named_modules() if n and _module_attrs(m)}
    channels = {n: (m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels)
                for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))}
    return {"format": "epi_fast.pruned/1", "arch": arch, "channels": channels, "modules": modules,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def test_a_file_written_by_0_1_still_loads(tmp_path):
    model, x = pruned("mobilenet_small")
    arch = {"name": "mobilenet_small", "kwargs": {"num_classes": 10, "in_channels": 1}}
    old = tmp_path / "old.pt"
    torch.save(_as_written_by_0_1(model, arch), old)
    assert "epi_fast_version" not in torch.load(old, weights_only=True)
    loaded = load_pruned(old).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    from epi_fast.surgery.serialize import is_saved_model

    assert is_saved_model(old)


def test_a_newer_format_is_refused_naming_both(tmp_path):
    model, _ = pruned("resnet_small")
    payload = _as_written_by_0_1(model, {"name": "resnet_small", "kwargs": {"in_channels": 1}})
    payload.update(format="epi_fast.pruned/2", epi_fast_version="9.0.0")
    path = tmp_path / "new.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"'epi_fast.pruned/2', written by epi_fast 9.0.0; .* reads 'epi_fast.pruned/1'"):
        load_pruned(path)


# -- bad files: the message says what is wrong with the file ----------------------------------------

class _Pickled:
    pass


def _bad_file(kind, tmp_path):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        model, _ = pruned("resnet_small")
        good = save_pruned(model, tmp_path / "good.pt", arch="resnet_small")
        data = open(good, "rb").read()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(bytes(range(7, 256)) * 4)
    elif kind == "text":
        path.write_text("hello world\n")
    elif kind == "object":
        torch.save(_Pickled(), path)
    elif kind == "module":
        torch.save(torch.nn.Linear(2, 2), path)
    elif kind == "plain_pickle":
        import pickle

        path.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    elif kind == "jit":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated: still a file users have
            torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    elif kind == "other_state_dict":
        torch.save(build_model("densenet_small").state_dict(), path)
    elif kind == "number":
        torch.save(101, path)
    elif kind == "directory":
        path.mkdir()
    return path


BAD_FILES = {
    "empty": r"is empty \(0 bytes\)",
    "truncated": r"is truncated or not a torch file \(\d+ bytes that begin like the zip archive",
    "random": r"is truncated or not a torch file \(996 bytes that are neither",
    "text": r"is a text file, not a torch file \(it begins 'hello world'\)",
    "object": r"is a pickle that is not a plain dict of tensors: it needs [\w.]*_Pickled",
    "module": r"is a pickle that is not a plain dict of tensors: it needs torch.nn.modules.linear.Linear",
    "plain_pickle": r"is a plain Python pickle \(pickle.dump\), not a torch file",
    "jit": r"holds a torch.jit archive",
    "other_state_dict": r"holds a plain state_dict \(\d+ tensors, e.g. 'features.0.weight'\)",
    "number": r"holds an int, not a dict",
    "directory": r"is a directory without model.pt",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_files_are_described(kind, tmp_path):
    path = _bad_file(kind, tmp_path)
    error = FileNotFoundError if kind == "directory" else ValueError
    with pytest.raises(error) as info:
        load_pruned(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert re.search(BAD_FILES[kind], message), message
    if kind != "directory":
        assert "not an epi_fast pruned model" in message
    from epi_fast.surgery.serialize import is_saved_model

    assert not is_saved_model(path)


def test_read_torch_file_names_the_problem_without_the_model_wording(tmp_path):
    from epi_fast.surgery.serialize import TorchFileError, read_torch_file

    with pytest.raises(TorchFileError, match=r"empty.pt is empty \(0 bytes\)$"):
        read_torch_file(_bad_file("empty", tmp_path))
    with pytest.raises(IsADirectoryError):
        read_torch_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_torch_file(tmp_path / "none.pt")


def test_weights_that_do_not_fit_are_summarised_in_one_line(tmp_path):
    model, _ = pruned("resnet_small")
    path = save_pruned(model, tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"do not fit the rebuilt model: 1 of the file's \d+ tensors are not in the model \(e.g. 'extra.weight'\)$"):
        load_pruned(path, model=build_model("resnet_small"))


# -- permissions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_file_follows_the_umask(tmp_path, monkeypatch, umask):
    import stat

    from epi_fast import _io

    model, _ = pruned("resnet_small")
    old = os.umask(umask)
    try:
        monkeypatch.setattr(_io, "_UMASK", None)  # read once per process: forget the test runner's
        path = save_pruned(model, tmp_path / "m.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
