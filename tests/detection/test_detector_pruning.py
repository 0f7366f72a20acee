"""Pruning torchvision detectors: the pruned detector computes what the dense one computes with
the removed channels made inert, in its head outputs (class logits, box regression) and in its
final detections; the class and box output layers keep their widths; it trains (loss dict),
evaluates (detections), carries its optimizer, runs under bf16 autocast and through EPIPruner.

A removed channel is inert in the dense detector when its conv rows and biases are zero and
its BatchNorm has gamma = beta = 0: then ReLU(0) = 0, max-pools and interpolations of zeros
are zero and every consumer (an FPN level, a shared head, SSD's per-level scoring convs) sees
zeros. Images and boxes here are synthetic; the embedded digit canvases have their own tests.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch
import torch.nn as nn

from epi_fast import ops
from epi_fast.detection.models import DETECTOR_NAMES, build_detector, head_output_layers, head_outputs
from epi_fast.layout import group_layout
from epi_fast.surgery import prune, prune_with_masks
from epi_fast.targets import Selector
from epi_fast.targets.flops import measure_flops

S = 64


def images(n=2, seed=0):
    return torch.rand(n, 3, S, S, generator=torch.Generator().manual_seed(seed))


def targets(n=2, seed=0):
    """One to three boxes per image, labels 1..10."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.randint(0, S - 24, (k, 2), generator=g).float()
        wh = torch.randint(8, 24, (k, 2), generator=g).float()
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 11, (k,), generator=g)})
    return out


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and statistics and conv biases, so that a slicing
    mistake cannot hide behind gamma = 1, beta = 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model


