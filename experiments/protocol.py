"""The paper's "when to prune" protocol at small scale: oracle / init / pre-def / EPI.

    python -m experiments.protocol --smoke            # < 60 s, for the test suite
    python -m experiments.protocol --quick            # < 5 min on 2 CPU cores
    python -m experiments.protocol --full             # the reproduction (docs/REPRODUCTION.md)
    python -m experiments.protocol --full --data /path/to/cifar-10-batches-py   # real data

How it works (grid search as it is done in practice). For every (setting, seed, criterion)
the dense network is trained ONCE for T epochs. After every epoch t (and at initialisation,
t = 0) the protocol stores the whole training state (model, optimizer, LR-schedule position,
RNG of the data order and of torch) and the criterion's neuron scores, and feeds the
structures of every tracked ratio to one `EarlyPruningIndicator` per ratio (plus an
`EarlyBirdIndicator` per ratio and the rank correlations of consecutive scores, App. D).
Every pruned run is then a *branch*: the stored state of epoch e is restored, the network is
pruned with `epi_fast.surgery.prune` at the ratio with the criterion's scores of epoch e
(optimizer carried over), and trained to T on the same schedule. The dense trajectory up to
EPI's firing epoch is the EPI-guided run's trajectory, so EPI's run is the branch at its
firing epoch.

Policies (per ratio):
  oracle   best final top-1 over the branches at the candidate epochs (per seed)
  init     branch at e = 0
  predef   branch at a pre-defined epoch fixed before training (default round(T / 3))
  epi      branch at EPI's firing epoch (window 5, patience 5, tau 0.983 magnitude /
           0.944 gradient); if EPI has not fired by the deadline (default T // 2) it prunes
           there, as EPIPruner(deadline_epoch=...) does, and the table marks it.

Every unit of work writes one JSON file under <out>/units/ (atomically); a rerun skips the
units that exist, so an interrupted run resumes. `--aggregate-only` rebuilds the tables and
figures from the unit files.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")

MODES: Dict[str, Dict[str, Any]] = {
    # < 60 s: one seed, one ratio, a 256-image training subset, 6 epochs.
    "smoke": dict(epochs=6, seeds=[0], ratios=[0.5], criteria=["magnitude", "gradient"], candidates=[0, 3],
                  predef=3, deadline=None, train_subset=256, settings=["digits"], window=3, patience=3),
    # < 5 min: 2 seeds, 2 ratios, 12 epochs.
    "quick": dict(epochs=12, seeds=[0, 1], ratios=[0.5, 0.9], criteria=["magnitude", "gradient"],
                  candidates=[0, 2, 4, 6, 8], predef=4, deadline=None, train_subset=None,
                  settings=["digits"], window=5, patience=5),
    "full": dict(epochs=30, seeds=[0, 1, 2], ratios=[0.3, 0.5, 0.7, 0.9], criteria=["magnitude", "gradient"],
                 candidates=[0, 2, 4, 6, 8, 10, 12, 15, 20, 25], predef=10, deadline=None, train_subset=None,
                 settings=["digits", "digits-hard"], window=5, patience=5,
                 seeds_by_setting={"digits-hard": [0, 1, 2, 3, 4]}),
}

TAU = {"magnitude": 0.983, "gradient": 0.944}
TRAIN = dict(batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4, warmup_epochs=1)
# The harder task (documented in docs/REPRODUCTION.md): digits with a 400-image training
# subset, 20% of the training labels flipped to another class, Gaussian pixel noise (sigma 0.6
# of the standardised scale) and one 4x4 occluding patch per image (train and test alike).
HARD = dict(train_subset=400, label_noise=0.2, pixel_noise=0.6, occlusion=4)


# -- small pieces shared with the main job (epi_fast/cli.py), with local fallbacks ----------------

def _lr_lambda(total_steps: int, warmup_steps: int):
    try:
        from epi_fast.app.cli import _lr_lambda as f  # the main job's schedule
        return f(total_steps, warmup_steps)
    except Exception:  # cli.py is being written by others; same formula
        def g(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return g


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _atomic_json(path: str, obj: Any) -> None:
    from epi_fast._io import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, obj)


def _atomic_text(path: str, text: str) -> None:
    from epi_fast._io import write_bytes

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_bytes(path, text.encode("utf-8"))


# -- data ------------------------------------------------------------------------------------------

class Tensors:
    """A whole split as tensors (x float32 [n, C, H, W], y int64 [n])."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)


def _to_tensors(ds) -> Tensors:
    import torch
    from torch.utils.data import TensorDataset

    if isinstance(ds, TensorDataset):
        return Tensors(ds.tensors[0].float(), ds.tensors[1].long())
    if hasattr(ds, "images") and hasattr(ds, "labels") and hasattr(ds, "mean"):  # CIFAR-10 uint8 batches
        x = ds.images.float().div_(255.0).sub_(ds.mean).div_(ds.std)
        return Tensors(x, ds.labels.long())
    xs, ys = [], []
    for i in range(len(ds)):  # an ImageFolder: decoded once, held in memory
        x, y = ds[i]
        xs.append(x)
        ys.append(int(y))
    return Tensors(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))


