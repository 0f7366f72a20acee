"""What EPI's epoch end costs in a distributed job, measured with gloo on the CPU (docs/SCALE.md).

    torchrun --standalone --nproc-per-node 2 -m benchmarks.dist_epoch_end --out dist_epoch_end.json

Every rank takes part; rank 0 prints and writes the JSON. Medians over repetitions of:

1. the collectives of an epoch end for a 7B LLaMA-shaped model (32 layers, 32 query heads in 8
   or 32 key/value groups, MLP 11008): the broadcast of the structure (int64, one row of 64
   entries per tracked ratio) and the all-reduce of the float32 score vector (one score per
   key/value group and per MLP channel of every layer);
2. the operators on that score vector on one rank: `global_masks_counts` over its 64 segments at
   one and at three ratios (what the selection runs once per epoch);
3. the scoring pass's throughput: `channel_scores` (L2 of every row) over a 4096 x 11008 weight
   in float32 and bfloat16, in bytes read per second;
4. the digits job's epoch end under DDP (resnet_small, magnitude): `StructureTracker.epoch_end`,
   i.e. scores, masks, counts, the broadcast and EPI, as `EPIPruner.epoch_end` runs it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist

LAYERS, HIDDEN, HEADS, MLP = 32, 4096, 32, 11008


def _median_s(fn, reps: int, warmup: int = 2, together: bool = True) -> float:
    """Median seconds of `fn`; with `together`, every rank starts each call after a barrier."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if together:
            dist.barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _collectives(kv_groups: int, reps: int) -> dict:
    n = LAYERS * (kv_groups + MLP)
    scores = torch.rand(n)
    counts = torch.zeros(1, 2 * LAYERS, dtype=torch.int64)
    counts3 = torch.zeros(3, 2 * LAYERS, dtype=torch.int64)
    return {
        "kv_groups": kv_groups,
        "score_entries": n,
        "score_bytes": 4 * n,
        "all_reduce_scores_s": _median_s(lambda: dist.all_reduce(scores), reps),
        "broadcast_structure_1_ratio_s": _median_s(lambda: dist.broadcast(counts, src=0), reps),
        "broadcast_structure_3_ratios_s": _median_s(lambda: dist.broadcast(counts3, src=0), reps),
    }


def _operators(kv_groups: int, reps: int) -> dict:
    import epi_fast

    sizes = [kv_groups, MLP] * LAYERS
    scores = torch.rand(sum(sizes))
    return {
        "kv_groups": kv_groups,
        "global_masks_counts_1_ratio_s": _median_s(lambda: epi_fast.global_masks_counts(scores, [0.5], sizes), reps,
                                                   together=False),
        "global_masks_counts_3_ratios_s": _median_s(
            lambda: epi_fast.global_masks_counts(scores, [0.3, 0.5, 0.7], sizes), reps, together=False),
    }


def _scoring(reps: int) -> dict:
    import epi_fast

    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(MLP, HIDDEN).to(dtype)
        s = _median_s(lambda: epi_fast.channel_scores([w], "l2"), reps, together=False)
        out[str(dtype).replace("torch.", "")] = {"bytes": w.numel() * w.element_size(), "seconds": s,
                                                 "bytes_per_s": w.numel() * w.element_size() / s}
    return out


def _digits_epoch_end(reps: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    torch.manual_seed(0)
    model = DDP(build_model("resnet_small", num_classes=10, in_channels=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = EPIPruner(model, opt, 0.5, torch.zeros(1, 1, 8, 8))
    tracker = pruner.tracker
    return {"layers": len(tracker.layers), "neurons": int(tracker.epoch_end().scores.numel()),
            "tracker_epoch_end_s": _median_s(tracker.epoch_end, reps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the results (rank 0)")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {
        "what": "benchmarks.dist_epoch_end",
        "world_size": world,
        "backend": "gloo (CPU, one machine)",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "torch": torch.__version__,
        "collectives": [_collectives(g, args.reps) for g in (8, 32)],
        "digits_epoch_end": _digits_epoch_end(args.reps),
    }
    if rank == 0:  # one rank's operators: the others wait, as they would for rank 0's work
        result["operators"] = [_operators(g, args.reps) for g in (8, 32)]
        result["scoring"] = _scoring(max(5, args.reps // 4))
    dist.barrier()
    result["load_average_at_end"] = list(os.getloadavg())
    if rank == 0:
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
