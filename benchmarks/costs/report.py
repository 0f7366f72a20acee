"""Targets, markdown and the plot of the cost benchmarks."""

from __future__ import annotations

import io
import json
from pathlib import Path

from .. import report as base
from . import prune_time, training

PARTS = ("latency", "training", "prune")
TITLES = {"latency": "A. Latency of the pruned networks", "training": "B. The training EPI saves",
          "prune": "C. One prune against Torch-Pruning"}


def evaluate_targets(results: dict) -> list:
    parts = results.get("parts", {})
    rows = []
    if "training" in parts and "result" in parts["training"]:
        rows += training.targets(parts["training"]["result"])
    if "prune" in parts and "result" in parts["prune"]:
        rows += prune_time.targets(parts["prune"]["result"])
    return rows


def _ms(s):
    return "-" if s is None else f"{s * 1e3:.1f}"


def _load(part: dict) -> str:
    q = part.get("load", {})
    return (f"1/5/15-min load average {q.get('load_at_start')} at the start (waited {q.get('waited_s')} s for "
            f"< {q.get('threshold')}" + ("" if q.get("quiet", True) else ", gave up waiting") + f"), "
            f"{part.get('load_at_end')} at the end; {part.get('wall_s', 0):.0f} s; {part.get('finished', '?')}"
            + (f"; commit {part['commit']}" if part.get("commit") else ""))


