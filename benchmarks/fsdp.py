"""python -m benchmarks.fsdp: EPIPruner on a model sharded with FSDP2, measured per rank.

Two gloo processes on this machine's CPU (``--world``) train a LLaMA-shaped decoder sharded per
decoder layer with ``fully_shard`` (AdamW) under `EPIPruner`, and each rank measures:

- the bytes its collectives move: the score buffer all-reduced at every epoch's end, the
  structures broadcast from rank 0, Taylor's per-step all-reduce of the split neurons, against
  the gradient bytes that FSDP's own reduce-scatter moves every step;
- the time of an epoch's end without a prune (scores, all-reduce, EPI) and of `accumulate()`;
- memory: the resident set size (sampled every millisecond by a thread) during construction
  (the gathered copy for the trace) and during the prune, above the steady state of training,
  in units of the dense model's parameter bytes (the size of one gathered copy).

Writes ``benchmarks/results/<machine>_cpu_fsdp.{json,md}`` atomically (under ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch

from .report import machine_name, sanitise, write_atomic

PRESETS = {
    # About 23 M parameters (93 MB in float32): the weights dominate the process's memory.
    "full": dict(hidden_size=512, num_hidden_layers=8, intermediate_size=1376, num_attention_heads=8,
                 num_key_value_heads=4),
    "smoke": dict(hidden_size=32, num_hidden_layers=2, intermediate_size=88, num_attention_heads=8,
                  num_key_value_heads=4),
}


class PeakRss:
    """The highest resident set size seen while active, sampled every `interval` seconds."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def now(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def _rank(rank: int, world: int, init_file: str, out_dir: str, preset: str, steps: int, criterion: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from epi_fast.models import build_model
    from epi_fast.policy import EPIPruner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    try:
        torch.manual_seed(0)
        model = build_model("llama_micro", **PRESETS[preset])
        dense_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(rank)
        data = [torch.randint(0, 256, (4, 64), generator=g) for _ in range(steps)]

        steps_s = []

        def train(net, pruner=None):
            times = []
            for x in data:
                start = time.perf_counter()
                net(x, labels=x).loss.backward()
                if pruner is not None:
                    t = time.perf_counter()
                    pruner.accumulate()
                    times.append(time.perf_counter() - t)
                opt.step()
                opt.zero_grad()
                steps_s.append(time.perf_counter() - start - (times[-1] if pruner is not None else 0.0))
            return times

        train(model)  # optimizer state exists: the steady state of training
        steady = PeakRss().now()
        with PeakRss() as built:
            t = time.perf_counter()
            # EPI's first value comes at epoch 5 (window 5): the deadline prunes after epoch 2.
            pruner = EPIPruner(model, opt, 0.5, data[0][:1, :8], criterion=criterion, deadline_epoch=2)
            build_s = time.perf_counter() - t
        moved = measure_bytes(pruner)
        accumulate = train(model, pruner)
        t = time.perf_counter()
        pruned = pruner.epoch_end()
        epoch_end_s = time.perf_counter() - t
        assert not pruned
        train(model, pruner)
        before_prune = PeakRss().now()
        with PeakRss() as during:
            t = time.perf_counter()
            pruned = pruner.epoch_end()
            prune_s = time.perf_counter() - t
        assert pruned, "the deadline prunes at epoch 2"
        net = pruner.module
        train(net)
        result = {
            "rank": rank, "world": world, "preset": preset, "criterion": criterion, "steps_per_epoch": steps,
            "dense_params": sum(p.numel() for p in model.parameters()), "dense_bytes": dense_bytes,
            "params_after": pruner.report()["params_after"],
            "steady_rss": steady, "build_peak_rss": built.peak, "prune_start_rss": before_prune,
            "prune_peak_rss": during.peak, "build_s": build_s, "epoch_end_s": epoch_end_s, "prune_s": prune_s,
            "accumulate_s": sorted(accumulate)[len(accumulate) // 2] if accumulate else None,
            "train_step_s": sorted(steps_s)[len(steps_s) // 2],
            "layers": len(pruner.layers), "ratios": len(pruner.ratios),
        }
        result.update(moved)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def measure_bytes(pruner) -> dict:
    """Bytes each collective of a pruner (before its prune) carries: float32 scores, int64
    structures."""
    tracker = pruner.tracker
    scorer = tracker.scorer
    out = {"structures_broadcast_bytes": 8 * len(pruner.ratios) * len(pruner.layers)}
    if tracker.accumulator is not None:
        acc = tracker.accumulator
        out["scores_all_reduce_bytes"] = 4 * acc.plan.num_channels
        out["taylor_step_all_reduce_bytes"] = 4 * (acc.split_rows.numel() + 1)
    else:
        n = (scorer.rest.num_channels if scorer.rest is not None else 0) + \
            (scorer.joint.num_channels if scorer.joint is not None else 0)
        out["scores_all_reduce_bytes"] = 4 * n
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fsdp", description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per epoch")
    p.add_argument("--criterion", default="gradient")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    from epi_fast.testing import run_ranks

    out_dir = args.out / ".fsdp_ranks"
    out_dir.mkdir(parents=True, exist_ok=True)
    passes = {}
    for what in ("times", "memory"):
        saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        if what == "memory":
            # glibc raises its mmap threshold after large frees and then keeps freed tensors in
            # its heap: with a fixed threshold every large tensor is mapped and unmapped, so the
            # resident set follows the live tensors (the times of this pass are not the usual).
            os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
        try:
            codes = run_ranks(_rank, args.world, timeout=1200,
                              args=(str(out_dir), args.preset, args.steps, args.criterion))
        finally:
            if what == "memory":
                if saved is None:
                    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
                else:
                    os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
        if any(code != 0 for code, _ in codes):
            print(f"benchmarks.fsdp: a rank failed ({what}): exit codes {[c for c, _ in codes]}", file=sys.stderr)
            return 1
        passes[what] = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(args.world)]
        for r in range(args.world):
            os.remove(out_dir / f"rank{r}.pt")
    out_dir.rmdir()
    data = {"machine": machine_name(torch.device("cpu")), "threads_per_rank": 1, "load": list(os.getloadavg()),
            "ranks": passes["times"], "memory_ranks": passes["memory"]}
    name = f"{sanitise(data['machine'])}_cpu_fsdp" + ("" if args.preset == "full" else f"_{args.preset}")
    write_atomic(args.out / f"{name}.json", json.dumps(data, indent=2).encode())
    write_atomic(args.out / f"{name}.md", markdown(data).encode())
    print(markdown(data))
    return 0


