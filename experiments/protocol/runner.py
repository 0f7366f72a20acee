"""Running the units: which to (re)run, in up to two processes, paused while benchmarks run;
then the tables, figures and summary of every setting from the unit files."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Tuple

from .analysis import aggregate
from .config import TRAIN, same_config, setting_tag, unit_config, unit_path
from .files import atomic_json, atomic_text, read_json
from .tables import cost_markdown, table_markdown

Job = Tuple[Dict[str, Any], str]


def plan_jobs(cfg: Dict[str, Any], mode: str, model: str, reduce: Dict[str, str], out: str,
              explicit_seeds: bool) -> List[Job]:
    """Every (setting, seed, criterion) unit of the run with its file path."""
    jobs = []
    for setting in cfg["settings"]:
        seeds = cfg["seeds"] if explicit_seeds else cfg.get("seeds_by_setting", {}).get(setting, cfg["seeds"])
        for seed in seeds:
            for crit in cfg["criteria"]:
                unit = unit_config(setting, seed, crit, cfg, mode, model, reduce)
                jobs.append((unit, unit_path(out, unit)))
    return jobs


def pending(jobs: List[Job]) -> List[Tuple[Job, str]]:
    """The jobs to run, each with why: no unit file, or one computed with another config."""
    todo = []
    for unit, path in jobs:
        stored = read_json(path)
        if stored is None:
            todo.append(((unit, path), "missing" if not os.path.exists(path) else "unreadable"))
        elif not same_config(stored.get("config"), unit):
            todo.append(((unit, path), "configuration changed"))
    return todo


def pause_during_benchmarks(pool):
    """Machine etiquette: while a kernel benchmark runs (`pgrep -f benchmarks`), the workers are
    stopped (SIGSTOP) so that they do not disturb its timings; they continue afterwards. The
    wall-clock numbers of an epoch are measured inside it, so a pause between epochs costs
    nothing but an epoch that straddles a pause is inflated (reported as measured)."""
    import signal
    import subprocess
    import threading

    stop = threading.Event()

    def signal_all(pids, sig) -> None:
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, TypeError):
                pass

    def loop():
        paused = False
        while not stop.wait(10):
            busy = subprocess.run(["pgrep", "-f", "benchmarks"], capture_output=True).returncode == 0
            pids = [p.pid for p in list(getattr(pool, "_pool", [])) if p.pid]
            if busy != paused:
                signal_all(pids, signal.SIGSTOP if busy else signal.SIGCONT)
                paused = busy
                state = "running: workers paused" if busy else "done: workers resumed"
                print(f"  [{time.strftime('%H:%M:%S')}] benchmarks {state}", flush=True)
            elif paused:
                signal_all(pids, signal.SIGSTOP)  # a worker started during the pause
        signal_all([p.pid for p in list(getattr(pool, "_pool", []))], signal.SIGCONT)

    threading.Thread(target=loop, daemon=True).start()
    return stop


def run_jobs(todo: List[Job], workers: int, yield_to_benchmarks: bool, t0: float) -> None:
    """Run the units: MNIST-1D's first, seed by seed (both criteria of a seed together), so that
    a run stopped part-way has whole paired seeds of the main setting."""
    from .branches import work

    todo = sorted(todo, key=lambda j: (j[0]["setting"] != "mnist1d", j[0]["setting"], j[0]["seed"], j[0]["criterion"]))
    workers = max(1, min(workers, 2, len(todo)))
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
            stop = pause_during_benchmarks(pool) if yield_to_benchmarks else None
            for msg in pool.imap_unordered(work, todo):
                print(f"  done {msg}  ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
            if stop is not None:
                stop.set()
    else:
        for job in todo:
            print(f"  done {work(job)}  ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)


def setting_results(setting: str, jobs: List[Job], out: str, timing_pass_wanted: bool):
    """(aggregate, markdown, figures) of one setting from its unit files; None without units."""
    from .figures import figures

    tag = setting_tag(setting)
    units = [u for unit, path in jobs if unit["setting"] == setting for u in [read_json(path)] if u is not None]
    if not units:
        return None
    tpath = os.path.join(out, f"timing_{tag}.json")
    if timing_pass_wanted and not os.path.exists(tpath):
        from .timing import timing_pass

        print(f"timing pass for {tag} ...", flush=True)
        atomic_json(tpath, timing_pass(units))
    agg = aggregate(units, tag, read_json(tpath))
    agg["data"] = units[0]["data"]
    agg["unit_seconds"] = sum(u["unit_seconds"] for u in units)
    figs = figures(units, tag, out)
    crits = ", ".join(sorted({u["config"]["criterion"] for u in units}))
    md = [f"## {tag}\n\n{units[0]['data']}; {len(units)} units ({crits}), {agg['unit_seconds'] / 60:.1f} CPU-minutes.\n",
          table_markdown(agg), cost_markdown(agg),
          "Figures: " + ", ".join(f"[{os.path.basename(f)}]({os.path.basename(f)})" for f in figs) + "\n"]
    return agg, md


def write_results(cfg: Dict[str, Any], mode: str, jobs: List[Job], out: str, timing: bool, command: str) -> str:
    """summary.json and tables.md of the run (and the figures, and the timing pass if asked)."""
    # An --aggregate-only pass keeps the command that ran the units (from the previous summary),
    # so that re-aggregating, e.g. to add the timing pass, does not hide how the units ran.
    previous = read_json(os.path.join(out, "summary.json")) or {}
    run_command = previous.get("run_command") if "--aggregate-only" in command.split() else None
    summary: Dict[str, Any] = {"mode": mode, "config": dict(cfg), "train": TRAIN, "settings": {},
                               "run_command": run_command or command}
    md = [f"# Protocol results ({mode} mode)\n", f"Command: `python -m experiments.protocol {run_command or command}`\n"]
    if run_command:
        md.append(f"Aggregated by: `python -m experiments.protocol {command}`\n")
    for setting in cfg["settings"]:
        res = setting_results(setting, jobs, out, timing)
        if res is None:
            continue
        agg, lines = res
        summary["settings"][setting_tag(setting)] = agg
        md += lines
    atomic_json(os.path.join(out, "summary.json"), summary)
    text = "\n".join(md)
    atomic_text(os.path.join(out, "tables.md"), text)
    return text