def make_inert(model: nn.Module, layout, keep: torch.Tensor) -> nn.Module:
    """The dense model with the neurons `keep` marks False made inert (see the module doc)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for g, o in zip(layout.groups, layout.offsets):
            gone = ~keep[o:o + g.size]
            for mem in g.members:
                ch = mem.channels[gone[mem.neurons]]
                if not ch.numel():
                    continue
                m = modules[mem.name]
                if mem.kind == "out":
                    m.weight[ch] = 0
                    if m.bias is not None:
                        m.bias[ch] = 0
                elif mem.kind == "bn":
                    m.weight[ch] = 0
                    m.bias[ch] = 0
                elif mem.kind != "in":
                    raise AssertionError(f"no inert form known for {mem.name} ({type(m).__name__})")
    return model


def random_keep(layout, ratio, seed=0):
    scores = torch.rand(layout.num_neurons, generator=torch.Generator().manual_seed(seed))
    masks, _ = ops.global_masks(scores, ratio, segment_sizes=layout.group_sizes, min_keep=1)
    return scores, masks[0]


def assert_same_detections(got, want, k=20, atol=1e-4):
    """Each of the pruned detector's top-k detections per image is one of the masked
    detector's: same label, score and box within atol (near-equal scores may swap ranks, so
    detections are matched, not compared by position)."""
    for g, w in zip(got, want):
        assert g["boxes"].shape[0] > 0, "no detections to compare: lower score_thresh"
        assert abs(g["boxes"].shape[0] - w["boxes"].shape[0]) <= 1
        for i in range(min(k, g["boxes"].shape[0])):
            same = ((w["labels"] == g["labels"][i]) & ((w["scores"] - g["scores"][i]).abs() <= atol)
                    & ((w["boxes"] - g["boxes"][i]).abs().amax(1) <= atol * S))
            assert bool(same.any()), f"detection {i} {g['labels'][i]} {g['scores'][i]} {g['boxes'][i]} has no match"


def check_pruned_equals_masked(model, ratio, x, seed=0, target="channels"):
    randomize(model, seed)
    model.eval()
    layout = group_layout(model, x)
    if target == "channels":
        scores, keep = random_keep(layout, ratio, seed)
    else:
        scores = torch.rand(layout.num_neurons, generator=torch.Generator().manual_seed(seed))
        keep = Selector(layout, target, 1, 1.0, None, x).select(scores, [ratio]).masks[0].cpu()
    dense = make_inert(copy.deepcopy(model), layout, keep)
    dense.eval()
    outputs = head_output_layers(model)
    widths = [(m.in_channels, m.out_channels) for m in outputs]
    flops_before = measure_flops(model, x).total
    prune_with_masks(model, layout, keep)
    assert [m.out_channels for m in head_output_layers(model)] == [w for _, w in widths]
    with torch.no_grad():
        want, got = head_outputs(dense, x), head_outputs(model, x)
        assert set(got) == set(want)
        for key in want:
            assert got[key].shape == want[key].shape, key
            scale = max(1.0, float(want[key].abs().max()))
            torch.testing.assert_close(got[key], want[key], atol=1e-4 * scale, rtol=1e-4, msg=key)
        assert_same_detections(model(x), dense(x))
    return layout, keep, flops_before


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.7])
def test_ssd_resnet18_pruned_equals_masked(ratio):
    torch.manual_seed(0)
    model = build_detector("ssd_resnet18", score_thresh=0.0)
    inputs = [m.in_channels for m in head_output_layers(model)]
    layout, keep, _ = check_pruned_equals_masked(model, ratio, images(), seed=int(ratio * 10))
    assert all(m.in_channels < c for m, c in zip(head_output_layers(model), inputs))
    # Backbone stages, extra blocks (the neck) all lost channels; the head's scoring convs read
    # the narrower maps.
    removed = {g.root.split(".")[1] for g, o in zip(layout.groups, layout.offsets) if not bool(keep[o:o + g.size].all())}
    assert {"stem", "layer2", "layer3", "layer4", "extras"} <= removed


def test_ssd_resnet18_pruned_to_a_flops_target_equals_masked():
    torch.manual_seed(1)
    model = build_detector("ssd_resnet18", score_thresh=0.0)
    x = images(1)
    _, _, before = check_pruned_equals_masked(model, 0.5, x, seed=3, target="flops")
    after = measure_flops(model, x).total  # FlopCounterMode on the pruned detector's whole forward
    assert abs((1 - after / before) - 0.5) <= 0.01


def test_retinanet_fpn_pruned_equals_masked_and_fpn_width_is_one_group():
    torch.manual_seed(2)
    model = build_detector("retinanet_resnet18_fpn", score_thresh=0.0)
    x = images()
    layout, keep, _ = check_pruned_equals_masked(model, 0.5, x, seed=5)
    by_root = {g.root: g for g in layout.groups}
    # Every lateral conv adds into the same top-down sum: one group of the FPN's width.
    laterals = {m.name for m in by_root["backbone.fpn.inner_blocks.2.0"].members if m.kind == "out"}
    assert laterals == {f"backbone.fpn.inner_blocks.{i}.0" for i in range(3)}
    # Every level's output conv feeds the one shared head: one group too.
    outs = by_root["backbone.fpn.layer_blocks.2.0"]
    assert {m.name for m in outs.members if m.kind == "out"} == {f"backbone.fpn.layer_blocks.{i}.0" for i in range(3)}
    assert {m.name for m in outs.members if m.kind == "in"} == {"head.classification_head.conv.0.0",
                                                                 "head.regression_head.conv.0.0"}
    # Lateral convs read the backbone stages: their inputs follow the stages' residual groups.
    stage = by_root["backbone.body.layer4.0.downsample.0"]
    assert "backbone.fpn.inner_blocks.2.0" in {m.name for m in stage.members if m.kind == "in"}
    widths = {b[0].out_channels for b in model.backbone.fpn.layer_blocks}
    assert len(widths) == 1 and widths.pop() < 64


def test_output_layers_are_never_pruned_and_anchors_still_match():
    for name in DETECTOR_NAMES:
        torch.manual_seed(0)
        model = build_detector(name, image_size=S).eval()
        x = images(1)
        layout = group_layout(model, x)
        out_names = {n for n, m in model.named_modules() if m in head_output_layers(model)}
        assert out_names and out_names <= set(layout.ignored), name
        assert not out_names & set(layout.layers), name
        with torch.no_grad():
            shapes = {k: v.shape for k, v in head_outputs(model, x).items()}
        prune(model, 0.6, x, criterion="magnitude", layout=layout)
        with torch.no_grad():
            after = head_outputs(model, x)
            batch, _ = model.transform(list(x))
            features = list(model.backbone(batch.tensors).values())
            anchors = model.anchor_generator(batch, features)
        assert {k: v.shape for k, v in after.items()} == shapes, name
        assert anchors[0].shape[0] == shapes["cls_logits"][1], name


def test_pruned_detector_trains_with_its_optimizer_and_evaluates():
    torch.manual_seed(0)
    model = build_detector("ssd_resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, t = images(4), targets(4)
    model.train()
    for _ in range(2):
        loss = sum(model(list(x), t).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    report = prune(model, 0.5, x[:1], criterion="magnitude", optimizer=opt)
    assert report["params_after"] < report["params_before"]
    params = list(model.parameters())
    held = [p for g in opt.param_groups for p in g["params"]]
    assert len(held) == len(params) and all(a is b for a, b in zip(held, params))
    for p in params:
        buf = opt.state[p].get("momentum_buffer")
        assert buf is not None and buf.shape == p.shape
    model.train()
    losses = model(list(x), t)
    assert set(losses) == {"bbox_regression", "classification"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert len(out) == 4 and all(set(o) == {"boxes", "scores", "labels"} for o in out)


def _train_epoch(model, opt, pruner, steps=2, amp=False, seed=0):
    model.train()
    last = None
    for s in range(steps):
        x, t = images(4, seed * 100 + s), targets(4, seed * 100 + s)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            losses = model(list(x), t)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        pruner.accumulate()
        opt.step()
        last = float(loss.detach())
    return last


@pytest.mark.parametrize("criterion, amp", [("magnitude", False), ("taylor", False), ("magnitude", True)])
def test_epi_pruner_trains_a_detector_to_a_prune(criterion, amp):
    from epi_fast.policy import EPIPruner

    torch.manual_seed(0)
    model = build_detector("ssd_resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    pruner = EPIPruner(model, opt, 0.4, images(1), criterion=criterion, window=2, patience=1, deadline_epoch=3,
                       track_ratios=(0.2,))
    modules = dict(model.named_modules())
    dense = {name: modules[name].out_channels for name in pruner.layers}
    pruned_at = None
    for epoch in range(1, 5):
        loss = _train_epoch(model, opt, pruner, amp=amp, seed=epoch)
        assert loss == loss and abs(loss) < float("inf")
        if pruner.epoch_end():
            pruned_at = epoch
    assert pruned_at is not None and pruned_at == pruner.prune_epoch <= 3
    assert pruner.prune_reason in ("epi", "deadline")
    kept = pruner.kept_counts
    assert set(kept) == set(dense) and all(kept[n] <= dense[n] for n in dense)
    assert sum(kept.values()) < sum(dense.values())
    assert len(pruner.epi_history[0.2]) == len(pruner.epi_history[0.4]) == pruner.prune_epoch + 1
    assert [m.out_channels for m in head_output_layers(pruner.module)] == [
        m.out_channels for m in head_output_layers(build_detector("ssd_resnet18"))]
    pruner.module.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        assert len(pruner.module(images(2))) == 2


def test_fcos_groupnorm_towers_are_kept_whole():
    """torchvision's FCOS head normalises its towers with GroupNorm(32): those channels are not
    pruned (removing one changes its group's statistics); the rest prunes like masking."""
    import torchvision
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    torch.manual_seed(0)
    body = torchvision.models.resnet18(weights=None)
    backbone = BackboneWithFPN(body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [128, 256, 512], 64)
    anchors = AnchorGenerator(((8,), (16,), (32,), (64,)), ((1.0,),) * 4)  # one per location and level
    model = FCOS(backbone, 11, min_size=S, max_size=S, anchor_generator=anchors, score_thresh=0.0, topk_candidates=100)
    x = images()
    layout = group_layout(model, x)
    towers = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".conv." in n and n.startswith("head.")}
    assert towers and not towers & set(layout.layers)
    check_pruned_equals_masked(model, 0.5, x, seed=7)
    assert all(m.num_channels == 64 for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_unsupported_detectors_and_bad_inputs_are_refused():
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    model = build_detector("ssd_resnet18")
    x = images(2)
    with pytest.raises(ValueError, match="bare list of images"):
        group_layout(model, list(x))
    with pytest.raises(ValueError, match=r"batch of images \[B, 3, H, W\], got a tensor of shape \(3, 64, 64\)"):
        group_layout(model, x[0])
    with pytest.raises(ValueError, match="keyword inputs must be"):
        group_layout(model, {"images": list(x), "targets": targets(2)})
    # The accepted forms: a batch tensor, a one-element tuple holding the list, {"images": list}.
    sizes = {len(group_layout(model, form).layers) for form in (x, (list(x),), {"images": list(x)})}
    assert len(sizes) == 1
    rcnn = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=11, min_size=S, max_size=S)
    with pytest.raises(ValueError, match="FasterRCNN is a two-stage detector"):
        group_layout(rcnn, x)
    with pytest.raises(ValueError, match="FasterRCNN is a two-stage detector"):
        prune(rcnn, 0.5, x)
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        build_detector("yolo")
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
        build_detector(num_classes=1)
    with pytest.raises(TypeError, match="image_size must be an integer >= 32, got 64.0"):
        build_detector(image_size=64.0)
    with pytest.raises(ValueError, match="box_scales must hold 5"):
        build_detector(box_scales=(0.2, 0.5))


