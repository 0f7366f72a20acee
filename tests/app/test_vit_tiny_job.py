"""`epi-fast train --model vit_tiny`: the in-repo vision transformer on the digits, its heads and
MLP channels tracked and pruned, the saved model rebuilt by name; the optimizer option."""

import argparse
import json
import os

import pytest
import torch

from epi_fast import group_layout, load_pruned
from epi_fast.app.cli import main
from epi_fast.app.training import fill_defaults
from epi_fast.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TINY = ["--model", "vit_tiny", "--epochs", "4", "--window", "2", "--patience", "1", "--batch-size", "128", "--no-progress"]


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_vit_tiny_is_a_torchvision_vit_with_heads_and_mlp_groups():
    import torchvision

    model = build_model("vit_tiny", num_classes=10, in_channels=1)
    assert isinstance(model, torchvision.models.VisionTransformer)
    assert model.conv_proj.in_channels == 1 and model.patch_size == 2 and model.hidden_dim == 64
    assert len(model.encoder.layers) == 4
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    layout = group_layout(model, torch.zeros(1, 1, 8, 8))
    assert [g.kind for g in layout.groups] == ["heads", "mlp"] * 4
    assert [g.size for g in layout.groups] == [4, 128] * 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit") / "run"
    assert main(["train", "--out", str(out), *TINY, "--deadline-epoch", "3", "--seed", "1"]) == 0
    return out


def test_the_train_job_prunes_heads_and_mlp_channels(run):
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "epi_curve.png", "metrics.jsonl", "model.pt", "summary.json"]
    s = json.loads((run / "summary.json").read_text())
    assert s["task"] == "classify" and s["model"] == "vit_tiny" and s["optimizer"] == "sgd"
    assert s["prune_reason"] in ("epi", "deadline") and 2 <= s["prune_epoch"] <= 3
    assert 0 < s["params_after"] < s["params_before"] and 0 < s["flops_after"] < s["flops_before"]
    # The structure vector: kept query heads and kept MLP channels of each of the 4 layers.
    kept = s["kept_counts"]
    assert len(kept) == 8
    heads, mlp = list(kept.values())[0::2], list(kept.values())[1::2]
    assert all(1 <= h <= 4 for h in heads) and sum(heads) == 8  # half of the 16 heads
    assert all(13 <= c <= 128 for c in mlp) and sum(mlp) == 256  # half of the 512 channels, >= 10% per layer
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["train_top1"] > 0.3  # it learns (10 classes: 0.1 by chance)
    assert 0.0 <= s["top1_final"] <= 1.0


def test_model_pt_rebuilds_vit_tiny_by_name(run):
    s = json.loads((run / "summary.json").read_text())
    model = load_pruned(str(run / "model.pt")).eval()
    assert sum(p.numel() for p in model.parameters()) == s["params_after"]
    heads = [layer.self_attention.num_heads for layer in model.encoder.layers]
    assert heads == list(s["kept_counts"].values())[0::2]
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def _defaults(*argv):
    ns = argparse.Namespace(task="classify", data=None, model=None, optimizer=None, epochs=None, steps_per_epoch=None,
                            seq_len=None, batch_size=None, lr=None, momentum=None, weight_decay=None, warmup_epochs=None)
    for key, value in zip(argv[0::2], argv[1::2]):
        setattr(ns, key, value)
    fill_defaults(ns)
    return ns


def test_optimizer_defaults():
    sgd = _defaults("model", "vit_tiny")
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.weight_decay, sgd.epochs) == ("sgd", 0.05, 0.9, 5e-4, 30)
    adamw = _defaults("model", "vit_tiny", "optimizer", "adamw")
    assert (adamw.optimizer, adamw.lr, adamw.momentum, adamw.weight_decay) == ("adamw", 1e-3, None, 0.05)
    given = _defaults("optimizer", "adamw", "lr", 3e-3)
    assert given.lr == 3e-3 and given.weight_decay == 0.05
    lm = _defaults("task", "lm")
    assert (lm.model, lm.data, lm.optimizer, lm.lr, lm.seq_len, lm.steps_per_epoch) == ("llama_tiny", "pydoc-topics", "adamw",
                                                                                          3e-3, 128, 50)


def test_adamw_run_records_its_optimizer(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY, "--epochs", "1", "--window", "1", "--optimizer", "adamw"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["optimizer"] == "adamw" and s["lr"] == 1e-3 and s["arguments"]["weight_decay"] == 0.05
