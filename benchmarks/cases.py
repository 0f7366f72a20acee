"""The benchmark cases: each one gives every implementation the same inputs.

Implementations (the names used in results):
- ``fused``: the compiled operators (epi_fast.ops);
- ``loop``: plain PyTorch written the way a user would, one small op per layer;
- ``reference``: epi_fast.ops.reference, the project's plain-PyTorch oracle;
- ``compiled``: the reference under torch.compile (GPU runs only);
- ``torch_pruning`` / ``torch_pruning_mag``: Torch-Pruning's GroupMagnitudeImportance(p=2) /
  MagnitudeImportance(p=2) over DependencyGraph.get_all_groups (scoring, torchvision models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn

import epi_fast.ops as fused
import epi_fast.ops.reference as ref
from epi_fast.testing import close, equal

from .workloads import Workload

RATIOS_9 = [round(0.1 * i, 1) for i in range(1, 10)]
RATIO_1 = [0.5]
MIN_KEEP = 1


@dataclass
class Case:
    name: str
    workload: str
    impls: dict[str, Callable]
    compare: Callable  # (fused output, other output) -> bool
    bytes_read: int
    bytes_written: int
    floor_dtype: torch.dtype
    before_check: Callable | None = None  # reset accumulators before the agreement check
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# --- comparisons -----------------------------------------------------------------------------
# Masks, thresholds and counts must be identical, as in the tests (epi_fast.testing.equal).
# Scores keep their own, looser tolerances (rtol 1e-4, 2e-3 for half-precision workloads, atol
# relative to the largest score) instead of the tests' score_rtol: the agreement column is a
# sanity check of every implementation timed here (the per-layer loop, the reference,
# torch.compile, Torch-Pruning), each summing in its own order, not the kernels' precision
# contract, which tests/ops holds them to.

def _close(a, b, rtol=1e-4, atol=1e-6) -> bool:
    scale = float(a.detach().abs().max()) if a.numel() else 0.0
    return close(a, b, rtol=rtol, atol=max(atol, 1e-6 * scale), equal_nan=False)


def scores_close(dtype: torch.dtype):
    rtol = 1e-4 if dtype == torch.float32 else 2e-3
    return lambda a, b: _close(a, b, rtol=rtol)


def taylor_close(a, b) -> bool:
    # Signed sums cancel: compare against the scale of the largest score.
    scale = float(a.detach().abs().max()) if a.numel() else 0.0
    return close(a, b, rtol=1e-3, atol=1e-4 * scale + 1e-12, equal_nan=False)


def masks_equal(a, b) -> bool:
    """(masks, thresholds) pairs; the rest of a tuple (global_masks_counts' counts) is compared
    by the cases that return it."""
    return equal(a[0], b[0]) and equal(a[1], b[1])


tensors_equal = equal


# --- the per-layer loop, as a user writes it -------------------------------------------------

def loop_l2_scores(weights) -> torch.Tensor:
    return torch.cat([torch.linalg.vector_norm(w.flatten(1), dim=1, dtype=torch.float32) for w in weights])


def loop_global_masks(scores, ratios, sizes, min_keep=MIN_KEEP):
    """Protect each layer's top min_keep with a topk per layer, then one kthvalue per ratio."""
    n = scores.numel()
    protected = torch.zeros(n, dtype=torch.bool, device=scores.device)
    offset = 0
    for size in sizes:
        if size and min_keep:
            top = scores[offset:offset + size].topk(min(min_keep, size)).indices
            protected[offset + top] = True
        offset += size
    free = scores.masked_fill(protected, float("inf"))
    masks, thresholds = [], []
    for p in ratios:
        k = int(math.floor(p * n + 0.5))
        if k == 0:
            masks.append(torch.ones(n, dtype=torch.bool, device=scores.device))
            thresholds.append(torch.tensor(float("-inf"), device=scores.device))
            continue
        kth = torch.kthvalue(free, k).values
        masks.append(free > kth)
        thresholds.append(kth)
    return torch.stack(masks), torch.stack(thresholds)


def loop_layer_counts(masks, sizes) -> torch.Tensor:
    return torch.stack([part.sum(dim=1) for part in masks.split(sizes, dim=1)], dim=1)


def loop_mask_overlap(a, b, sizes):
    parts = list(zip(a.split(sizes, dim=1), b.split(sizes, dim=1)))
    both = torch.stack([(x & y).sum(dim=1) for x, y in parts], dim=1)
    diff = torch.stack([(x ^ y).sum(dim=1) for x, y in parts], dim=1)
    return both, diff


# --- helpers ---------------------------------------------------------------------------------

def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _add_compiled(impls: dict, fn, compile_ref: bool) -> None:
    if compile_ref:
        impls["compiled"] = torch.compile(fn)


# --- cases -----------------------------------------------------------------------------------

def score_l2(w: Workload, compile_ref: bool, tp_groups=None) -> Case:
    weights = w.weights
    impls = {
        "fused": lambda: fused.channel_scores(weights, "l2"),
        "loop": lambda: loop_l2_scores(weights),
        "reference": lambda: ref.channel_scores(weights, "l2"),
    }
    _add_compiled(impls, lambda ws: ref.channel_scores(ws, "l2"), compile_ref)
    if "compiled" in impls:
        c = impls["compiled"]
        impls["compiled"] = lambda: c(weights)
    notes = []
    if tp_groups is not None:
        impls.update(tp_groups["impls"])
        notes.append(tp_groups["note"])
    n = sum(w.sizes)
    return Case("score_l2", w.name, impls, scores_close(w.dtype), w.weight_bytes, 4 * n, w.dtype, notes=notes)


def score_bn_abs(w: Workload, compile_ref: bool) -> Case | None:
    gammas = [bn.weight.detach() for bn in w.bns]
    if not gammas:
        return None
    impls = {
        "fused": lambda: fused.channel_scores(gammas, "abs"),
        "loop": lambda: torch.cat([g.abs() for g in gammas]),
        "reference": lambda: ref.channel_scores(gammas, "abs"),
    }
    if compile_ref:
        c = torch.compile(lambda gs: ref.channel_scores(gs, "abs"))
        impls["compiled"] = lambda: c(gammas)
    return Case("score_bn_abs", w.name, impls, scores_close(torch.float32), _bytes(gammas), _bytes(gammas), torch.float32)


def taylor(w: Workload, compile_ref: bool) -> Case:
    """One training step's accumulation: BN weight+bias pairs into shared channels, then the
    conv/linear weights, with random gradients."""
    params, grads, offsets = [], [], []
    offset = 0
    for bn in w.bns:
        for p in (bn.weight, bn.bias):
            params.append(p.detach())
            grads.append(torch.randn_like(p))
            offsets.append(offset)
        offset += bn.weight.shape[0]
    for t in w.weights:
        params.append(t)
        grads.append(torch.randn_like(t))
        offsets.append(offset)
        offset += t.shape[0]
    channels = offset
    device = params[0].device
    accs = {}

    def acc_for(name):
        accs[name] = (torch.zeros(channels, dtype=torch.float32, device=device),
                      torch.zeros(1, dtype=torch.int64, device=device))
        return accs[name]

    def fused_step(acc=acc_for("fused")):
        fused.taylor_accumulate_(acc[0], acc[1], params, grads, offsets)
        return acc[0]

    def reference_step(acc=acc_for("reference")):
        ref.taylor_accumulate_(acc[0], acc[1], params, grads, offsets)
        return acc[0]

    nbn = len(w.bns)
    bn_pairs = [(params[2 * i], grads[2 * i], params[2 * i + 1], grads[2 * i + 1]) for i in range(nbn)]
    rows = list(zip(params[2 * nbn:], grads[2 * nbn:]))

    def loop_raw():
        parts = [wt * gw + b * gb for wt, gw, b, gb in bn_pairs]
        if rows and rows[0][0].dtype != torch.float32:  # half inputs: multiply in float32
            parts += [(p.float() * g.float()).flatten(1).sum(dim=1) for p, g in rows]
        else:
            parts += [(p * g).flatten(1).sum(dim=1) for p, g in rows]
        return torch.cat([x.float() for x in parts])

    def loop_step(acc=acc_for("loop")):
        raw = loop_raw()
        if bool(torch.isfinite(raw).all()):  # skip an AMP overflow step, as the kernels do
            acc[0].add_(raw.square())
        else:
            acc[1].add_(1)
        return acc[0]

    impls = {"fused": fused_step, "loop": loop_step, "reference": reference_step}
    if compile_ref:
        compiled_raw = torch.compile(loop_raw)

        def compiled_step(acc=acc_for("compiled")):
            raw = compiled_raw()
            acc[0].add_(torch.where(torch.isfinite(raw).all(), raw.square(), 0.0))
            return acc[0]

        impls["compiled"] = compiled_step

    def before_check():
        for acc, skipped in accs.values():
            acc.zero_()
            skipped.zero_()

    read = 2 * _bytes(params)
    return Case("taylor_step", w.name, impls, taylor_close, read + 4 * channels, 4 * channels, w.dtype,
                before_check=before_check,
                notes=["loop checks finiteness once per step (one host sync), as the reference does"])


def _scores_for(w: Workload) -> torch.Tensor:
    return fused.channel_scores(w.weights, "l2")


def global_masks_case(w: Workload, ratios, compile_ref: bool, scores: torch.Tensor) -> Case:
    sizes = w.sizes
    impls = {
        "fused": lambda: fused.global_masks(scores, ratios, sizes, MIN_KEEP),
        "loop": lambda: loop_global_masks(scores, ratios, sizes, MIN_KEEP),
        "reference": lambda: ref.global_masks(scores, ratios, sizes, MIN_KEEP),
    }
    if compile_ref:
        c = torch.compile(ref.global_masks)
        impls["compiled"] = lambda: c(scores, ratios, sizes, MIN_KEEP)
    n = scores.numel()
    name = f"global_masks_{len(ratios)}"
    return Case(name, w.name, impls, masks_equal, 4 * n, len(ratios) * n + 4 * len(ratios), torch.float32)


def structure_stats(w: Workload, compile_ref: bool, scores: torch.Tensor) -> Case:
    sizes = w.sizes
    masks, _ = fused.global_masks(scores, RATIOS_9, sizes, MIN_KEEP)
    noisy = scores * (1 + 0.05 * torch.randn_like(scores))
    prev, _ = fused.global_masks(noisy, RATIOS_9, sizes, MIN_KEEP)

    def fused_stats():
        return fused.layer_counts(masks, sizes), *fused.mask_overlap(masks, prev, sizes)

    def loop_stats():
        return loop_layer_counts(masks, sizes), *loop_mask_overlap(masks, prev, sizes)

    def ref_stats():
        return ref.layer_counts(masks, sizes), *ref.mask_overlap(masks, prev, sizes)

    impls = {"fused": fused_stats, "loop": loop_stats, "reference": ref_stats}
    if compile_ref:
        c = torch.compile(lambda a, b: (ref.layer_counts(a, sizes), *ref.mask_overlap(a, b, sizes)))
        impls["compiled"] = lambda: c(masks, prev)
    m, n = masks.shape
    return Case("structure_stats", w.name, impls, tensors_equal, 2 * m * n, 3 * 8 * m * len(sizes), torch.bool)


def _indicator_api():
    """(EarlyPruningIndicator, update_indicators), or None where the indicator is not importable."""
    try:
        from epi_fast.indicator import EarlyPruningIndicator, update_indicators
        return EarlyPruningIndicator, update_indicators
    except Exception:  # noqa: BLE001 - optional: the pipeline runs without it
        return None


def pipeline(w: Workload, compile_ref: bool, epi: bool = True) -> Case:
    """Epoch end: L2 scores -> masks at 9 ratios (segments, min_keep=1) -> per-layer counts ->
    one small copy to the host -> EPI update of the 9 indicators, as EarlyPruner does it (left
    out with epi=False, which times the tensor part alone: the EPI update is the same host-side
    Python in every implementation)."""
    weights, sizes = w.weights, w.sizes
    api = _indicator_api() if epi else None
    indicators = {}

    def epi_update(name, counts):
        rows = counts.cpu()  # the one device-to-host copy per epoch, passed on as EPIPruner does
        if api is not None:
            epi_cls, update_all = api
            inds = indicators.get(name)
            # Steady state of a training run: a full window, a history of tens of epochs (a
            # fresh set every 60 updates, so the history does not grow with the reps).
            if inds is None or inds[0].epoch >= 60:
                inds = indicators[name] = [epi_cls() for _ in RATIOS_9]
                for _ in range(inds[0].window):
                    update_all(inds, rows)
            update_all(inds, rows)
        return counts

    def fused_pipeline():
        s = fused.channel_scores(weights, "l2")
        # The masks are computed and then used only for the counts, as in EPIPruner.
        _, _, counts = fused.global_masks_counts(s, RATIOS_9, sizes, MIN_KEEP)
        return epi_update("fused", counts)

    def loop_pipeline():
        s = loop_l2_scores(weights)
        masks, _ = loop_global_masks(s, RATIOS_9, sizes, MIN_KEEP)
        return epi_update("loop", loop_layer_counts(masks, sizes))

    def ref_tensors(ws):
        s = ref.channel_scores(ws, "l2")
        masks, _ = ref.global_masks(s, RATIOS_9, sizes, MIN_KEEP)
        return ref.layer_counts(masks, sizes)

    impls = {
        "fused": fused_pipeline,
        "loop": loop_pipeline,
        "reference": lambda: epi_update("reference", ref_tensors(weights)),
    }
    if compile_ref:
        c = torch.compile(ref_tensors)
        impls["compiled"] = lambda: epi_update("compiled", c(weights))
    notes = []
    if epi and api is None:
        notes.append("epi_fast.indicator.EarlyPruningIndicator not importable: EPI update left out")
    n = sum(sizes)
    name = "epoch_end_pipeline" if epi else "epoch_end_tensors"
    return Case(name, w.name, impls, tensors_equal, w.weight_bytes, 4 * n + 9 * n, w.dtype, notes=notes,
                extra={"epi_update": api is not None})


def group_reduce_case(w: Workload, compile_ref: bool) -> Case:
    """Group scatter over a coupled model's CSR layout (epi_fast.layout.group_layout), or a
    synthetic CSR when the layout cannot be built."""
    device = w.weights[0].device
    source = "epi_fast.layout.group_layout + epi_fast.criteria.score_plan('rows')"
    try:
        from epi_fast.layout import group_layout
        from epi_fast.criteria import score_plan

        layout = group_layout(w.module, w.example_input)
        plan = score_plan(layout, "rows")
        tensors = plan.tensors()
        scores = fused.channel_scores(tensors, "l2")
        group_ptr, member_idx = plan.group_ptr.to(device), plan.member_idx.to(device)
        layer_sizes = [t.shape[0] for t in tensors]
    except Exception as err:  # noqa: BLE001 - the layout is another engineer's work in progress
        source = f"synthetic CSR (group_layout unavailable: {type(err).__name__}: {err})"
        scores = _scores_for(w)
        n = scores.numel()
        gen = torch.Generator().manual_seed(0)
        member_idx = torch.randperm(n, generator=gen).to(device)
        ptr = list(range(0, n - n % 2, 2))
        ptr.append(n)
        group_ptr = torch.tensor(ptr, dtype=torch.int64, device=device)
        layer_sizes = w.sizes
    groups = group_ptr.numel() - 1
    lengths = group_ptr[1:] - group_ptr[:-1]
    neuron_of = torch.repeat_interleave(torch.arange(groups, device=device), lengths)
    # The loop: one index_add_ per source layer (built once, as a user would build it).
    per_layer = []
    lo = 0
    for size in layer_sizes:
        sel = (member_idx >= lo) & (member_idx < lo + size)
        if bool(sel.any()):
            per_layer.append((neuron_of[sel], member_idx[sel]))
        lo += size

    def loop_reduce():
        out = torch.zeros(groups, dtype=torch.float32, device=device)
        for dst, src in per_layer:
            out.index_add_(0, dst, scores[src])
        return out

    impls = {
        "fused": lambda: fused.group_reduce(scores, group_ptr, member_idx, "sum"),
        "loop": loop_reduce,
        "reference": lambda: ref.group_reduce(scores, group_ptr, member_idx, "sum"),
    }
    if compile_ref:
        c = torch.compile(ref.group_reduce)
        impls["compiled"] = lambda: c(scores, group_ptr, member_idx, "sum")
    read = 4 * scores.numel() + 8 * (group_ptr.numel() + member_idx.numel())
    return Case("group_reduce", w.name, impls, scores_close(torch.float32), read, 4 * groups, torch.float32,
                notes=[f"layout: {source}"],
                extra={"layout_source": source.split(" (")[0], "groups": groups, "members": int(member_idx.numel())})


def torch_pruning_scoring(w: Workload) -> dict | None:
    """Torch-Pruning's importance over its groups (the dependency graph is built untimed)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    model = w.module
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=w.example_input)
    ignored = [w.final_linear] if w.final_linear is not None else []
    groups = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
    group_imp = tp.importance.GroupMagnitudeImportance(p=2)
    mag_imp = tp.importance.MagnitudeImportance(p=2)
    model.eval()
    return {
        "impls": {
            "torch_pruning": lambda: [group_imp(g) for g in groups],
            "torch_pruning_mag": lambda: [mag_imp(g) for g in groups],
        },
        "note": f"torch_pruning: importance over {len(groups)} groups from get_all_groups (graph built untimed; "
                "scores group members' in- and out-channels, so it reads more than the conv weights once)",
    }