def markdown(results: dict, title: str) -> str:
    env = results["environment"]
    lines = [f"# epi_fast cost benchmarks: {title}", ""]
    lines.append(f"- machine: {results.get('machine')} ({env.get('cpus')} CPUs visible), `torch.set_num_threads({env['threads']})`; "
                 f"torch {env['torch']}, torchvision {env.get('torchvision')}, torch-pruning {env.get('torch_pruning')}, "
                 f"epi_fast {env.get('epi_fast_version')} (commit {env.get('commit')}); mode `{results['mode']}`"
                 + (f"; allocator settings {env['malloc_env']}" if env.get("malloc_env") else "; glibc malloc defaults"))
    if results.get("kept_from_earlier_run"):
        lines.append(f"- parts kept from an earlier run of the same mode (`--only` ran the others): "
                     f"{', '.join(results['kept_from_earlier_run'])}; the environment above is the latest run's, "
                     "each part's own time and load are under its heading")
    lines.append("- each part waits (at most a set time) until the 1-minute load average is below its threshold, "
                 "and records the load it ran under; the machine is shared, so absolute times move between runs "
                 "and the ratios are taken within interleaved rounds")
    lines += ["", "## Targets", "", "| target | value | goal | status | detail |", "| --- | --- | --- | --- | --- |"]
    for t in results.get("targets", []):
        lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | **{t['status']}** | {t['detail']} |")
    parts = results.get("parts", {})
    for name in PARTS:
        if name not in parts:
            continue
        part = parts[name]
        lines += ["", f"## {TITLES[name]}", "", f"- {_load(part)}"]
        if "error" in part:
            lines.append(f"- **failed**: {part['error']}")
            continue
        lines += globals()[f"_md_{name}"](part["result"])
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _md_latency(r: dict) -> list:
    sizes = sorted({f"{row['input_size']}x{row['input_size']}" for row in r["models"].values()})
    lines = [f"- eval mode, `torch.no_grad()`, {r['threads']} threads, input {', '.join(sizes)}; "
             "pruned with `epi_fast.prune(model, ratio, x, criterion='l2', target='flops', round_to=...)` on a "
             "batch-1 input; every variant of a model timed in the same interleaved rounds as the dense model "
             "(one warm-up call each); speed-up = median over rounds of dense time / pruned time in the same round; "
             "FLOPs reduction = dense FLOPs / pruned FLOPs (FlopCounterMode); efficiency = speed-up / FLOPs reduction; "
             "page faults = median minor page faults per call (fresh memory the allocator had mapped)",
             "", "| model | variant | achieved FLOPs cut | FLOPs reduction | params | batch | median ms (IQR) | "
             "speed-up | efficiency | page faults |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, row in r["models"].items():
        for b, per in row["batches"].items():
            d = per["dense"]
            lines.append(f"| {model} | dense | - | 1.00 | {_params(row)} | {b} | {_ms(d['median_s'])} "
                         f"({_ms(d['q1_s'])}-{_ms(d['q3_s'])}) | 1.00 | 1.00 | {_faults(d)} |")
            for key, v in row["variants"].items():
                if "error" in v:
                    if b == next(iter(row["batches"])):
                        lines.append(f"| {model} | {key} | not reached | | | | {v['error'][:200]} | | | |")
                    continue
                s = per[key]
                lines.append(f"| {model} | {key} | {v['achieved']:.3f} | {v['flops_reduction']:.2f} | "
                             f"{_count(v['params_after'])} | {b} | {_ms(s['median_s'])} ({_ms(s['q1_s'])}-"
                             f"{_ms(s['q3_s'])}) | {s['speedup']:.2f} | {s['efficiency']:.2f} | {_faults(s)} |")
    return lines


def _faults(stats) -> str:
    f = stats.get("minor_faults")
    return "-" if f is None else f"{f:.0f}"


def _count(n) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _params(row):
    vs = [v for v in row["variants"].values() if "params_before" in v]
    return _count(vs[0]["params_before"]) if vs else "-"


def _md_training(r: dict) -> list:
    c = r["config"]
    d = r["dense"]
    kinds = sorted(d.get("step_op_s", {}), key=lambda k: -d["step_op_s"][k])
    lines = [f"- ResNetSmall widths {c['widths']}, blocks {c['blocks']}, on digits upsampled to "
             f"{c['input_size']}x{c['input_size']} ({r['train_samples']} training images, {r['steps_per_epoch']} steps "
             f"of batch {c['batch']} per epoch), {c['epochs']} epochs, SGD lr {c['lr']} (warm-up {c['warmup_epochs']} "
             f"epoch, cosine), seed {c['seed']}; EPIPruner ratio {c['ratio']}, target {c['target']!r}, default tau, "
             f"deadline {c['deadline_epoch']}; all runs trained side by side, one epoch each in turn",
             f"- dense: {d['total_s']:.1f} s, step FLOPs {d['step_flops'] / 1e9:.2f} G (forward + backward, batch "
             f"{c['batch']}), one step {d['step_s'] * 1e3:.0f} ms, top-1 {d['top1']:.3f}"]
    if "dense_twin" in r:
        tw = r["dense_twin"]
        lines.append(f"- control: the same dense run a second time, side by side: {tw['total_s']:.1f} s = "
                     f"{tw['wall_ratio_in_round']:.3f}x the dense run in-round ({tw['wall_ratio']:.3f}x from the sums "
                     "of times): the noise floor of the wall-clock ratios")
    if c.get("round_to_runs"):
        lines.append(f"- the runs named '..., round_to=N' prune with round_to N (every pruned layer keeps a multiple of "
                     f"N channels); the others with the default (None)")
    for name, f in r.get("failed_runs", {}).items():
        lines.append(f"- **{name} stopped** after {f['epochs_done']} epochs: {f['error']}")
    lines += ["", "| run | tau | prune epoch (reason) | wall s | wall / dense: in-round (sums of times) | speed-up: "
              "in-round (sums) | training FLOPs / dense = predicted wall / dense | measured / predicted: in-round "
              "(sums) | step FLOPs f | epochs after the prune / dense (in-round median) | step time / dense (final "
              "nets) | EPI's own work | kept output channels | top-1 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for crit, x in r["runs"].items():
        lines.append(f"| {crit} | {x['tau']} | {x['prune_epoch']} ({x['prune_reason']}) | {x['total_s']:.1f} | "
                     f"{x['wall_ratio_in_round']:.3f} ({x['wall_ratio']:.3f}) | {x['speedup_in_round']:.2f}x "
                     f"({x['speedup']:.2f}x) | {x['predicted_wall_ratio']:.3f} | "
                     f"{x['measured_over_predicted_in_round']:.3f} ({x['measured_over_predicted']:.3f}) | "
                     f"{x['step_flops_ratio']:.3f} | {_f3(x.get('epoch_ratio_after_prune_in_round'))} | "
                     f"{_f3(x.get('step_time_ratio'))} | {x['epi_share']:.3%} "
                     f"({x['epi_work_s']:.3f} s: " + ", ".join(f"{k} {v:.3f}" for k, v in x["epi_s"].items())
                     + f") | {x['kept']} | {x['top1']:.3f} |")
    lines.append("- in-round: each epoch's time over the dense run's epoch trained in the same round; the wall-clock "
                 "ratio is the median quotient before the prune (its epoch included) and the median after it, "
                 "weighted by their epoch counts, plus the pruner's construction; a burst of load from elsewhere "
                 "that hits a few rounds moves it little, the ratio of the sums of times (in brackets) a lot; the "
                 "targets use the in-round figures")
    lines.append("- step time / dense: the final networks' training steps (forward, backward, SGD step, batch "
                 f"{c['batch']}) timed side by side after training, median of {c['step_rounds']} in-round ratios; "
                 "kept output channels: the pruned network's conv layers in model order (dense: "
                 f"{_dense_widths(c)})")
    lines += ["", "Time of one training step by kind of aten op (forward, backward and optimizer ops, timed one by "
              "one under a dispatch mode), the final networks; FLOPs ratio of the convolutions beside:", "",
              "| run | " + " | ".join(kinds) + " | conv FLOPs / dense |", "| --- |" + " --- |" * (len(kinds) + 1)]
    lines.append("| dense (ms) | " + " | ".join(f"{d['step_op_s'].get(k, 0) * 1e3:.1f}" for k in kinds) + " | 1.000 |")
    for name, x in r["runs"].items():
        lines.append(f"| {name} (/ dense) | " + " | ".join(
            f"{x['step_op_ratio'][k]:.3f}" if k in x["step_op_ratio"] else "-" for k in kinds)
            + f" | {x['conv_flops_ratio']:.3f} |")
    lines += ["", f"- the paper reports a {training.PAPER_SPEEDUP}x training speed-up; the absolute speed-ups above "
              "are dense wall clock / EPI wall clock on this workload"]
    return lines


def _f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def _dense_widths(c) -> list:
    out = [c["widths"][0]]
    cin = c["widths"][0]
    for i, (w, n) in enumerate(zip(c["widths"], c["blocks"])):
        for j in range(n):
            out += [w, w] + ([w] if (i > 0 and j == 0) or cin != w else [])
            cin = w
    return out


def _md_prune(r: dict) -> list:
    lines = [f"- `epi_fast.prune(model, {r['ratio']}, x, criterion='l2')` against Torch-Pruning {r['torch_pruning']}'s "
             f"`MagnitudePruner(model, x, importance=MagnitudeImportance(p=2), pruning_ratio={r['ratio']}, "
             "global_pruning=True, ignored_layers=[classifier])` + `step()`, each from a fresh deep copy (made "
             "outside the timing) to the pruned model, graph construction included; interleaved rounds, a garbage "
             "collection before each call; x = one image (224x224 for the torchvision models)",
             "", "| model | epi_fast median ms (IQR) | Torch-Pruning median ms (IQR) | epi_fast / TP (in-round) | "
             "ratio of medians | rounds | params before | after epi_fast | after TP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, x in r["models"].items():
        e, t = x["epi_fast"], x["torch_pruning"]
        lines.append(f"| {model} | {_ms(e['median_s'])} ({_ms(e['q1_s'])}-{_ms(e['q3_s'])}) | {_ms(t['median_s'])} "
                     f"({_ms(t['q1_s'])}-{_ms(t['q3_s'])}) | {x['ratio_paired']:.2f}x | {x['ratio_of_medians']:.2f}x | "
                     f"{e['reps']} | {_count(x['params_before'])} | {_count(x['params_after_epi_fast'])} | "
                     f"{_count(x['params_after_torch_pruning'])} |")
    lines.append("- the two do not prune to the same network (parameters after each above): the comparison is of "
                 "the time from a model to a pruned model by each library's own rule")
    return lines


def plot_png(results: dict, title: str):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    parts = {k: v["result"] for k, v in results.get("parts", {}).items() if "result" in v}
    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    ax = axes[0]
    lat = parts.get("latency")
    if lat:
        markers = {"1": "o", "32": "s"}
        top = 1.0
        for i, (model, row) in enumerate(lat["models"].items()):
            for b, per in row["batches"].items():
                pts = [(row["variants"][k]["flops_reduction"], s["speedup"]) for k, s in per.items()
                       if k != "dense" and "flops_reduction" in row["variants"].get(k, {})]
                if pts:
                    xs, ys = zip(*pts)
                    top = max(top, max(xs), max(ys))
                    ax.scatter(xs, ys, color=f"C{i}", marker=markers.get(b, "^"), label=f"{model}, batch {b}")
        ax.plot([1, top], [1, top], "k--", lw=0.8, label="speed-up = FLOPs reduction")
        ax.set_xlabel("FLOPs reduction (dense / pruned)")
        ax.set_ylabel("speed-up (dense latency / pruned latency)")
        ax.legend(fontsize=7)
    ax.set_title("A. latency vs FLOPs")
    ax.grid(alpha=0.3)
    ax = axes[1]
    tr = parts.get("training")
    if tr:
        import itertools

        dense_s = tr["dense"]["epoch_s"]
        cum = list(itertools.accumulate(dense_s))
        ax.plot(range(1, len(cum) + 1), cum, "k-", label="dense")
        if "dense_twin" in tr:
            twin = list(itertools.accumulate(tr["dense_twin"]["epoch_s"]))
            ax.plot(range(1, len(twin) + 1), twin, color="0.6", lw=0.8, label="dense twin (control)")
        for i, (crit, x) in enumerate(tr["runs"].items()):
            cum = list(itertools.accumulate(x["epoch_s"]))
            ax.plot(range(1, len(cum) + 1), cum, color=f"C{i}",
                    label=f"EPI {crit} (pruned at {x['prune_epoch']}, {x['prune_reason']})")
            tp = x["prune_epoch"]
            if tp:
                # What the FLOPs predict: the dense run's epochs until the prune, then f of them.
                pred = list(itertools.accumulate(
                    t if e < tp else t * x["step_flops_ratio"] for e, t in enumerate(dense_s)))
                ax.plot(range(1, len(pred) + 1), pred, color=f"C{i}", ls="--", lw=0.8)
                ax.axvline(tp, color=f"C{i}", ls=":", lw=0.8)
        ax.plot([], [], "k--", lw=0.8, label="dashed: predicted by FLOPs")
        ax.set_xlabel("epoch")
        ax.set_ylabel("cumulative wall clock (s)")
        ax.legend(fontsize=7)
    ax.set_title("B. training wall clock")
    ax.grid(alpha=0.3)
    ax = axes[2]
    pr = parts.get("prune")
    if pr:
        names = list(pr["models"])
        e = [pr["models"][n]["epi_fast"]["median_s"] * 1e3 for n in names]
        t = [pr["models"][n]["torch_pruning"]["median_s"] * 1e3 for n in names]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], e, 0.4, label="epi_fast.prune")
        ax.bar([x + 0.2 for x in xs], t, 0.4, label="Torch-Pruning MagnitudePruner")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names)
        ax.set_ylabel("median time, model to pruned model (ms)")
        ax.legend(fontsize=7)
    ax.set_title("C. one prune")
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_all(results: dict, out_dir: Path, stem: str) -> list:
    title = f"{results.get('machine')} / cpu / {results['mode']}"
    written = []
    path = out_dir / f"{stem}.json"
    base.write_atomic(path, (json.dumps(results, indent=1, default=str) + "\n").encode())
    written.append(path)
    path = out_dir / f"{stem}.md"
    base.write_atomic(path, markdown(results, title).encode())
    written.append(path)
    png = plot_png(results, title)
    if png is not None:
        path = out_dir / f"{stem}.png"
        base.write_atomic(path, png)
        written.append(path)
    return written


def main(argv=None) -> int:
    """python -m benchmarks.costs.report RESULTS.json: write the markdown and the plot again from
    a results file (e.g. after a change of the report's layout), beside it."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.costs.report", description=main.__doc__.splitlines()[0])
    p.add_argument("json", type=Path)
    args = p.parse_args(argv)
    results = json.loads(args.json.read_text())
    results["targets"] = evaluate_targets(results)
    for path in write_all(results, args.json.parent, args.json.stem):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