def test_pruned_detector_saves_and_loads(tmp_path):
    from epi_fast.surgery import load_pruned, save_pruned

    torch.manual_seed(0)
    model = build_detector("ssd_resnet18")
    x = images(1)
    prune(model, 0.5, x, criterion="l2")
    model.eval()
    path = save_pruned(model, tmp_path / "model.pt", arch={"name": "ssd_resnet18", "kwargs": {}})
    loaded = load_pruned(path, model=build_detector("ssd_resnet18"))
    loaded.eval()
    with torch.no_grad():
        a, b = head_outputs(model, x), head_outputs(loaded, x)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_window_scales_with_the_schedule_as_in_app_e():
    from epi_fast.detection.schedule import scaled_window

    assert scaled_window(800) == 50  # the paper's detection run
    assert scaled_window(90) == 6 and scaled_window(40) == 3 and scaled_window(56) == 4
    assert scaled_window(8) == scaled_window(1) == 2  # at least 2
    assert scaled_window(8, minimum=1) == 1 and scaled_window(100, fraction=0.1) == 10
    with pytest.raises(TypeError, match="epochs must be an integer >= 1, got 8.0"):
        scaled_window(8.0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        scaled_window(8, fraction=0)


# -- DDP: two gloo processes ---------------------------------------------------------------------

def _ddp_worker(rank, init_file, out_dir):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from epi_fast.distributed import rewrap_ddp
    from epi_fast.policy import EPIPruner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = build_detector("ssd_resnet18")
        opt = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
        ddp = DDP(model)
        pruner = EPIPruner(ddp, opt, 0.4, images(1), criterion="magnitude", window=2, patience=1, deadline_epoch=2)
        pruned_at = None
        for epoch in range(1, 4):
            ddp.train()
            for s in range(2):  # each rank its own batches, as with a DistributedSampler
                x, t = images(2, 1000 * rank + 10 * epoch + s), targets(2, 1000 * rank + 10 * epoch + s)
                loss = sum(ddp(list(x), t).values())
                opt.zero_grad()
                loss.backward()
                pruner.accumulate()
                opt.step()
            if pruner.epoch_end():
                pruned_at = epoch
                ddp = rewrap_ddp(ddp)
        torch.save({"pruned_at": pruned_at, "kept": pruner.kept_counts, "epi": pruner.epi_history,
                    "params": [p.detach().clone() for p in pruner.module.parameters()]},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_prune_a_detector_identically(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("gloo is not available")
    ctx = mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 600
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail("the two DDP processes did not finish within 600 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["pruned_at"] == r1["pruned_at"] is not None
    assert r0["kept"] == r1["kept"] and r0["epi"] == r1["epi"]
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)
