"""timm models by name: `build_model("timm/NAME")` and `epi-fast prune --model timm/NAME`."""

from __future__ import annotations

import copy

import pytest
import torch

timm = pytest.importorskip("timm")

from epi_fast import load_pruned, prune  # noqa: E402
from epi_fast.app.cli import main  # noqa: E402
from epi_fast.models import build_model  # noqa: E402


def test_a_timm_model_prunes_as_it_masks_by_its_parameter_count():
    torch.manual_seed(0)
    model = build_model("timm/resnet18", num_classes=7, in_channels=1).eval()
    x = torch.randn(1, 1, 32, 32)
    dense = copy.deepcopy(model)
    report = prune(model, 0.5, x, target="params")
    assert abs(1 - sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in dense.parameters()) - 0.5) <= 0.01
    assert model(x).shape == (1, 7) and report["achieved"] == pytest.approx(0.5, abs=0.01)


def test_the_prune_command_takes_timm_names(tmp_path, capsys):
    out = tmp_path / "r18.pt"
    assert main(["prune", "--model", "timm/resnet18", "--ratio", "0.4", "--input-size", "32", "32", "--out", str(out)]) == 0
    loaded = load_pruned(out).eval()
    assert loaded(torch.randn(1, 3, 32, 32)).shape[0] == 1
    assert main(["prune", "--model", "timm/no_such_net", "--ratio", "0.4", "--out", str(tmp_path / "x.pt")]) == 2
    assert "unknown timm model 'no_such_net'" in capsys.readouterr().err
