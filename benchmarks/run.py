"""Runs the cases on every workload, the GPU-only measurements, the memory probes; collects one
result dictionary that report.py turns into JSON, markdown and a plot."""

from __future__ import annotations

import gc
import platform
import sys
import time
from dataclasses import dataclass, field, replace

import torch

from . import cases as C
from . import timing as T
from . import workloads as W


@dataclass
class Config:
    device: torch.device
    mode: str  # "quick", "full" or "smoke"
    threads: int = 2
    torchvision: list = field(default_factory=lambda: list(W.TORCHVISION))
    mlp_params: list = field(default_factory=list)
    tiny: bool = False
    budget: T.Budget = field(default_factory=T.Budget)
    compile_ref: bool = False
    gpu_extras: bool = False
    verbose: bool = True
    # time.monotonic() after which no new workload, case or GPU measurement starts (None: no
    # limit); what is left out is listed in the results' "skipped_for_time".
    deadline: float | None = None


def config_for(mode: str, device: torch.device, threads: int = 2, compile_ref: bool | None = None) -> Config:
    gpu = device.type == "cuda"
    if mode == "quick":
        mlp = [1e6, 3e6, 1e7, 3e7] if not gpu else [1e6, 1e7, 1e8, 1e9]
        budget = T.Budget(warmup=1, min_reps=5, max_reps=30, seconds=0.4)
    elif mode == "full":
        mlp = [1e6, 3e6, 1e7, 3e7, 1e8, 3e8] if not gpu else [1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9]
        budget = T.Budget(warmup=2, min_reps=7, max_reps=60, seconds=1.0)
    elif mode == "smoke":
        return Config(device, mode, threads, torchvision=[], mlp_params=[2e4], tiny=True,
                      budget=T.Budget(warmup=0, min_reps=1, max_reps=1, seconds=0.0),
                      compile_ref=False, gpu_extras=False, verbose=False)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return Config(device, mode, threads, mlp_params=mlp, budget=budget,
                  compile_ref=gpu if compile_ref is None else compile_ref, gpu_extras=gpu)


def _log(cfg: Config, msg: str) -> None:
    if cfg.verbose:
        print(msg, flush=True)


def _out_of_time(cfg: Config, results: dict, what: str) -> bool:
    """True (and `what` recorded as left out) once the deadline has passed."""
    if cfg.deadline is None or time.monotonic() < cfg.deadline:
        return False
    results.setdefault("skipped_for_time", []).append(what)
    _log(cfg, f"  out of time: {what} left out")
    return True


def _snapshot(out):
    # Accumulating implementations return their buffer: copy it before later calls add to it.
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_snapshot(x) for x in out)
    return out


# Cases timed a second time from cold caches, for the targets' figures.
COLD_CASES = ("score_l2", "epoch_end_pipeline", "epoch_end_tensors")


def _ratios(impls: dict, floor: dict) -> None:
    """Speed-up over the loop, and time over the floor and over each plain-PyTorch
    implementation, as ratios of medians and as medians of within-round ratios (`paired_*`)."""
    loop = impls.get("loop", {})
    for stats in impls.values():
        if "median_s" not in stats:
            continue
        if loop.get("median_s"):
            stats["speedup_vs_loop"] = loop["median_s"] / stats["median_s"]
        if stats.get("own_rounds"):
            continue  # timed in other rounds: nothing to pair with
        stats["paired_vs_floor"] = T.paired_ratio(stats, floor)
        for base in ("loop", "reference"):
            if impls.get(base, {}).get("median_s"):
                r = T.paired_ratio(impls[base], stats)
                stats[f"paired_speedup_vs_{base}"] = r