def load_setting(setting: str, seed: int, train_subset: Optional[int] = None):
    """(train Tensors, test Tensors, num_classes, in_channels, input (H, W), description)."""
    import torch
    from epi_fast.app.data import load_dataset

    if setting in ("digits", "digits-hard"):
        bundle = load_dataset("digits", seed=seed)
    else:
        bundle = load_dataset(setting, seed=seed)
    train, test = _to_tensors(bundle.train), _to_tensors(bundle.test)
    desc = f"{bundle.name}: {len(train)} train / {len(test)} test images, split by seed"
    rng = np.random.default_rng(10_000 + seed)
    subset = HARD["train_subset"] if setting == "digits-hard" else None
    subset = train_subset or subset
    if subset and subset < len(train):
        idx = torch.from_numpy(np.sort(rng.permutation(len(train))[:subset]))
        train = Tensors(train.x[idx], train.y[idx])
        desc += f"; training subset of {subset}"
    if setting == "digits-hard":
        k = bundle.num_classes
        y = train.y.clone()
        flip = torch.from_numpy(rng.random(len(y)) < HARD["label_noise"])
        shift = torch.from_numpy(rng.integers(1, k, size=len(y)))
        y[flip] = (y[flip] + shift[flip]) % k
        train = Tensors(train.x, y)

        def corrupt(t: Tensors) -> Tensors:
            x = t.x.clone()
            n, _, h, w = x.shape
            x += HARD["pixel_noise"] * torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
            s = HARD["occlusion"]
            r0 = rng.integers(0, h - s + 1, size=n)
            c0 = rng.integers(0, w - s + 1, size=n)
            bg = float(t.x.min())
            for i in range(n):
                x[i, :, r0[i]:r0[i] + s, c0[i]:c0[i] + s] = bg
            return Tensors(x, t.y)

        train, test = corrupt(train), corrupt(test)
        desc += (f"; {int(flip.sum())} of {len(y)} training labels flipped ({HARD['label_noise']:.0%}), "
                 f"pixel noise sigma {HARD['pixel_noise']}, one {HARD['occlusion']}x{HARD['occlusion']} occlusion per image")
    return train, test, bundle.num_classes, bundle.in_channels, tuple(bundle.input_size), desc


# -- training pieces -------------------------------------------------------------------------------

def make_optimizer(model):
    import torch

    # As in the main job: no weight decay on BatchNorm parameters and biases.
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": TRAIN["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=TRAIN["lr"], momentum=TRAIN["momentum"], nesterov=TRAIN["momentum"] > 0,
    )


def make_scheduler(optimizer, epochs: int, steps_per_epoch: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(epochs * steps_per_epoch, TRAIN["warmup_epochs"] * steps_per_epoch)
    )


def steps_per_epoch(n: int) -> int:
    bs = TRAIN["batch_size"]
    return n // bs if n > bs else 1  # drop_last as in the main job


def train_epoch(model, optimizer, scheduler, data: Tensors, gen, accumulate=None) -> float:
    import torch
    import torch.nn.functional as F

    model.train()
    bs = TRAIN["batch_size"]
    perm = torch.randperm(len(data), generator=gen)
    loss_sum = 0.0
    steps = steps_per_epoch(len(data))
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        x, y = data.x[idx], data.y[idx]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if accumulate is not None:
            accumulate()
        optimizer.step()
        scheduler.step()
        loss_sum += float(loss.detach())
    return loss_sum / steps


def evaluate(model, data: Tensors) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), 512):
            correct += int((model(data.x[i:i + 512]).argmax(1) == data.y[i:i + 512]).sum())
    model.train()
    return correct / max(1, len(data))


def taylor_scores_at_init(model, data: Tensors, example, reduce: str = "sum") -> "torch.Tensor":
    """Gradient scores at t = 0: first-order Taylor averaged over one ordered pass of the training
    set with the initial weights and no update (on a copy, so nothing of the run changes)."""
    import torch.nn.functional as F
    from epi_fast.layout import group_layout
    from epi_fast.criteria import TaylorAccumulator

    m = copy.deepcopy(model)
    m.train()
    layout = group_layout(m, example)
    acc = TaylorAccumulator(layout)
    bs = TRAIN["batch_size"]
    for i in range(steps_per_epoch(len(data))):
        x, y = data.x[i * bs:(i + 1) * bs], data.y[i * bs:(i + 1) * bs]
        m.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        acc.step()
    return acc.scores(reduce=reduce).clone()


def _spearman_kendall(a, b) -> Tuple[float, float]:
    from scipy.stats import kendalltau, spearmanr

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    s = spearmanr(a, b).statistic
    k = kendalltau(a, b).statistic
    return float(s), float(k)


# -- one unit: dense run + branches ------------------------------------------------------------------

