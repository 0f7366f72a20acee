"""mAP through torchmetrics' MeanAveragePrecision (pycocotools), checked on cases worked out by
hand, and `evaluate_map` on a detector's eval-mode outputs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from epi_fast.detection import (MAP_KEYS, detection_collate, evaluate_map, make_digit_canvases,
                                map_from_predictions)

GT = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([1])}


def _pred(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels)}


def test_perfect_predictions_score_one():
    ds = make_digit_canvases(12, seed=1)
    targets = [ds.target(i) for i in range(len(ds))]
    preds = [{**t, "scores": torch.linspace(0.9, 0.5, len(t["labels"]))} for t in targets]
    r = map_from_predictions(preds, targets)
    assert r["map"] == pytest.approx(1.0) and r["map_50"] == pytest.approx(1.0) and r["map_75"] == pytest.approx(1.0)
    assert r["mar_100"] == pytest.approx(1.0) and r["images"] == 12
    assert set(MAP_KEYS) <= set(r)
    assert r["map_large"] is None  # no box above 96x96 px: nothing to measure


@pytest.mark.parametrize("shift, map50, map_all", [
    # IoU of [0,0,10,10] and the box shifted right by s is (10 - s) / (10 + s).
    (2.0, 1.0, 0.4),   # IoU 2/3: matched at 0.50, 0.55, 0.60, 0.65; missed at 0.70..0.95 -> 4/10
    (1.0, 1.0, 0.7),   # IoU 9/11 = 0.818: matched up to 0.80 -> 7/10
    (4.0, 0.0, 0.0),   # IoU 6/14 = 0.43: a false positive and a missed box at every threshold
])
def test_one_shifted_box(shift, map50, map_all):
    r = map_from_predictions([_pred([shift, 0, 10 + shift, 10], [0.9], [1])], [GT])
    assert r["map_50"] == pytest.approx(map50, abs=1e-6)
    assert r["map"] == pytest.approx(map_all, abs=1e-6)
    assert r["map_75"] == pytest.approx(1.0 if shift == 1.0 else 0.0, abs=1e-6)


def test_false_positive_ranked_first_halves_precision():
    # Detections by score: a false positive, then the true box. Precision 1/2 at recall 1, and the
    # interpolated precision is 1/2 at every recall threshold: AP = 0.5.
    r = map_from_predictions([_pred([[30, 30, 40, 40], [0, 0, 10, 10]], [0.9, 0.8], [1, 1])], [GT])
    assert r["map_50"] == pytest.approx(0.5, abs=1e-6)
    # Ranked below the true box it costs nothing: precision is 1 up to recall 1.
    r = map_from_predictions([_pred([[30, 30, 40, 40], [0, 0, 10, 10]], [0.7, 0.8], [1, 1])], [GT])
    assert r["map_50"] == pytest.approx(1.0, abs=1e-6)


def test_classes_are_averaged_and_labels_must_match():
    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 2])}
    # Class 1 found, class 2 missed: (1 + 0) / 2.
    r = map_from_predictions([_pred([0, 0, 10, 10], [0.9], [1])], [target])
    assert r["map_50"] == pytest.approx(0.5, abs=1e-6)
    # The right box with the wrong label is no hit.
    r = map_from_predictions([_pred([0, 0, 10, 10], [0.9], [3])], [GT])
    assert r["map_50"] == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="1 predictions for 2 targets"):
        map_from_predictions([_pred([0, 0, 1, 1], [1.0], [1])], [GT, GT])
    with pytest.raises(ValueError, match="prediction 0 has no scores"):
        map_from_predictions([{"boxes": torch.zeros(1, 4), "labels": torch.tensor([1])}], [GT])
    with pytest.raises(ValueError, match=r"prediction 0: scores must have shape \[1\]"):
        map_from_predictions([{"boxes": torch.zeros(1, 4), "scores": torch.ones(2), "labels": torch.ones(1)}], [GT])
    with pytest.raises(ValueError, match=r"target 0: boxes must be \[N, 4\]"):
        map_from_predictions([_pred([0, 0, 1, 1], [1.0], [1])], [{"boxes": torch.zeros(2, 3), "labels": [1, 1]}])


class _Oracle(torch.nn.Module):
    """Answers each image with the boxes stored for it (found by its pixels)."""

    def __init__(self, ds, shift=0.0):
        super().__init__()
        self.ds, self.shift = ds, shift
        self.lin = torch.nn.Linear(1, 1)
        self.seen_training, self.seen_grad = [], []

    def forward(self, images):
        self.seen_training.append(self.training)
        self.seen_grad.append(torch.is_grad_enabled())
        out = []
        for im in images:
            i = next(k for k in range(len(self.ds)) if torch.equal(self.ds.image(k), im))
            t = self.ds.target(i)
            boxes = t["boxes"] + torch.tensor([self.shift, 0.0, self.shift, 0.0])
            out.append({"boxes": boxes, "labels": t["labels"], "scores": torch.ones(len(boxes))})
        return out


def test_evaluate_map_runs_the_model_in_eval_mode_without_gradients():
    ds = make_digit_canvases(10, seed=2)
    model = _Oracle(ds).train()
    loader = DataLoader(ds, batch_size=3, collate_fn=detection_collate)
    r = evaluate_map(model, loader)
    assert r["map"] == pytest.approx(1.0) and r["images"] == 10
    assert model.seen_training == [False] * 4 and model.seen_grad == [False] * 4
    assert model.training  # restored
    # torch's default collate turns the targets into one dict of batched tensors.
    with pytest.raises(TypeError, match="collate_fn=detection_collate"):
        evaluate_map(model, DataLoader(ds, batch_size=1))
    with pytest.raises(ValueError, match="no images"):
        evaluate_map(model, [])


def test_evaluate_map_on_a_torchvision_detector():
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = FCOS(backbone, num_classes=11, min_size=64, max_size=64, score_thresh=0.0)
    ds = make_digit_canvases(4, seed=3)
    r = evaluate_map(model, DataLoader(ds, batch_size=2, collate_fn=detection_collate))
    assert r["images"] == 4
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert 0.0 <= r[key] <= 1.0


_DISTRIBUTED = r"""
import os, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
sys.path.insert(0, sys.argv[2])
from test_map import _Oracle
from torch.utils.data import DataLoader
from epi_fast.detection import detection_collate, evaluate_map, make_digit_canvases


def worker(rank, port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if rank == 0:  # rank 0 alone evaluates; a collective inside would wait for rank 1 forever
        ds = make_digit_canvases(4, seed=2)
        r = evaluate_map(_Oracle(ds, shift=2.0), DataLoader(ds, batch_size=2, collate_fn=detection_collate))
        print("map_50", r["map_50"], "images", r["images"], flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]),), nprocs=2)
"""


def test_evaluate_map_on_one_rank_of_a_distributed_run(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "dist_map.py"
    script.write_text(_DISTRIBUTED)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root)
    out = subprocess.run([sys.executable, str(script), str(port), os.path.dirname(__file__)], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "map_50 1.0 images 4" in out.stdout, out.stdout