def run_case(case: C.Case, cfg: Config) -> dict:
    """Checks every implementation against the fused one on the same inputs, then times it."""
    dev = cfg.device
    result = {
        "case": case.name,
        "workload": case.workload,
        "bytes_read": case.bytes_read,
        "bytes_written": case.bytes_written,
        "notes": list(case.notes),
        **case.extra,
        "impls": {},
    }
    outputs = {}
    if case.before_check:
        case.before_check()
    for name, fn in case.impls.items():
        try:
            outputs[name] = _snapshot(fn())
        except Exception as err:  # noqa: BLE001 - record and carry on (e.g. a torch.compile failure)
            result["impls"][name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    T.sync(dev)
    agree = {}
    for name in outputs:
        if not name.startswith("torch_pruning") and "fused" in outputs:
            agree[name] = True if name == "fused" else bool(case.compare(outputs["fused"], outputs[name]))
    outputs.clear()
    # The floor is timed in the same rounds as the implementations (same load, same warm-up).
    flat = T.floor_tensor(case.bytes_read, case.floor_dtype, dev)
    fns = {"__floor__": lambda: flat.sum()}
    fns.update((k, v) for k, v in case.impls.items() if k not in result["impls"] and not k.startswith("torch_pruning"))
    timed = T.measure_interleaved(fns, dev, cfg.budget)
    # Torch-Pruning's importance takes 30-40x the fused time; in the same rounds it would cut
    # the others' rounds to a handful. It is timed in rounds of its own; no target uses it.
    slow = {k: v for k, v in case.impls.items() if k not in result["impls"] and k.startswith("torch_pruning")}
    if slow:
        timed.update({k: dict(v, own_rounds=True) for k, v in T.measure_interleaved(slow, dev, cfg.budget).items()})
    floor = timed.pop("__floor__")
    floor["bytes"] = flat.numel() * flat.element_size()
    result["floor"] = floor
    for name, stats in timed.items():
        stats["agree"] = agree.get(name)
        stats["GBps"] = case.bytes_read / stats["median_s"] / 1e9
        stats["floor_fraction"] = floor["median_s"] / stats["median_s"]
        result["impls"][name] = stats
    _ratios(result["impls"], floor)
    if case.name in COLD_CASES:
        # The same comparison from cold caches (see timing.py): fused, loop and floor only.
        cold_fns = {k: v for k, v in fns.items() if k in ("__floor__", "fused", "loop", "reference")}
        cold = T.measure_interleaved(cold_fns, dev, replace(cfg.budget, cache="cold", warmup=0))
        result["cold"] = {"floor": cold.pop("__floor__"), "impls": cold}
        _ratios(cold, result["cold"]["floor"])
    _log(cfg, "  {:<20} {}".format(case.name, "  ".join(
        f"{k}={v['median_s'] * 1e3:.3f}ms" if "median_s" in v else f"{k}=ERROR" for k, v in result["impls"].items()
    ) + f"  floor={floor['median_s'] * 1e3:.3f}ms"))
    return result


def _cases_for(w: W.Workload, cfg: Config) -> list:
    """Case builders, built lazily so that only one case's inputs (e.g. gradients) live at once."""
    compile_ref = cfg.compile_ref
    builders = []
    tp = None
    if w.family in ("torchvision", "tiny"):
        try:
            tp = C.torch_pruning_scoring(w)
        except Exception as err:  # noqa: BLE001
            tp = {"impls": {}, "note": f"torch_pruning failed: {type(err).__name__}: {err}"}
    builders.append(lambda: C.score_l2(w, compile_ref, tp))
    if w.bns:
        builders.append(lambda: C.score_bn_abs(w, False))
    builders.append(lambda: C.taylor(w, False))
    if w.family != "mlp":
        builders.append(lambda: C.global_masks_case(w, C.RATIO_1, False, C.fused.channel_scores(w.weights, "l2")))
        builders.append(lambda: C.global_masks_case(w, C.RATIOS_9, False, C.fused.channel_scores(w.weights, "l2")))
        builders.append(lambda: C.structure_stats(w, False, C.fused.channel_scores(w.weights, "l2")))
    builders.append(lambda: C.pipeline(w, compile_ref))
    builders.append(lambda: C.pipeline(w, False, epi=False))
    if w.module is not None:
        builders.append(lambda: C.group_reduce_case(w, False))
    return builders


def memory_probe(w: W.Workload, cfg: Config) -> dict:
    """Peak extra memory of the fused epoch-end pipeline: analytical outputs + workspace, and
    measured (CPU peak RSS / CUDA max_memory_allocated)."""
    sizes = w.sizes
    n, m, layers = sum(sizes), len(C.RATIOS_9), len(sizes)
    outputs = 4 * n + m * n + 4 * m + 8 * m * layers  # scores, masks, thresholds, counts
    # global_masks' CPU workspace: keys, removable keys and the selection pool (8 bytes each per
    # channel) plus one segment copy; the weights are read in place (they are contiguous).
    workspace = 24 * n + 8 * max(sizes)

    def fused_pipeline():
        s = C.fused.channel_scores(w.weights, "l2")
        masks, _ = C.fused.global_masks(s, C.RATIOS_9, sizes, C.MIN_KEEP)
        C.fused.layer_counts(masks, sizes).tolist()

    fused_pipeline()  # warm: first-call allocations (thread pools, dispatcher caches) are not the op's
    gc.collect()
    measured = T.peak_extra_memory(fused_pipeline, cfg.device)
    return {
        "workload": w.name,
        "weight_bytes": w.weight_bytes,
        "analytical_bytes": outputs + workspace,
        "analytical_outputs_bytes": outputs,
        "analytical_workspace_bytes": workspace if cfg.device.type == "cpu" else None,
        "measured_bytes": measured["bytes"],
        "method": measured["method"],
        "measured_over_weights": measured["bytes"] / w.weight_bytes,
    }


def gpu_train_step(cfg: Config) -> dict:
    """One ResNet-50 training step, batch 128, AMP (float16 autocast + GradScaler)."""
    import torchvision

    dev = cfg.device
    model = torchvision.models.resnet50(weights=None).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    x = torch.randn(128, 3, 224, 224, device=dev)
    y = torch.randint(0, 1000, (128,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    budget = T.Budget(warmup=3, min_reps=5, max_reps=20, seconds=3.0)
    stats = T.measure(step, dev, budget)
    del model, opt, x, y
    torch.cuda.empty_cache()
    return stats


def gpu_huge_layers(cfg: Config, copy_bw: float) -> list:
    """Single bfloat16 layers of 1 and 2 GiB scored with L2: fraction of the copy bandwidth."""
    out = []
    for rows in (32768, 65536):
        w = torch.empty(rows, 16384, dtype=torch.bfloat16, device=cfg.device).uniform_(-1, 1)
        nbytes = w.numel() * w.element_size()
        budget = T.Budget(warmup=2, min_reps=5, max_reps=30, seconds=1.0)
        fused_stats = T.measure(lambda: C.fused.channel_scores([w], "l2"), cfg.device, budget)
        loop_stats = T.measure(lambda: C.loop_l2_scores([w]), cfg.device, budget)
        read_bw = nbytes / fused_stats["median_s"] / 1e9
        out.append({
            "shape": list(w.shape), "dtype": "bfloat16", "bytes": nbytes,
            "fused": fused_stats, "loop": loop_stats,
            "fused_read_GBps": read_bw, "copy_GBps": copy_bw,
            "fraction_of_copy_bw": read_bw / copy_bw,
        })
        _log(cfg, f"  huge layer {tuple(w.shape)}: fused {fused_stats['median_s'] * 1e3:.3f} ms = "
                  f"{read_bw:.0f} GB/s ({read_bw / copy_bw:.0%} of copy bandwidth)")
        del w
        torch.cuda.empty_cache()
    return out


def _workloads(cfg: Config):
    dev = cfg.device
    if cfg.tiny:
        yield lambda: W.build_tiny(dev)
    for name in cfg.torchvision:
        yield lambda name=name: W.build_torchvision(name, dev)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    for p in cfg.mlp_params:
        yield lambda p=p: W.build_mlp(p, dev, dtype)


def environment(cfg: Config) -> dict:
    import epi_fast

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(cfg.device),
        "mode": cfg.mode,
        "compile_ref": cfg.compile_ref,
    }
    try:
        import torch_pruning
        env["torch_pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        env["torch_pruning"] = None
    try:
        import torchvision
        env["torchvision"] = torchvision.__version__
    except ImportError:
        env["torchvision"] = None
    try:
        env["epi_fast"] = epi_fast.info()
    except Exception as err:  # noqa: BLE001
        env["epi_fast"] = f"info() failed: {err}"
    if cfg.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(cfg.device)
    from epi_fast.ops._ext import _C

    env["cpu_simd"] = _C.cpu_simd()
    env["last_level_cache_bytes"] = T.last_level_cache_bytes(cfg.device)
    env["cache_flush_bytes"] = T.flush_bytes(cfg.device)
    return env


def run(cfg: Config) -> dict:
    torch.set_num_threads(cfg.threads)
    if cfg.compile_ref:
        import logging

        import torch._dynamo as dynamo

        # The reference's argument checks read tensors on the host: graph breaks, expected.
        logging.getLogger("torch._dynamo").setLevel(logging.ERROR)

        for knob in ("cache_size_limit", "recompile_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, 256)
    started = time.time()
    results = {"environment": environment(cfg), "load_average_start": T.load_average(),
               "workloads": [], "cases": [], "memory": [], "gpu": {}}
    if cfg.gpu_extras:
        copy = T.copy_bandwidth(cfg.device, T.Budget(warmup=3, min_reps=10, max_reps=50, seconds=1.0))
        results["gpu"]["copy"] = copy
        _log(cfg, f"copy bandwidth (read + write): {copy['bandwidth_GBps']:.0f} GB/s")
    kept = []
    for i, build in enumerate(_workloads(cfg)):
        if _out_of_time(cfg, results, f"workload {i + 1} and later"):
            break
        w = build()
        results["workloads"].append(w.describe())
        _log(cfg, f"{w.name}: {len(w.weights)} layers, {sum(w.sizes)} channels, "
                  f"{w.params / 1e6:.1f} M params, {w.weight_bytes / 1e6:.1f} MB")
        for j, make in enumerate(_cases_for(w, cfg)):
            if _out_of_time(cfg, results, f"{w.name}: case {j + 1} and later"):
                break
            case = make()
            if case is not None:
                results["cases"].append(run_case(case, cfg))
            del case
            gc.collect()
        if cfg.device.type == "cuda":
            results["memory"].append(memory_probe(w, cfg))
            torch.cuda.empty_cache()
        else:
            kept.append(w)
    if cfg.device.type == "cpu":
        # After every timing: the malloc setting would change the baselines' costs.
        pinned = T.pin_malloc_to_mmap()
        for w in kept:
            probe = memory_probe(w, cfg)
            probe["malloc_pinned_to_mmap"] = pinned
            results["memory"].append(probe)
    kept.clear()
    if cfg.gpu_extras and not _out_of_time(cfg, results, "the ResNet-50 AMP train step"):
        results["gpu"]["train_step_resnet50_b128_amp"] = gpu_train_step(cfg)
        _log(cfg, f"ResNet-50 AMP train step (batch 128): "
                  f"{results['gpu']['train_step_resnet50_b128_amp']['median_s'] * 1e3:.1f} ms")
    if cfg.gpu_extras and not _out_of_time(cfg, results, "the huge layers"):
        results["gpu"]["huge_layers"] = gpu_huge_layers(cfg, results["gpu"]["copy"]["bandwidth_GBps"])
    results["load_average_end"] = T.load_average()
    results["wall_seconds"] = time.time() - started
    return results