def run_unit(cfg: Dict[str, Any]) -> Dict[str, Any]:
    import torch
    from epi_fast import global_masks_counts
    from epi_fast.layout import group_layout
    from epi_fast.indicator import EarlyBirdIndicator, EarlyPruningIndicator, update_indicators
    from epi_fast.models import build_model
    from epi_fast.criteria import TaylorAccumulator, magnitude_scores
    from epi_fast.surgery import count_ops, prune

    torch.set_num_threads(1)
    setting, seed, crit = cfg["setting"], cfg["seed"], cfg["criterion"]
    T, ratios = cfg["epochs"], list(cfg["ratios"])
    tau = TAU[crit]
    t_unit = time.perf_counter()
    train, test, k, cin, hw, desc = load_setting(setting, seed, cfg.get("train_subset"))
    example = torch.zeros(1, cin, *hw)
    spe = steps_per_epoch(len(train))
    samples_per_epoch = spe * TRAIN["batch_size"] if len(train) > TRAIN["batch_size"] else len(train)

    def new_model():
        return build_model(cfg["model"], num_classes=k, in_channels=cin, **cfg.get("model_kwargs", {}))

    # ---- the dense run ----
    _seed_everything(seed)
    model = new_model()
    dense_ops = count_ops(model, example)
    opt = make_optimizer(model)
    sched = make_scheduler(opt, T, spe)
    gen = torch.Generator().manual_seed(seed)
    layout = group_layout(model, example)
    acc = TaylorAccumulator(layout) if crit == "gradient" else None

    def scores_now():
        if acc is None:
            return magnitude_scores(layout, "magnitude", reduce=cfg["reduce"]["magnitude"]).clone()
        s = acc.scores(reduce=cfg["reduce"]["gradient"]).clone()
        acc.reset()
        return s

    def snapshot():
        return {
            "model": copy.deepcopy(model.state_dict()),
            "opt": copy.deepcopy(opt.state_dict()),
            "sched": copy.deepcopy(sched.state_dict()),
            "gen": gen.get_state().clone(),
            "torch_rng": torch.get_rng_state().clone(),
        }

    epi = {r: EarlyPruningIndicator(window=cfg["window"], tau=tau, patience=cfg["patience"]) for r in ratios}
    eb = {r: EarlyBirdIndicator(window=5, eps=0.1) for r in ratios}
    states, scores_by_epoch = {}, {}
    spearman, kendall, structures = [None], [None], {r: [] for r in ratios}
    dense_top1, dense_sec, score_sec = [evaluate(model, test)], [], []

    def observe(t: int, scores):
        t0 = time.perf_counter()
        masks, _, groups = global_masks_counts(scores, ratios, layout.group_sizes, 1)
        counts = layout.structure_from_counts(groups)
        update_indicators([epi[r] for r in ratios], counts)
        for i, r in enumerate(ratios):
            structures[r].append([int(c) for c in counts[i].tolist()])
        elapsed = time.perf_counter() - t0
        for i, r in enumerate(ratios):
            eb[r].update(masks[i])
        scores_by_epoch[t] = scores
        if t > 0:
            s, kd = _spearman_kendall(scores_by_epoch[t - 1], scores)
            spearman.append(s)
            kendall.append(kd)
        return elapsed

    s0 = taylor_scores_at_init(model, train, example, cfg["reduce"]["gradient"]) if crit == "gradient" else scores_now()
    states[0] = snapshot()
    observe(0, s0)
    for t in range(1, T + 1):
        t0 = time.perf_counter()
        train_epoch(model, opt, sched, train, gen, accumulate=(acc.step if acc is not None else None))
        dense_sec.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        s = scores_now()
        extra = time.perf_counter() - t1
        score_sec.append(extra + observe(t, s))
        dense_top1.append(evaluate(model, test))
        if t < T:
            states[t] = snapshot()
    fired = {r: epi[r].fired_epoch for r in ratios}
    eb_fired = {r: eb[r].fired_epoch for r in ratios}
    deadline = cfg["deadline"] if cfg.get("deadline") is not None else T // 2
    epi_epoch, epi_reason = {}, {}
    for r in ratios:
        if fired[r] is not None and fired[r] <= deadline:
            epi_epoch[r], epi_reason[r] = fired[r], "epi"
        else:
            epi_epoch[r], epi_reason[r] = deadline, "deadline"

    # ---- the branches ----
    branches: Dict[str, Dict[str, Any]] = {}
    for r in ratios:
        todo = sorted(set(cfg["candidates"]) | {cfg["predef"], epi_epoch[r]})
        out_r = {}
        for e in todo:
            st = states[e]
            m = new_model()
            m.load_state_dict(st["model"])
            o = make_optimizer(m)
            sc = make_scheduler(o, T, spe)
            o.load_state_dict(st["opt"])
            sc.load_state_dict(st["sched"])
            g = torch.Generator()
            g.set_state(st["gen"])
            torch.set_rng_state(st["torch_rng"])
            t0 = time.perf_counter()
            rep = prune(m, r, example, criterion="taylor" if crit == "gradient" else "magnitude",
                        scores=scores_by_epoch[e], optimizer=o)
            prune_sec = time.perf_counter() - t0
            secs, top1_curve = [], []
            for _ in range(e + 1, T + 1):
                t0 = time.perf_counter()
                loss = train_epoch(m, o, sc, train, g)
                secs.append(time.perf_counter() - t0)
                if cfg.get("branch_curves"):
                    top1_curve.append(evaluate(m, test))
            top1 = evaluate(m, test)
            out_r[str(e)] = {
                "top1": top1, "final_loss": loss if secs else None,
                "flops_after": rep["flops_after"], "params_after": rep["params_after"],
                "kept": rep["kept"], "epoch_seconds": float(np.mean(secs)) if secs else None,
                "prune_seconds": prune_sec, "top1_curve": top1_curve or None,
            }
        branches[repr(r)] = out_r
    return {
        "config": cfg,
        "data": desc,
        "train_size": len(train), "test_size": len(test), "samples_per_epoch": samples_per_epoch,
        "tau": tau, "deadline": deadline,
        "dense": {"top1": dense_top1, "top1_final": dense_top1[-1], "epoch_seconds": dense_sec,
                  "score_seconds": score_sec, "flops": dense_ops["flops"], "params": dense_ops["params"]},
        "layers": list(layout.layers),
        "epi": {repr(r): epi[r].history for r in ratios},
        "epi_fired": {repr(r): fired[r] for r in ratios},
        "epi_epoch": {repr(r): epi_epoch[r] for r in ratios},
        "epi_reason": {repr(r): epi_reason[r] for r in ratios},
        "structures": {repr(r): structures[r] for r in ratios},
        "early_bird": {repr(r): eb[r].history for r in ratios},
        "early_bird_fired": {repr(r): eb_fired[r] for r in ratios},
        "spearman": spearman, "kendall": kendall,
        "branches": branches,
        "unit_seconds": time.perf_counter() - t_unit,
    }


def _unit_path(out: str, cfg: Dict[str, Any]) -> str:
    return os.path.join(out, "units", f"{cfg['setting_tag']}__{cfg['criterion']}__seed{cfg['seed']}.json")


def _work(args) -> str:
    cfg, path = args
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    res = run_unit(cfg)
    _atomic_json(path, res)
    return f"{os.path.basename(path)}: {time.perf_counter() - t0:.0f} s"


# -- aggregation ------------------------------------------------------------------------------------

def _ms(values: Sequence[float], scale: float = 100.0) -> Tuple[float, float]:
    v = np.asarray(values, dtype=np.float64) * scale
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _fmt(m: float, s: float) -> str:
    return f"{m:.2f} ± {s:.2f}"


