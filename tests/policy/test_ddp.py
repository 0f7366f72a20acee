"""EPIPruner under torch.distributed: two gloo processes on the CPU."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="gloo is not available")

WORLD = 2
N, B = 64, 16  # per rank: 4 steps per epoch


def _batches(rank, epoch):
    g = torch.Generator().manual_seed(100 * rank + epoch)
    x = torch.randn(N, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (N,), generator=g)
    return [(x[i:i + B], y[i:i + B]) for i in range(0, N, B)]


def _ddp_run(rank, criterion):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    torch.manual_seed(0)
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ddp = DDP(model, broadcast_buffers=False, bucket_cap_mb=1)
    pruner = EPIPruner(ddp, opt, 0.5, torch.zeros(1, 1, 8, 8), criterion=criterion, track_ratios=(0.3,), deadline_epoch=6)
    pruned_at = None
    for epoch in range(1, 8):
        for x, y in _batches(rank, epoch):  # each rank its own data, as with a DistributedSampler
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            pruner.accumulate()
            opt.step()
        if pruner.epoch_end():
            pruned_at = epoch
            # The old wrapper's buckets refer to the dense parameters: wrap the pruned module
            # anew, with the old wrapper's settings. DDP's constructor checks that every rank
            # has the same parameter shapes.
            from epi_fast.distributed import rewrap_ddp

            old = ddp
            ddp = rewrap_ddp(ddp)
            assert ddp.module is pruner.module and ddp is not old
            assert ddp.broadcast_buffers is False and ddp.bucket_bytes_cap == 1024 * 1024
    return {
        "pruned_at": pruned_at,
        "prune_epoch": pruner.prune_epoch,
        "reason": pruner.prune_reason,
        "epi": pruner.epi_history,
        "kept": pruner.kept_counts,
        "params": [p.detach().clone() for p in pruner.module.parameters()],
    }


def _group_run(rank):
    """Unwrapped models that really differ per rank, agreeing through `process_group`: every
    rank must take rank 0's structure and decision."""
    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    torch.manual_seed(rank)
    model = build_model("resnet_small", num_classes=10, in_channels=1)
    # lr 0 on rank 0: its structure never moves, so EPI_5 = 1 and it fires at epoch 5.
    opt = torch.optim.SGD(model.parameters(), lr=0.0 if rank == 0 else 0.5)
    pruner = EPIPruner(model, opt, 0.5, torch.zeros(1, 1, 8, 8), process_group=dist.group.WORLD)
    for epoch in range(1, 7):
        for x, y in _batches(rank, epoch):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            pruner.accumulate()
            opt.step()
        pruner.epoch_end()
    return {"prune_epoch": pruner.prune_epoch, "epi": pruner.epi_history, "kept": pruner.kept_counts}


def _worker(rank, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        result = {c: _ddp_run(rank, c) for c in ("magnitude", "gradient")}
        result["group"] = _group_run(rank)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("criterion", ["magnitude", "gradient"])
def test_ranks_prune_identically_at_the_same_epoch(results, criterion):
    r0, r1 = results[0][criterion], results[1][criterion]
    assert r0["prune_epoch"] is not None and r0["prune_epoch"] <= 6
    assert r0["pruned_at"] == r1["pruned_at"] == r0["prune_epoch"] == r1["prune_epoch"]
    assert r0["reason"] == r1["reason"]
    assert r0["kept"] == r1["kept"]
    assert r0["epi"] == r1["epi"]
    # Training went on in a fresh DDP after the prune: replicas stayed identical.
    for a, b in zip(r0["params"], r1["params"]):
        assert torch.equal(a, b)


def test_rank0_structure_and_decision_win(results):
    g0, g1 = results[0]["group"], results[1]["group"]
    assert g0["prune_epoch"] == g1["prune_epoch"] == 5
    assert g0["kept"] == g1["kept"] and g0["epi"] == g1["epi"]
    assert g0["epi"][0.5][-1] == 1.0
