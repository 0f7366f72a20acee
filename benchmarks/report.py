"""Targets (PASS/FAIL), file names per machine, and the JSON / markdown / plot writers."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import torch

from epi_fast._io import write_bytes

# --- naming ----------------------------------------------------------------------------------

def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown-cpu"


def sanitise(text: str) -> str:
    text = re.sub(r"\((r|tm|c)\)", "", text, flags=re.I)
    text = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return text or "unknown"


def stem(device: torch.device, mode: str) -> str:
    return f"{sanitise(machine_name(device))}_{device.type}_{mode}"


# --- targets ---------------------------------------------------------------------------------

def _find(results, case, workload=None):
    return [c for c in results["cases"] if c["case"] == case and (workload is None or c["workload"] == workload)]


def _median(case, impl):
    return case["impls"].get(impl, {}).get("median_s")


def _vs_floor(case, impl="fused"):
    """Time over the floor: the median of within-round ratios where the samples were kept
    (timing.paired_ratio), else the ratio of the medians (results written before)."""
    s = case["impls"][impl]
    return s.get("paired_vs_floor") or s["median_s"] / case["floor"]["median_s"]


def _speedup(case, base, impl="fused"):
    """base's time over impl's, paired where possible (see _vs_floor); None if either is missing."""
    s = case["impls"].get(impl, {})
    if s.get(f"paired_speedup_vs_{base}"):
        return s[f"paired_speedup_vs_{base}"]
    b = _median(case, base)
    return b / s["median_s"] if b and s.get("median_s") else None


def _target_row(name, value, goal, ok, detail=""):
    status = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    return {"target": name, "value": value, "goal": goal, "status": status, "detail": detail}


def evaluate_targets(results) -> list:
    """Targets from the warm-cache timings, and the CPU ones again from the cold-cache timings."""
    out = _evaluate(results, "")
    if results["environment"]["device"].startswith("cpu") and any("cold" in c for c in results["cases"]):
        cold = dict(results, cases=[dict(c, impls=c["cold"]["impls"], floor=c["cold"]["floor"])
                                    for c in results["cases"] if "cold" in c])
        out += _evaluate(cold, " [cold caches]")
    return out


def _evaluate(results, state: str) -> list:
    device = results["environment"]["device"]
    out = []

    def _target(name, *args):
        return _target_row(name.replace(": ", state + ": ", 1), *args)

    if device.startswith("cpu"):
        scoring = [c for c in _find(results, "score_l2") if _median(c, "fused")]
        if scoring:
            ratios = {c["workload"]: _vs_floor(c) for c in scoring}
            if "resnet50" in ratios:
                out.append(_target("CPU: fused L2 scoring within 1.15x of the read floor on resnet50",
                                   f"{ratios['resnet50']:.2f}x", "<= 1.15x", ratios["resnet50"] <= 1.15))
            worst = max(ratios, key=ratios.get)
            out.append(_target("CPU: fused L2 scoring within 1.15x of the read floor (every model)",
                               f"worst {ratios[worst]:.2f}x ({worst})", "<= 1.15x",
                               ratios[worst] <= 1.15,
                               ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())))
            vs_loop = {c["workload"]: 1.0 / _speedup(c, "loop") for c in scoring if _speedup(c, "loop")}
            worst = max(vs_loop, key=vs_loop.get)
            out.append(_target("CPU: fused L2 scoring never slower than the per-layer loop (every model)",
                               f"worst fused/loop {vs_loop[worst]:.2f} ({worst})", "<= 1.00",
                               vs_loop[worst] <= 1.0,
                               ", ".join(f"{k} {v:.2f}" for k, v in vs_loop.items())))
        # Issue 3's pipeline is scores, thresholds, masks and per-layer counts (epoch_end_tensors);
        # the benchmarks' adds the EPI update of 9 indicators (epoch_end_pipeline).
        for case, what in (("epoch_end_tensors", "scores, masks, counts"),
                           ("epoch_end_pipeline", "scores, masks, counts, EPI update")):
            for model, goal in (("resnet50", 2.0), ("mobilenet_v2", 4.0)):
                name = f"CPU: epoch-end pipeline ({what}; 9 ratios) >= {goal:g}x plain PyTorch on {model}"
                found = [c for c in _find(results, case, model) if _median(c, "fused")]
                plain = {k: _speedup(found[0], k) for k in ("loop", "reference")} if found else {}
                plain = {k: v for k, v in plain.items() if v}
                if not plain:
                    out.append(_target(name, "not run", f">= {goal:g}x", None))
                    continue
                best = min(plain, key=plain.get)  # the faster plain-PyTorch pipeline
                out.append(_target(name, f"{plain[best]:.2f}x (vs {best}, the faster plain-PyTorch pipeline)",
                                   f">= {goal:g}x", plain[best] >= goal,
                                   ", ".join(f"vs {k} {v:.2f}x" for k, v in plain.items())))
    else:
        found = [c for c in _find(results, "epoch_end_pipeline", "resnet50") if _median(c, "loop") and _median(c, "fused")]
        if found:
            speed = _median(found[0], "loop") / _median(found[0], "fused")
            out.append(_target("GPU: ResNet-50 epoch-end pipeline >= 20x faster than the per-layer loop",
                               f"{speed:.1f}x", ">= 20x", speed >= 20))
        else:
            out.append(_target("GPU: ResNet-50 epoch-end pipeline >= 20x faster than the per-layer loop",
                               "not run", ">= 20x", None))
        step = results.get("gpu", {}).get("train_step_resnet50_b128_amp")
        tay = [c for c in _find(results, "taylor_step", "resnet50") if _median(c, "fused")]
        if step and tay:
            frac = tay[0]["impls"]["fused"]["median_s"] / step["median_s"]
            out.append(_target("GPU: Taylor accumulation < 1% of a ResNet-50 training step (batch 128, AMP)",
                               f"{frac:.3%} ({tay[0]['impls']['fused']['median_s'] * 1e3:.3f} ms of "
                               f"{step['median_s'] * 1e3:.1f} ms)", "< 1%", frac < 0.01))
        else:
            out.append(_target("GPU: Taylor accumulation < 1% of a ResNet-50 training step", "not run", "< 1%", None))
        huge = results.get("gpu", {}).get("huge_layers", [])
        if huge:
            worst = min(h["fraction_of_copy_bw"] for h in huge)
            out.append(_target("GPU: layers >= 1 GB scored at >= 80% of copy bandwidth",
                               f"worst {worst:.0%}", ">= 80%", worst >= 0.8,
                               ", ".join(f"{h['bytes'] / 2**30:.0f} GiB: {h['fused_read_GBps']:.0f} GB/s "
                                         f"({h['fraction_of_copy_bw']:.0%})" for h in huge)))
        else:
            out.append(_target("GPU: layers >= 1 GB scored at >= 80% of copy bandwidth", "not run", ">= 80%", None))
    return out


# --- writers ---------------------------------------------------------------------------------

def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, data)


def _ms(s):
    return "-" if s is None else (f"{s * 1e3:.3f}" if s < 1 else f"{s * 1e3:.0f}")


def _mb(b):
    return f"{b / 1e6:.2f}" if b < 1e9 else f"{b / 1e9:.2f} G"


IMPL_ORDER = ("fused", "loop", "reference", "compiled", "torch_pruning", "torch_pruning_mag")


def markdown(results, title: str) -> str:
    env = results["environment"]
    lines = [f"# epi_fast benchmarks: {title}", ""]
    lines.append(f"- device: `{env['device']}`" + (f" ({env['gpu']})" if env.get("gpu") else "")
                 + f"; torch {env['torch']}, torchvision {env.get('torchvision')}, "
                   f"torch-pruning {env.get('torch_pruning')}; threads {env['threads']}; mode `{env['mode']}`")
    lines.append(f"- load average at start / end: {results.get('load_average_start')} / "
                 f"{results.get('load_average_end')}; wall {results.get('wall_seconds', 0):.0f} s")
    loads = [x[0] for x in (results.get("load_average_start"), results.get("load_average_end")) if x]
    # The run itself keeps `threads` cores busy, which the 1-minute load average at the end counts.
    if loads and max(loads) > env["threads"] + 1:
        lines.append(f"- **warning: the machine was shared during this run (1-minute load average up to "
                     f"{max(loads):.1f}, of which this run's {env['threads']} threads account for up to "
                     f"{env['threads']}): absolute times are inflated and noisy; the implementations were timed "
                     f"in interleaved rounds so that the ratios are less biased**")
    lines.append("- times: median of repeated runs (min and IQR in the JSON), implementations interleaved in "
                 "rounds; every timed call (the floor's too) runs right after an untimed call of itself, so it "
                 "starts from the warm caches of repeated calls (the target cases are also timed from cold "
                 "caches, below); floor = one `.sum()` over a flat tensor of the same bytes and dtype; "
                 "`floor frac` = floor time / time; `vs loop` = loop time / time; each round starts with "
                 "the next implementation, so none always follows the same one")
    lines.append("- targets: ratios taken within each round (e.g. fused time / floor time of the same round), "
                 "median over the rounds: load that drifts between rounds cancels in each quotient, where the "
                 "ratio of two medians keeps it (the tables show medians of times)")
    if env.get("cache_flush_bytes"):
        lines.append(f"- cold caches: {env['cache_flush_bytes'] / 2**20:.0f} MiB overwritten before each timed call "
                     f"(last-level cache {(env.get('last_level_cache_bytes') or 0) / 2**20:.0f} MiB)")
    if env.get("cpu_simd"):
        lines.append(f"- CPU row kernels: `{env['cpu_simd']}`")
    if results.get("skipped_for_time"):
        lines.append(f"- **left out to keep within the time budget (--budget-s): "
                     f"{'; '.join(results['skipped_for_time'])}**")
    lines += ["", "## Targets", "", "| target | value | goal | status | detail |", "| --- | --- | --- | --- | --- |"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | **{t['status']}** | {t['detail']} |")
    lines += ["", "## Workloads", "", "| workload | layers | channels | params | weights MB | dtype |",
              "| --- | --- | --- | --- | --- | --- |"]
    for w in results["workloads"]:
        lines.append(f"| {w['name']} | {w['layers']} | {w['channels']} | {w['params'] / 1e6:.2f} M | "
                     f"{_mb(w['weight_bytes'])} | {w['dtype']} |")
    lines += ["", "## Cases", "",
              "| workload | case | impl | median ms | min ms | IQR ms | GB/s | floor ms | floor frac | vs loop | agrees |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for c in results["cases"]:
        for impl in sorted(c["impls"], key=lambda k: IMPL_ORDER.index(k) if k in IMPL_ORDER else 99):
            s = c["impls"][impl]
            if "error" in s:
                lines.append(f"| {c['workload']} | {c['case']} | {impl} | error: {s['error'][:80]} |" + " |" * 7)
                continue
            agree = {True: "yes", False: "**NO**", None: "-"}[s.get("agree")]
            vs = s.get("speedup_vs_loop")
            lines.append(
                f"| {c['workload']} | {c['case']} | {impl} | {_ms(s['median_s'])} | {_ms(s['min_s'])} | "
                f"{_ms(s['iqr_s'])} | {s['GBps']:.2f} | {_ms(c['floor']['median_s'])} | "
                f"{s['floor_fraction']:.2f} | {'-' if vs is None else f'{vs:.2f}x'} | {agree} |")
        for n in c.get("notes", []):
            if n not in notes:
                notes.append(n)
    cold = [c for c in results["cases"] if "cold" in c]
    if cold:
        lines += ["", "## Cold caches", "",
                  "The target cases again, every timed call after overwriting twice the last-level cache "
                  "(untimed): data, interpreter and dispatcher state all start in DRAM, so fixed per-call costs "
                  "weigh several times what they do in a running loop.", "",
                  "| workload | case | fused ms | loop ms | floor ms | fused / floor (in-round) | "
                  "loop / fused (in-round) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in cold:
            cc = {"impls": c["cold"]["impls"], "floor": c["cold"]["floor"]}
            f = cc["impls"].get("fused", {}).get("median_s")
            lo = cc["impls"].get("loop", {}).get("median_s")
            fl = cc["floor"]["median_s"]
            lines.append(f"| {c['workload']} | {c['case']} | {_ms(f)} | {_ms(lo)} | {_ms(fl)} | "
                         f"{_vs_floor(cc):.2f}x | {_speedup(cc, 'loop'):.2f}x |" if f and lo else
                         f"| {c['workload']} | {c['case']} | - | - | {_ms(fl)} | - | - |")
    if results["memory"]:
        lines += ["", "## Peak extra memory of the fused epoch-end pipeline", ""]
        lines.append("Analytical: outputs (scores, masks, thresholds, counts) + global_masks' workspace. Measured on "
                     "CPU: peak-RSS delta around one call (VmHWM reset via /proc/self/clear_refs, glibc pinned to "
                     "mmap above 64 KiB); its resolution is a few MB (the kernel batches RSS counters), so ~0 means "
                     "'no large temporary': a copy of the weights would show in full.")
        lines += ["", "| workload | weights MB | analytical extra MB | measured extra MB | measured / weights | method |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m in results["memory"]:
            lines.append(f"| {m['workload']} | {_mb(m['weight_bytes'])} | {_mb(m['analytical_bytes'])} | "
                         f"{_mb(m['measured_bytes'])} | {m['measured_over_weights']:.3f} | {m['method']} |")
    gpu = results.get("gpu") or {}
    if gpu:
        lines += ["", "## GPU", ""]
        if "copy" in gpu:
            lines.append(f"- device-to-device copy bandwidth (read + write): {gpu['copy']['bandwidth_GBps']:.0f} GB/s")
        if "train_step_resnet50_b128_amp" in gpu:
            lines.append(f"- ResNet-50 training step, batch 128, AMP: "
                         f"{gpu['train_step_resnet50_b128_amp']['median_s'] * 1e3:.1f} ms")
        for h in gpu.get("huge_layers", []):
            lines.append(f"- layer {h['shape']} bf16 ({h['bytes'] / 2**30:.0f} GiB): fused "
                         f"{h['fused']['median_s'] * 1e3:.3f} ms, {h['fused_read_GBps']:.0f} GB/s read = "
                         f"{h['fraction_of_copy_bw']:.0%} of copy bandwidth; loop {h['loop']['median_s'] * 1e3:.3f} ms")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    if results.get("analysis"):
        lines += ["", "## Analysis", ""] + [f"- {a}" for a in results["analysis"]]
    return "\n".join(lines) + "\n"


def plot_png(results, title: str) -> bytes | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = {w["name"]: w for w in results["workloads"]}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    styles = {"fused": ("C0", "o"), "loop": ("C1", "s"), "reference": ("C2", "^"), "compiled": ("C4", "v"),
              "floor": ("k", "")}
    for ax, case_name, label in ((axes[0], "score_l2", "L2 channel scores"),
                                 (axes[1], "epoch_end_pipeline", "epoch-end pipeline (9 ratios)")):
        cs = [c for c in results["cases"] if c["case"] == case_name]
        mlp = sorted((c for c in cs if sizes[c["workload"]]["family"] == "mlp"),
                     key=lambda c: sizes[c["workload"]]["weight_bytes"])
        other = [c for c in cs if sizes[c["workload"]]["family"] != "mlp"]
        for impl, (color, marker) in styles.items():
            def t(c):
                return c["floor"]["median_s"] if impl == "floor" else c["impls"].get(impl, {}).get("median_s")
            pts = [(sizes[c["workload"]]["weight_bytes"] / 1e6, t(c)) for c in mlp if t(c)]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, [y * 1e3 for y in ys], color=color, marker=marker or None,
                        linestyle="--" if impl == "floor" else "-",
                        label=f"{impl} (MLP stack)" if impl != "floor" else "read floor (.sum)")
            for c in other:
                if t(c):
                    ax.scatter(sizes[c["workload"]]["weight_bytes"] / 1e6, t(c) * 1e3, color=color,
                               marker=marker or "_", s=50, edgecolors="k" if impl != "floor" else None,
                               linewidths=0.5)
        for c in other:
            x = sizes[c["workload"]]["weight_bytes"] / 1e6
            y = c["impls"].get("fused", {}).get("median_s")
            if y:
                ax.annotate(c["workload"], (x, y * 1e3), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("weight bytes (MB)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing to label when no MLP line was measured
            ax.legend(fontsize=7)
    fig.suptitle(f"{title} (lines: transformer MLP stack sweep; points: torchvision models)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def write_all(results, out_dir: Path, file_stem: str) -> list[Path]:
    title = f"{machine_name_from(results)} / {results['environment']['device']} / {results['environment']['mode']}"
    written = []
    path = out_dir / f"{file_stem}.json"
    write_atomic(path, (json.dumps(results, indent=1, default=str) + "\n").encode())
    written.append(path)
    path = out_dir / f"{file_stem}.md"
    write_atomic(path, markdown(results, title).encode())
    written.append(path)
    png = plot_png(results, title)
    if png is not None:
        path = out_dir / f"{file_stem}.png"
        write_atomic(path, png)
        written.append(path)
    return written


def machine_name_from(results) -> str:
    return results.get("machine", "?")