def aggregate(units: List[Dict[str, Any]], setting: str, timing: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Numbers of the tables for one setting, from its unit results."""
    out: Dict[str, Any] = {"setting": setting, "criteria": {}}
    for crit in sorted({u["config"]["criterion"] for u in units}):
        us = sorted([u for u in units if u["config"]["criterion"] == crit], key=lambda u: u["config"]["seed"])
        cfg = us[0]["config"]
        T, cands, predef = cfg["epochs"], cfg["candidates"], cfg["predef"]
        rows = {}
        for rk in us[0]["branches"]:
            per_seed = []
            for u in us:
                b = u["branches"][rk]
                grid = {int(e): b[str(e)]["top1"] for e in cands}
                best_e = max(grid, key=lambda e: (grid[e], -e))  # ties: the earlier (cheaper) epoch
                ee = u["epi_epoch"][rk]
                per_seed.append({
                    "seed": u["config"]["seed"], "oracle": grid[best_e], "oracle_epoch": best_e,
                    "init": b["0"]["top1"], "predef": b[str(predef)]["top1"], "epi": b[str(ee)]["top1"],
                    "epi_epoch": ee, "epi_reason": u["epi_reason"][rk], "grid": grid,
                    "dense": u["dense"]["top1_final"],
                })
            # The per-seed oracle takes a max over noisy runs (optimistic); also report the epoch
            # that is best on the mean over seeds, evaluated per seed.
            mean_grid = {e: np.mean([p["grid"][e] for p in per_seed]) for e in cands}
            e_star = max(mean_grid, key=lambda e: (mean_grid[e], -e))
            row = {}
            for pol in ("oracle", "init", "predef", "epi", "dense"):
                vals = [p[pol] for p in per_seed]
                row[pol] = {"mean": _ms(vals)[0], "std": _ms(vals)[1], "values": [100 * v for v in vals]}
            row["oracle_meanselected"] = {"epoch": e_star, "mean": _ms([p["grid"][e_star] for p in per_seed])[0],
                                          "std": _ms([p["grid"][e_star] for p in per_seed])[1]}
            for pol in ("init", "predef", "epi"):
                d = [p["oracle"] - p[pol] for p in per_seed]
                row[f"drop_{pol}"] = {"mean": _ms(d)[0], "std": _ms(d)[1]}
            row["epi_epochs"] = [p["epi_epoch"] for p in per_seed]
            row["epi_reasons"] = [p["epi_reason"] for p in per_seed]
            row["oracle_epochs"] = [p["oracle_epoch"] for p in per_seed]
            row["grid_mean"] = {str(e): 100 * mean_grid[e] for e in cands}
            row["grid_std"] = {str(e): _ms([p["grid"][e] for p in per_seed])[1] for e in cands}
            row["per_seed"] = per_seed
            row["early_bird_fired"] = [u["early_bird_fired"][rk] for u in us]
            rows[rk] = row
        avg = {pol: float(np.mean([rows[rk][f"drop_{pol}"]["mean"] for rk in rows])) for pol in ("init", "predef", "epi")}
        out["criteria"][crit] = {"T": T, "candidates": cands, "predef": predef, "tau": us[0]["tau"],
                                 "reduce": us[0]["config"]["reduce"][crit],
                                 "deadline": us[0]["deadline"], "seeds": [u["config"]["seed"] for u in us],
                                 "rows": rows, "avg_drop": avg,
                                 "costs": costs(us, cands, predef, (timing or {}).get("criteria", {}).get(crit)),
                                 "wall_clock_source": "timing pass" if timing else "in-run (shared CPU)"}
    return out


def _keep_mask_from_counts(layout, layers: List[str], kept: List[int]):
    """The group keep-mask (first kept_g neurons of each group) that gives these per-layer counts:
    the same network shape as the branch's, for timing (which channels survive does not matter)."""
    import torch

    per_layer = dict(zip(layers, kept))
    parts = []
    for g in layout.groups:
        k = per_layer.get(g.root, g.size * g.channel_groups) // max(1, g.channel_groups)
        k = max(1, min(g.size, k))
        parts.append(torch.arange(g.size) < k)
    return torch.cat(parts)


def _step_seconds(model, data: "Tensors", accumulate=None, warmup: int = 2, chunk: int = 8, chunks: int = 3) -> float:
    """Median seconds of one training step (SGD + schedule as in training), over `chunks` timed
    chunks of `chunk` steps after `warmup` steps."""
    import torch
    import torch.nn.functional as F

    opt = make_optimizer(model)
    sched = make_scheduler(opt, 1000, 10)
    gen = torch.Generator().manual_seed(0)
    bs = TRAIN["batch_size"]
    model.train()
    times = []

    def step():
        idx = torch.randint(0, len(data), (bs,), generator=gen)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if accumulate is not None:
            accumulate()
        opt.step()
        sched.step()

    for _ in range(warmup):
        step()
    for _ in range(chunks):
        t0 = time.perf_counter()
        for _ in range(chunk):
            step()
        times.append((time.perf_counter() - t0) / chunk)
    return float(np.median(times))


def timing_pass(units: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Wall-clock per training epoch of the dense network and of every branch's pruned network,
    measured in one process with one thread and nothing else of this protocol running (the
    in-run timings share the CPU with the other worker and with other users' jobs, and a
    benchmark pause can fall inside an epoch). Epoch seconds = median step seconds x steps."""
    import torch
    from epi_fast.layout import group_layout
    from epi_fast.models import build_model
    from epi_fast.criteria import TaylorAccumulator
    from epi_fast.surgery import prune_with_masks

    torch.set_num_threads(1)
    out: Dict[str, Any] = {"method": timing_pass.__doc__.split("\n\n")[0] if timing_pass.__doc__ else "", "criteria": {}}
    cache: Dict[Tuple[int, ...], float] = {}
    for crit in sorted({u["config"]["criterion"] for u in units}):
        us = [u for u in units if u["config"]["criterion"] == crit]
        cfg = us[0]["config"]
        train, _, k, cin, hw, _ = load_setting(cfg["setting"], cfg["seed"], cfg.get("train_subset"))
        spe = steps_per_epoch(len(train))
        example = torch.zeros(1, cin, *hw)

        def new_model():
            _seed_everything(0)
            return build_model(cfg["model"], num_classes=k, in_channels=cin, **cfg.get("model_kwargs", {}))

        m = new_model()
        acc = TaylorAccumulator(group_layout(m, example)) if crit == "gradient" else None
        dense = spe * _step_seconds(m, train, acc.step if acc is not None else None)
        res = {"dense_epoch_seconds": dense, "pruned_epoch_seconds": {}}
        for u in us:
            seed_res = {}
            for rk, br in u["branches"].items():
                seed_res[rk] = {}
                for e, b in br.items():
                    key = tuple(b["kept"])
                    if key not in cache:
                        m = new_model()
                        layout = group_layout(m, example)
                        prune_with_masks(m, layout, _keep_mask_from_counts(layout, u["layers"], b["kept"]))
                        cache[key] = _step_seconds(m, train)
                    seed_res[rk][e] = spe * cache[key]
            res["pruned_epoch_seconds"][str(u["config"]["seed"])] = seed_res
        out["criteria"][crit] = res
    return out


def costs(us: List[Dict[str, Any]], cands, predef, timing: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Training cost of each policy relative to dense training, per ratio, mean over seeds.

    FLOPs: per epoch 3 x forward FLOPs x samples (forward + backward), dense until the prune
    epoch, the pruned network's after it; the gradient criterion's prune-at-init also pays its
    scoring pass (one forward + backward over the training set). Wall-clock: measured seconds
    per training epoch (dense, and each branch's pruned epochs), EPI's per-epoch scoring and
    bookkeeping added to the EPI policy while it tracks. Grid search: one full training per
    candidate ("independent"), or the dense run plus the branch tails ("branched", as here).
    """
    out = {}
    for rk in us[0]["branches"]:
        acc: Dict[str, List[float]] = {}
        for u in us:
            T = u["config"]["epochs"]
            n = u["samples_per_epoch"]
            d_f = 3 * u["dense"]["flops"] * n
            d_s = float(np.median(u["dense"]["epoch_seconds"]))
            o_s = float(np.median(u["dense"]["score_seconds"]))
            tp = None
            if timing is not None:
                d_s = timing["dense_epoch_seconds"]
                tp = timing["pruned_epoch_seconds"][str(u["config"]["seed"])][rk]
            b = u["branches"][rk]
            grad = u["config"]["criterion"] == "gradient"

            def run_cost(e: int, epi_overhead: bool = False) -> Tuple[float, float]:
                br = b[str(e)]
                p_f = 3 * br["flops_after"] * n
                p_s = tp[str(e)] if tp is not None else (br["epoch_seconds"] or 0.0)
                f = e * d_f + (T - e) * p_f
                s = e * d_s + (T - e) * p_s + br["prune_seconds"]
                if e == 0 and grad:
                    f += d_f  # the Taylor pass at initialisation
                    s += d_s
                if epi_overhead:
                    s += e * o_s
                return f / (T * d_f), s / (T * d_s)

            vals = {
                "init": run_cost(0), "predef": run_cost(predef), "epi": run_cost(u["epi_epoch"][rk], True),
            }
            indep = [run_cost(e) for e in cands]
            vals["oracle_independent"] = (sum(c[0] for c in indep), sum(c[1] for c in indep))
            tails_f = sum((T - e) * 3 * b[str(e)]["flops_after"] * n for e in cands)
            tails_s = sum((T - e) * (tp[str(e)] if tp is not None else (b[str(e)]["epoch_seconds"] or 0.0))
                          + b[str(e)]["prune_seconds"] for e in cands)
            vals["oracle_branched"] = ((T * d_f + tails_f) / (T * d_f), (T * d_s + tails_s) / (T * d_s))
            vals["pruned_flops_fraction"] = (b[str(u["epi_epoch"][rk])]["flops_after"] / u["dense"]["flops"], 0.0)
            for k2, (f, s) in vals.items():
                acc.setdefault(k2 + "_flops", []).append(f)
                acc.setdefault(k2 + "_wall", []).append(s)
        out[rk] = {k2: float(np.mean(v)) for k2, v in acc.items()}
    return out


def table_markdown(agg: Dict[str, Any]) -> str:
    lines = []
    for crit, c in agg["criteria"].items():
        seeds = len(c["seeds"])
        lines.append(f"**{crit}** criterion (tau = {c['tau']}), T = {c['T']} epochs, {seeds} seeds; "
                     f"oracle over epochs {c['candidates']}; pre-def = epoch {c['predef']}; "
                     f"EPI deadline = epoch {c['deadline']}; coupled channels combined by {c['reduce']}. "
                     f"Final top-1 %, mean ± std over seeds.\n")
        lines.append("| ratio | dense (no prune) | oracle estimate | init | pre-def | EPI (prune epochs) | oracle epochs |")
        lines.append("|---|---|---|---|---|---|---|")
        for rk, row in c["rows"].items():
            eps = ",".join(f"{e}{'†' if why == 'deadline' else ''}" for e, why in zip(row["epi_epochs"], row["epi_reasons"]))
            best = max(("oracle", "init", "predef", "epi"), key=lambda p: row[p]["mean"]) if False else None
            cells = []
            for pol in ("oracle", "init", "predef", "epi"):
                cells.append(_fmt(row[pol]["mean"], row[pol]["std"]))
            lines.append(f"| {float(rk):.0%} | {_fmt(row['dense']['mean'], row['dense']['std'])} | {cells[0]} | {cells[1]} | "
                         f"{cells[2]} | {cells[3]} ({eps}) | {','.join(map(str, row['oracle_epochs']))} |")
        drops = c["avg_drop"]
        lines.append(f"| avg drop vs oracle | | – | {drops['init']:.2f} | {drops['predef']:.2f} | {drops['epi']:.2f} | |")
        lines.append("| automatic | | ✗ | ✓ | ✗ | ✓ | |")
        lines.append("")
        lines.append("Per-ratio drop against the oracle, paired per seed (mean ± std, points of top-1):\n")
        lines.append("| ratio | init | pre-def | EPI | oracle epoch chosen on the seed mean (its top-1) |")
        lines.append("|---|---|---|---|---|")
        for rk, row in c["rows"].items():
            om = row["oracle_meanselected"]
            lines.append(f"| {float(rk):.0%} | " + " | ".join(_fmt(row[f"drop_{p}"]["mean"], row[f"drop_{p}"]["std"]) for p in ("init", "predef", "epi"))
                         + f" | {om['epoch']} ({_fmt(om['mean'], om['std'])}) |")
        lines.append("")
    lines.append("† EPI had not fired by the deadline epoch; pruned there (EPIPruner's `deadline_epoch`).\n")
    return "\n".join(lines)


def cost_markdown(agg: Dict[str, Any]) -> str:
    src = next(iter(agg["criteria"].values())).get("wall_clock_source", "in-run")
    lines = [f"Training cost relative to dense training (FLOPs / wall-clock; wall-clock from the {src}), mean over seeds. "
             "Grid search: `indep.` = one full training per candidate epoch; `branched` = the dense run plus "
             "every branch's pruned tail (how this protocol ran it).\n",
             "| criterion | ratio | EPI's pruned net, FLOPs | init | pre-def | EPI | oracle, indep. | oracle, branched |",
             "|---|---|---|---|---|---|---|---|"]
    for crit, c in agg["criteria"].items():
        for rk, k in c["costs"].items():
            cell = lambda p: f"{k[p + '_flops']:.2f} / {k[p + '_wall']:.2f}"
            lines.append(f"| {crit} | {float(rk):.0%} | {k['pruned_flops_fraction_flops']:.2f} | {cell('init')} | {cell('predef')} | "
                         f"{cell('epi')} | {cell('oracle_independent')} | {cell('oracle_branched')} |")
    lines.append("")
    return "\n".join(lines)


# -- figures ----------------------------------------------------------------------------------------

def _curve_stats(curves: List[List[Optional[float]]]):
    L = max(len(c) for c in curves)
    xs, mean, lo, hi = [], [], [], []
    for t in range(L):
        v = [c[t] for c in curves if t < len(c) and c[t] is not None]
        if v:
            xs.append(t)
            mean.append(float(np.mean(v)))
            lo.append(float(np.min(v)))
            hi.append(float(np.max(v)))
    return xs, mean, lo, hi


def figures(units: List[Dict[str, Any]], setting: str, outdir: str) -> List[str]:
    from matplotlib.figure import Figure
    from epi_fast.app.report import write_png

    made = []
    crits = sorted({u["config"]["criterion"] for u in units})
    ratios = list(units[0]["epi"].keys())
    colors = {rk: f"C{i}" for i, rk in enumerate(ratios)}

    # EPI curves (supplementary Fig. 7): mean over seeds, min-max band, tau dashed.
    fig = Figure(figsize=(5.2 * len(crits), 3.8))
    data = {}
    for j, crit in enumerate(crits):
        us = [u for u in units if u["config"]["criterion"] == crit]
        ax = fig.add_subplot(1, len(crits), j + 1)
        data[crit] = {}
        for rk in ratios:
            xs, m, lo, hi = _curve_stats([u["epi"][rk] for u in us])
            ax.plot(xs, m, color=colors[rk], marker="o", ms=2.5, lw=1.4, label=f"ratio {float(rk):g}")
            ax.fill_between(xs, lo, hi, color=colors[rk], alpha=0.15)
            for u in us:
                if u["epi_fired"][rk] is not None:
                    ax.axvline(u["epi_fired"][rk], color=colors[rk], lw=0.6, ls=":")
            data[crit][rk] = {"epoch": xs, "mean": m, "min": lo, "max": hi,
                              "fired": [u["epi_fired"][rk] for u in us]}
        ax.axhline(us[0]["tau"], color="k", ls="--", lw=1, label=f"tau = {us[0]['tau']}")
        ax.set_title(f"EPI, {crit} ({setting})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("EPI")
        ax.set_ylim(max(0.5, ax.get_ylim()[0]), 1.005)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    p = os.path.join(outdir, f"epi_curves_{setting}.png")
    write_png(p, fig)
    _atomic_json(p[:-4] + ".json", data)
    made.append(p)

    # App. D: EPI vs rank correlation vs Early-Bird mask distance.
    fig = Figure(figsize=(15, 3.6 * len(crits)))
    data = {}
    for j, crit in enumerate(crits):
        us = [u for u in units if u["config"]["criterion"] == crit]
        ax1 = fig.add_subplot(len(crits), 3, 3 * j + 1)
        ax2 = fig.add_subplot(len(crits), 3, 3 * j + 2)
        ax3 = fig.add_subplot(len(crits), 3, 3 * j + 3)
        data[crit] = {"epi": {}, "early_bird": {}}
        for rk in ratios:
            xs, m, _, _ = _curve_stats([u["epi"][rk] for u in us])
            ax1.plot(xs, m, color=colors[rk], lw=1.4, label=f"ratio {float(rk):g}")
            data[crit]["epi"][rk] = {"epoch": xs, "mean": m}
            xs, m, lo, hi = _curve_stats([u["early_bird"][rk] for u in us])
            ax3.plot(xs, m, color=colors[rk], lw=1.4, label=f"ratio {float(rk):g}")
            ax3.fill_between(xs, lo, hi, color=colors[rk], alpha=0.15)
            data[crit]["early_bird"][rk] = {"epoch": xs, "mean": m, "fired": [u["early_bird_fired"][rk] for u in us]}
        ax1.axhline(us[0]["tau"], color="k", ls="--", lw=1)
        for name, ls in (("spearman", "-"), ("kendall", "--")):
            xs, m, lo, hi = _curve_stats([u[name] for u in us])
            ax2.plot(xs, m, color="k", ls=ls, lw=1.4, label=f"{name} (all ratios)")
            ax2.fill_between(xs, lo, hi, color="gray", alpha=0.15)
            data[crit][name] = {"epoch": xs, "mean": m, "min": lo, "max": hi}
        ax3.axhline(0.1, color="k", ls="--", lw=1, label="EB eps = 0.1")
        ax1.set_title(f"EPI ({crit}) - one curve per ratio")
        ax2.set_title(f"rank correlation, epoch t vs t-1 ({crit})")
        ax3.set_title(f"Early-Bird mask distance ({crit} masks)")
        for ax in (ax1, ax2, ax3):
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="x-small")
    p = os.path.join(outdir, f"appD_similarity_{setting}.png")
    write_png(p, fig)
    _atomic_json(p[:-4] + ".json", data)
    made.append(p)

    # Final top-1 against the prune epoch (the grid), EPI's epochs marked.
    fig = Figure(figsize=(5.2 * len(crits), 3.8))
    data = {}
    for j, crit in enumerate(crits):
        us = [u for u in units if u["config"]["criterion"] == crit]
        ax = fig.add_subplot(1, len(crits), j + 1)
        data[crit] = {}
        cands = us[0]["config"]["candidates"]
        for rk in ratios:
            m = [100 * np.mean([u["branches"][rk][str(e)]["top1"] for u in us]) for e in cands]
            s = [100 * np.std([u["branches"][rk][str(e)]["top1"] for u in us]) for e in cands]
            ax.errorbar(cands, m, yerr=s, color=colors[rk], marker="o", ms=3, capsize=2, lw=1.2, label=f"ratio {float(rk):g}")
            for u in us:
                ee = u["epi_epoch"][rk]
                ax.plot([ee], [100 * u["branches"][rk][str(ee)]["top1"]], marker="*", ms=9, color=colors[rk], mec="k", mew=0.5)
            data[crit][rk] = {"epochs": cands, "mean": m, "std": s,
                              "epi": [(u["epi_epoch"][rk], 100 * u["branches"][rk][str(u["epi_epoch"][rk])]["top1"]) for u in us]}
        dense = 100 * np.mean([u["dense"]["top1_final"] for u in us])
        ax.axhline(dense, color="gray", ls="--", lw=1, label="dense")
        ax.set_title(f"final top-1 vs prune epoch, {crit} ({setting}); * = EPI")
        ax.set_xlabel("prune epoch")
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    p = os.path.join(outdir, f"top1_vs_prune_epoch_{setting}.png")
    write_png(p, fig)
    _atomic_json(p[:-4] + ".json", data)
    made.append(p)
    return made


# -- driver -----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.protocol", description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    for m in MODES:
        g.add_argument(f"--{m}", dest="mode", action="store_const", const=m, help=f"the {m} preset")
    p.add_argument("--data", default=None, help="digits (default), digits-hard, or a CIFAR-10 batches / ImageFolder directory "
                   "(runs that setting only)")
    p.add_argument("--settings", default=None, help="comma list of settings (default: the mode's)")
    p.add_argument("--model", default="resnet_small")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    p.add_argument("--ratios", help="comma list, e.g. 0.3,0.5,0.7,0.9")
    p.add_argument("--criteria", help="comma list of magnitude,gradient")
    p.add_argument("--candidates", help="comma list of grid-search prune epochs (0 = initialisation)")
    p.add_argument("--predef", type=int, help="the pre-defined prune epoch (default: the mode's, round(T/3) in full)")
    p.add_argument("--deadline", type=int, help="EPI deadline epoch (default T // 2)")
    p.add_argument("--train-subset", type=int, help="use only this many training images")
    p.add_argument("--magnitude-reduce", default="mean", choices=("sum", "mean", "max"),
                   help="how coupled channels' magnitudes combine into a group score (default mean; the library's default "
                   "is sum, which ranks every residual-group neuron above every block-internal one, see REPRODUCTION.md)")
    p.add_argument("--gradient-reduce", default="sum", choices=("sum", "mean", "max"),
                   help="how coupled channels' Taylor scores combine (default sum, the library's)")
    p.add_argument("--workers", type=int, default=2, help="processes (at most 2 on this machine; default 2)")
    p.add_argument("--out", default=None, help="output directory (default experiments/results/<mode>)")
    p.add_argument("--no-yield", dest="yield_to_benchmarks", action="store_false",
                   help="do not pause while `pgrep -f benchmarks` finds a benchmark running")
    p.add_argument("--timing", action="store_true",
                   help="after the runs, time an epoch of the dense and of every pruned network in one quiet process "
                   "(timing_<setting>.json); the cost table then takes its wall-clock from there")
    p.add_argument("--aggregate-only", action="store_true", help="rebuild tables and figures from the unit files")
    return p


def _pause_during_benchmarks(pool):
    """Machine etiquette: while a kernel benchmark runs (`pgrep -f benchmarks`), the workers are
    stopped (SIGSTOP) so that they do not disturb its timings; they continue afterwards. The
    wall-clock numbers of an epoch are measured inside it, so a pause between epochs costs
    nothing but an epoch that straddles a pause is inflated (reported as measured)."""
    import signal
    import subprocess
    import threading

    stop = threading.Event()

    def loop():
        paused = False
        while not stop.wait(10):
            busy = subprocess.run(["pgrep", "-f", "benchmarks"], capture_output=True).returncode == 0
            pids = [p.pid for p in list(getattr(pool, "_pool", [])) if p.pid]
            if busy != paused:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGSTOP if busy else signal.SIGCONT)
                    except ProcessLookupError:
                        pass
                paused = busy
                print(f"  [{time.strftime('%H:%M:%S')}] benchmarks {'running: workers paused' if busy else 'done: workers resumed'}", flush=True)
            elif paused:
                for pid in pids:  # a worker started during the pause
                    try:
                        os.kill(pid, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
        for p in list(getattr(pool, "_pool", [])):
            try:
                os.kill(p.pid, signal.SIGCONT)
            except (ProcessLookupError, TypeError):
                pass

    threading.Thread(target=loop, daemon=True).start()
    return stop


def _csv(text, cast):
    return [cast(t) for t in text.replace(" ", "").split(",") if t]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    mode = args.mode or "quick"
    cfg = dict(MODES[mode])
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.seeds:
        cfg["seeds"] = _csv(args.seeds, int)
    if args.ratios:
        cfg["ratios"] = _csv(args.ratios, float)
    if args.criteria:
        cfg["criteria"] = _csv(args.criteria, str)
    if args.candidates:
        cfg["candidates"] = _csv(args.candidates, int)
    if args.predef is not None:
        cfg["predef"] = args.predef
    if args.deadline is not None:
        cfg["deadline"] = args.deadline
    if args.train_subset:
        cfg["train_subset"] = args.train_subset
    if args.settings:
        cfg["settings"] = _csv(args.settings, str)
    if args.data:
        cfg["settings"] = [args.data]
    T = cfg["epochs"]
    bad = [e for e in cfg["candidates"] + [cfg["predef"]] if not 0 <= e < T]
    if bad:
        print(f"error: prune epochs {bad} are outside [0, {T})", file=sys.stderr)
        return 2
    out = args.out or os.path.join(DEFAULT_OUT, mode)
    os.makedirs(os.path.join(out, "units"), exist_ok=True)

    jobs = []
    for setting in cfg["settings"]:
        tag = setting if setting in ("digits", "digits-hard") else os.path.basename(os.path.normpath(setting))
        seeds = cfg["seeds"] if args.seeds else cfg.get("seeds_by_setting", {}).get(setting, cfg["seeds"])
        for seed in seeds:
            for crit in cfg["criteria"]:
                unit = dict(setting=setting, setting_tag=tag, seed=seed, criterion=crit, epochs=T, ratios=cfg["ratios"],
                            candidates=cfg["candidates"], predef=cfg["predef"], deadline=cfg["deadline"],
                            window=cfg["window"], patience=cfg["patience"], model=args.model,
                            train_subset=cfg["train_subset"], mode=mode, train=TRAIN,
                            hard=HARD if setting == "digits-hard" else None,
                            reduce={"magnitude": args.magnitude_reduce, "gradient": args.gradient_reduce})
                jobs.append((unit, _unit_path(out, unit)))
    t0 = time.perf_counter()
    if not args.aggregate_only:
        todo = []
        for unit, path in jobs:
            if os.path.exists(path):
                with open(path) as f:
                    old = json.load(f)["config"]
                if old == json.loads(json.dumps(unit)):
                    continue
                print(f"{os.path.basename(path)}: configuration changed, rerunning")
            todo.append((unit, path))
        print(f"{len(jobs)} units, {len(todo)} to run, {min(args.workers, 2)} process(es)", flush=True)
        workers = max(1, min(args.workers, 2, len(todo)))
        # Cheap units first (digits-hard trains on 400 images), so results arrive early.
        todo.sort(key=lambda j: (j[0]["setting"] != "digits-hard", j[0]["seed"], j[0]["criterion"]))
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
                stop = _pause_during_benchmarks(pool) if args.yield_to_benchmarks else None
                for msg in pool.imap_unordered(_work, todo):
                    print(f"  done {msg}  ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
                if stop is not None:
                    stop.set()
        else:
            for job in todo:
                print(f"  done {_work(job)}  ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)

    summary = {"mode": mode, "config": {k: v for k, v in cfg.items()}, "train": TRAIN, "settings": {}}
    md = [f"# Protocol results ({mode} mode)\n",
          f"Command: `python -m experiments.protocol {' '.join(argv if argv is not None else sys.argv[1:])}`\n"]
    for setting in cfg["settings"]:
        tag = setting if setting in ("digits", "digits-hard") else os.path.basename(os.path.normpath(setting))
        units = []
        for unit, path in jobs:
            if unit["setting"] == setting and os.path.exists(path):
                with open(path) as f:
                    units.append(json.load(f))
        crits = {u["config"]["criterion"] for u in units}
        if not units:
            continue
        timing = None
        tpath = os.path.join(out, f"timing_{tag}.json")
        if args.timing and not os.path.exists(tpath):
            print(f"timing pass for {tag} ...", flush=True)
            _atomic_json(tpath, timing_pass(units))
        if os.path.exists(tpath):
            with open(tpath) as f:
                timing = json.load(f)
        agg = aggregate(units, tag, timing)
        agg["data"] = units[0]["data"]
        agg["unit_seconds"] = sum(u["unit_seconds"] for u in units)
        summary["settings"][tag] = agg
        figs = figures(units, tag, out)
        md.append(f"## {tag}\n\n{units[0]['data']}; {len(units)} units ({', '.join(sorted(crits))}), "
                  f"{agg['unit_seconds'] / 60:.1f} CPU-minutes.\n")
        md.append(table_markdown(agg))
        md.append(cost_markdown(agg))
        md.append("Figures: " + ", ".join(f"[{os.path.basename(f)}]({os.path.basename(f)})" for f in figs) + "\n")
    _atomic_json(os.path.join(out, "summary.json"), summary)
    _atomic_text(os.path.join(out, "tables.md"), "\n".join(md))
    print("\n".join(md))
    print(f"results in {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
