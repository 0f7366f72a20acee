"""python -m benchmarks.profile_cpu: where the CPU time of the fused path goes.

Splits the CPU targets' misses into measurable causes, for the kernel owner:
1. L2 scoring of whole models on 1 and 2 threads, with each row-kernel set the CPU has
   (AVX-512, AVX2, portable; ``_C.set_cpu_simd_level``), against the floor and the per-layer
   loop;
2. per-element throughput of the row kernel on one thread, in cache and from DRAM, against
   torch's .sum() (the floor);
3. the cost per row of short rows (depthwise 3x3 filters: 9 elements);
4. global_masks at 1 and 9 ratios against N, and the Python wrappers' argument checks;
5. the EPI update (host Python) that every pipeline implementation pays.
Writes <machine>_cpu_profile.{json,md} under --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import epi_fast.ops as F
from epi_fast.ops._ext import _C

from . import cases as C
from . import report
from . import workloads as W

OP = torch.ops.epi_fast


def t_ms(fn, reps=30, warmup=3) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def simd_levels() -> list:
    """The row-kernel sets this CPU runs, best first (always ending with "portable")."""
    levels = []
    for level in ("avx512", "avx2", "portable"):
        previous = _C.set_cpu_simd_level(level)
        try:
            if _C.cpu_simd() == level:
                levels.append(level)
        finally:
            _C.set_cpu_simd_level(previous)
    return levels


def scoring_profile(w: W.Workload) -> dict:
    """Fused L2 scoring with every row-kernel set the CPU has, the floor and the loop."""
    ws = w.weights
    out = {"workload": w.name, "levels": simd_levels()}
    flat = torch.empty(sum(x.numel() for x in ws)).uniform_()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for level in out["levels"]:
            previous = _C.set_cpu_simd_level(level)
            try:
                out[f"fused_{level}_{threads}t_ms"] = t_ms(lambda: OP.channel_scores(ws, "l2"))
            finally:
                _C.set_cpu_simd_level(previous)
        out[f"floor_{threads}t_ms"] = t_ms(lambda: flat.sum())
    out["loop_2t_ms"] = t_ms(lambda: C.loop_l2_scores(ws))
    del flat
    return out


def throughput_profile() -> list:
    torch.set_num_threads(1)
    rows = []
    for label, shape in (("in cache, 4 MB", (256, 4096)), ("DRAM, 256 MB", (16384, 4096)),
                         ("short rows of 9 (depthwise 3x3), 4 MB", (116508, 9)),
                         ("rows of 64, 4 MB", (16384, 64))):
        x = torch.empty(shape).uniform_()
        gb = x.numel() * 4 / 1e9
        fused = t_ms(lambda: OP.channel_scores([x], "l2"))
        floor = t_ms(lambda: x.sum())
        norm = t_ms(lambda: torch.linalg.vector_norm(x, dim=1))
        rows.append({"label": label, "shape": list(shape), "fused_ms": fused, "floor_ms": floor,
                     "vector_norm_ms": norm, "fused_GBps": gb / fused * 1e3, "floor_GBps": gb / floor * 1e3,
                     "fused_ns_per_row": fused * 1e6 / shape[0]})
        del x
    torch.set_num_threads(2)
    return rows


def masks_profile() -> list:
    out = []
    gen = torch.Generator().manual_seed(0)
    for n, layers in ((5800, 21), (18056, 53), (27560, 54), (150000, 100)):
        s = torch.rand(n, generator=gen)
        sizes = [n // layers] * (layers - 1)
        sizes.append(n - sum(sizes))
        row = {"channels": n, "segments": layers}
        row["fused_1_ratio_ms"] = t_ms(lambda: OP.global_masks(s, [0.5], sizes, 1))
        row["fused_9_ratios_ms"] = t_ms(lambda: OP.global_masks(s, C.RATIOS_9, sizes, 1))
        row["fused_9_ratios_no_segments_ms"] = t_ms(lambda: OP.global_masks(s, C.RATIOS_9, [], 1))
        row["fused_9_wrapper_ms"] = t_ms(lambda: F.global_masks(s, C.RATIOS_9, sizes, 1))
        row["loop_9_ratios_ms"] = t_ms(lambda: C.loop_global_masks(s, C.RATIOS_9, sizes, 1))
        row["sort_ms"] = t_ms(lambda: torch.sort(s))
        out.append(row)
    return out


def overhead_profile(w: W.Workload) -> dict:
    bns = [b.weight.detach() for b in w.bns]
    sizes = w.sizes
    s = F.channel_scores(w.weights, "l2")
    masks, _ = F.global_masks(s, C.RATIOS_9, sizes, 1)
    tiny = [torch.ones(1, 1) for _ in w.weights]
    out = {
        "workload": w.name,
        "abs_wrapper_ms": t_ms(lambda: F.channel_scores(bns, "abs")),
        "abs_raw_op_ms": t_ms(lambda: OP.channel_scores(bns, "abs")),
        "abs_loop_ms": t_ms(lambda: torch.cat([b.abs() for b in bns])),
        # What the Python wrapper adds to the operator, on 1x1 stand-ins of the same count (pure
        # overhead; its per-tensor checks run only when the operator refuses the arguments).
        "l2_wrapper_overhead_ms": t_ms(lambda: F.channel_scores(tiny, "l2")) - t_ms(lambda: OP.channel_scores(tiny, "l2")),
        "layer_counts_ms": t_ms(lambda: F.layer_counts(masks, sizes)),
    }
    try:
        from epi_fast.indicator import EarlyPruningIndicator, update_indicators

        counts = F.layer_counts(masks, sizes)
        rows = counts.tolist()
        inds = [EarlyPruningIndicator() for _ in C.RATIOS_9]
        for _ in range(inds[0].window + 5):
            update_indicators(inds, rows)

        def upd():
            for ind, row in zip(inds, rows):
                ind.update(row)
        out["epi_update_9_ratios_ms"] = t_ms(upd, reps=20)
        out["epi_update_9_batched_ms"] = t_ms(lambda: update_indicators(inds, counts), reps=20)
    except ImportError:
        out["epi_update_9_ratios_ms"] = out["epi_update_9_batched_ms"] = None
    return out


def to_markdown(res) -> str:
    L = [f"# CPU profile of the fused path: {res['machine']}", "",
         f"torch {res['torch']}, threads {res['threads']}, load average {res['load_average']}", "",
         "## 1. L2 scoring with each row-kernel set (times are medians, warm)", ""]
    levels = res["scoring"][0]["levels"] if res["scoring"] else []
    cols = [f"{lv} {t}t ms" for t in (1, 2) for lv in levels]
    L += ["| model | " + " | ".join(cols) + f" | floor 1t ms | floor 2t ms | loop 2t ms | {levels[0] if levels else ''} / floor, 2t |",
          "| --- " * (len(cols) + 5) + "|"]
    for r in res["scoring"]:
        vals = [f"{r[f'fused_{lv}_{t}t_ms']:.3f}" for t in (1, 2) for lv in levels]
        L.append(f"| {r['workload']} | " + " | ".join(vals) + f" | {r['floor_1t_ms']:.3f} | {r['floor_2t_ms']:.3f} | "
                 f"{r['loop_2t_ms']:.3f} | {r[f'fused_{levels[0]}_2t_ms'] / r['floor_2t_ms']:.2f}x |")
    L += ["", "## 2-3. Row kernel throughput, one thread", "",
          "| data | fused ms | fused GB/s | .sum() GB/s | vector_norm(dim=1) ms | fused ns/row |",
          "| --- | --- | --- | --- | --- | --- |"]
    for r in res["throughput"]:
        L.append(f"| {r['label']} {r['shape']} | {r['fused_ms']:.3f} | {r['fused_GBps']:.1f} | {r['floor_GBps']:.1f} | "
                 f"{r['vector_norm_ms']:.3f} | {r['fused_ns_per_row']:.1f} |")
    L += ["", "## 4. global_masks (raw op unless noted), 2 threads", "",
          "| channels | segments | 1 ratio ms | 9 ratios ms | 9 ratios, no segments ms | 9 ratios via wrapper ms | "
          "loop (topk per layer + kthvalue per ratio) ms | torch.sort ms |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["masks"]:
        L.append(f"| {r['channels']} | {r['segments']} | {r['fused_1_ratio_ms']:.3f} | {r['fused_9_ratios_ms']:.3f} | "
                 f"{r['fused_9_ratios_no_segments_ms']:.3f} | {r['fused_9_wrapper_ms']:.3f} | {r['loop_9_ratios_ms']:.3f} | "
                 f"{r['sort_ms']:.3f} |")
    L += ["", "## 5. Small-tensor overheads and the EPI update", "",
          "| model | BN abs: wrapper ms | raw op ms | loop ms | L2 wrapper overhead ms | layer_counts ms | "
          "EPI update x9, one by one ms | x9, update_indicators ms |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"
    for r in res["overheads"]:
        L.append(f"| {r['workload']} | {r['abs_wrapper_ms']:.3f} | {r['abs_raw_op_ms']:.3f} | {r['abs_loop_ms']:.3f} | "
                 f"{r['l2_wrapper_overhead_ms']:.3f} | {r['layer_counts_ms']:.3f} | {fmt(r['epi_update_9_ratios_ms'])} | "
                 f"{fmt(r.get('epi_update_9_batched_ms'))} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile_cpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    dev = torch.device("cpu")
    models = [W.build_torchvision(n, dev) for n in W.TORCHVISION] + [W.build_mlp(3e7, dev, torch.float32)]
    res = {"machine": report.machine_name(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "load_average": list(__import__("os").getloadavg())}
    res["scoring"] = [scoring_profile(w) for w in models]
    res["throughput"] = throughput_profile()
    res["masks"] = masks_profile()
    res["overheads"] = [overhead_profile(w) for w in models if w.bns]
    stem = f"{report.sanitise(res['machine'])}_cpu_profile"
    md = to_markdown(res)
    report.write_atomic(args.out / f"{stem}.json", (json.dumps(res, indent=1) + "\n").encode())
    report.write_atomic(args.out / f"{stem}.md", md.encode())
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