def markdown(data) -> str:
    mb = lambda b: f"{b / 2**20:.1f} MB"  # noqa: E731
    r0 = data["ranks"][0]
    lines = [
        f"# EPIPruner under FSDP2: {data['machine']}, {r0['world']} gloo ranks, 1 thread each",
        "",
        f"Model: LLaMA-shaped decoder ({r0['preset']}), {r0['dense_params']:,} parameters ({mb(r0['dense_bytes'])} "
        f"in float32, the size of one gathered copy), sharded per decoder layer, AdamW; criterion "
        f"{r0['criterion']}, {r0['steps_per_epoch']} steps per epoch; load average at the end {data['load']}.",
        "",
        "| rank | scores all-reduce / epoch | structures broadcast / epoch | Taylor all-reduce / step | gradient "
        "reduce-scatter / step |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in data["ranks"]:
        lines.append(f"| {r['rank']} | {r.get('scores_all_reduce_bytes', 0):,} B | "
                     f"{r.get('structures_broadcast_bytes', 0):,} B | {r.get('taylor_step_all_reduce_bytes', 0):,} B | "
                     f"{r['dense_bytes']:,} B |")
    lines += [
        "",
        "Times (usual allocator):",
        "",
        "| rank | construction | training step (median) | accumulate (median) | epoch end, no prune | prune |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["ranks"]:
        acc = "-" if r["accumulate_s"] is None else f"{1e3 * r['accumulate_s']:.1f} ms"
        lines.append(f"| {r['rank']} | {r['build_s']:.2f} s | {1e3 * r['train_step_s']:.0f} ms | {acc} | "
                     f"{1e3 * r['epoch_end_s']:.1f} ms | {r['prune_s']:.2f} s |")
    lines += [
        "",
        "Resident memory (glibc with a fixed mmap threshold, so that freed tensors are returned):",
        "",
        "| rank | steady state of training | above it: construction | prune (peak) | prune, in gathered copies |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in data["memory_ranks"]:
        build = r["build_peak_rss"] - r["steady_rss"]
        prune = r["prune_peak_rss"] - r["prune_start_rss"]
        lines.append(f"| {r['rank']} | {mb(r['steady_rss'])} | {mb(build)} ({build / r['dense_bytes']:.2f} copies) | "
                     f"{mb(prune)} | {prune / r['dense_bytes']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
