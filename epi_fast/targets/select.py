"""The selection rule: which neurons a structure keeps, for a target, limits and rounding.

One rule serves the prune and EPI's tracked structures, so that the network that is pruned is
the one the indicator watched. The criterion's single global score order is kept: neurons are
removed lowest score first (ties: lower index first), except the ones each group protects
(its highest-scoring `minimum` neurons, see `limits`). What changes with the target is where
that order is cut:

- ``target="channels"`` without rounding: k = floor(ratio * N + 0.5) neurons, the paper's
  meaning; this is `global_masks_counts` with a per-group minimum, on the device.
- otherwise: after the first j removable neurons of the order, group g keeps n_g(j) neurons,
  rounded to a multiple of `round_to` when asked, and the structure costs C(n(j)) (parameters,
  FLOPs or kept neurons). C falls monotonically with j, so the j whose removed fraction
  1 - C / C_dense is nearest the ratio (ties: the smaller) is found by bisection over j on the
  device (about log2 N steps, each vectorised over ratios and groups: one `searchsorted` gives
  every n_g(j) at once). No Python loop over groups or neurons; one host read at the end to
  check that the nearest fraction is within `TOLERANCE` of the ratio.

Each group then keeps its highest-scoring n_g neurons (ties: higher index kept), which for an
unrounded cut are exactly the neurons the order did not reach.

Kinds of groups (conv channels, attention heads, MLP channels) are ranked separately by
default (``ranking="per_kind"``), since a head's norm and a channel's norm are not comparable:
with ``target="channels"`` each kind loses k = floor(ratio * N_kind + 0.5) of its own N_kind
neurons (the paper's rule within each kind); with a cost target or rounding, every neuron's
score is replaced by its quantile within its kind, (rank + 1) / N_kind, so that the single
order cuts every kind at about the same fraction. ``ranking="global"`` ranks all kinds in one
order after dividing each kind's scores by their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .. import ops
from .._args import check_int, check_ratios
from ..layout import GroupLayout
from .costs import cost_model
from .._args import RANKINGS, check_ranking
from .limits import (DEFAULT_MAX_LAYER_RATIO, check_max_layer_ratio, check_round_to, check_target, group_minimums,
                     rounding_bounds)

__all__ = ["Selection", "Selector", "TOLERANCE", "RANKINGS", "check_ranking"]

# What the errors call each kind's neurons.
_KIND_WORDS = {"channels": "channel", "heads": "attention-head (key/value group)", "mlp": "MLP-channel",
               "residual": "residual-width"}

# The achieved fraction of a "params" / "flops" target (or of a rounded one) is within this
# of the ratio, or the selection raises naming the nearest reachable fractions.
TOLERANCE = 0.01


@dataclass
class Selection:
    """masks bool [m, N] (True = kept), counts int64 [m, G] (kept neurons per group) and
    achieved float64 [m] (the fraction of the target quantity removed), on the scores' device."""

    masks: torch.Tensor
    counts: torch.Tensor
    achieved: torch.Tensor


class Selector:
    """The selection rule of one layout for `target`, `min_keep`, `max_layer_ratio`, `round_to`.

    Building it resolves the per-group minimums and, for "params" / "flops", the layout's cost
    model (FLOPs are measured once on `example_inputs`). `select(scores, ratios)` then applies
    the rule to any scores in the layout's order.
    """

    def __init__(self, layout: GroupLayout, target: str = "channels", min_keep: int = 1,
                 max_layer_ratio: Any = DEFAULT_MAX_LAYER_RATIO, round_to: Optional[int] = None,
                 example_inputs: Any = None, ranking: str = "per_kind") -> None:
        self.layout = layout
        self.ranking = check_ranking(ranking)
        self.target = check_target(target)
        self.min_keep = check_int(min_keep, "min_keep", 1)
        self.max_layer_ratio = check_max_layer_ratio(max_layer_ratio)
        self.round_to = check_round_to(round_to)
        self.sizes = torch.tensor(layout.group_sizes, dtype=torch.int64)
        self.n = int(self.sizes.sum())
        self.minimums = group_minimums(layout, self.min_keep, self.max_layer_ratio)
        self.removable = int((self.sizes - self.minimums).sum())
        self.cost = None if self.target == "channels" else cost_model(layout, self.target, example_inputs)
        # The cut by count, on the masks kernel: the paper's rule, the default, the per-epoch path.
        self.by_count = self.target == "channels" and self.round_to is None
        uniform = bool((self.minimums == self.min_keep).all())
        self._kernel_min_keep = self.min_keep if uniform else self.minimums
        self._device_cache = {}
        # The kinds of groups, each with its groups' indices and its neurons' positions.
        kinds = {}
        for gi, g in enumerate(layout.groups):
            kinds.setdefault(g.kind, []).append(gi)
        self.kinds = {}
        for kind, gis in kinds.items():
            neurons = torch.cat([torch.arange(layout.offsets[gi], layout.offsets[gi] + layout.group_sizes[gi]) for gi in gis])
            gidx = torch.tensor(gis, dtype=torch.int64)
            mins = self.minimums[gidx]
            self.kinds[kind] = {
                "groups": gidx, "neurons": neurons, "sizes": [layout.group_sizes[gi] for gi in gis],
                "n": int(neurons.numel()), "removable": int((self.sizes[gidx] - mins).sum()),
                "min_keep": self.min_keep if bool((mins == self.min_keep).all()) else mins,
            }
        self.per_kind = ranking == "per_kind" and len(self.kinds) > 1

    # -- the rule -------------------------------------------------------------------------------
    def select(self, scores: torch.Tensor, ratios: Sequence[float], strict: bool = True) -> Selection:
        """The structures kept at `ratios`. strict: raise when the nearest cut is further than
        TOLERANCE from a ratio; with strict=False that nearest cut is returned (EPI's epochs after
        the first: a ratio that was reachable at initialisation does not stop a training run
        because the order moved; the pruner reports what it achieved)."""
        ratios = check_ratios(ratios, "ratios", allow_zero=True)
        if not isinstance(scores, torch.Tensor) or scores.dim() != 1 or scores.numel() != self.n:
            shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
            raise ValueError(f"scores must be a 1-D tensor of the layout's {self.n} group neurons, got {shape}")
        if len(self.kinds) > 1 and self.ranking == "global":
            scores = self._normalised(scores)
        if self.by_count:
            self._check_count(ratios)
            if self.per_kind:
                return self._by_count_per_kind(scores, ratios)
            return self._by_count(scores, ratios)
        return self._by_cost(scores, ratios, strict)

    def describe(self) -> str:
        mlr = self.max_layer_ratio if not isinstance(self.max_layer_ratio, dict) else "{...}"
        return f"target={self.target!r}, max_layer_ratio={mlr}, min_keep={self.min_keep}, round_to={self.round_to}"

    def _normalised(self, scores: torch.Tensor) -> torch.Tensor:
        """ranking="global": each kind's scores divided by their mean (a kind whose scores are all
        zero is left as it is)."""
        out = scores.to(torch.float32).clone()
        for info in self.kinds.values():
            idx = self._index(info, "neurons", scores.device)
            mean = out[idx].abs().mean()
            out[idx] = out[idx] / torch.where(mean > 0, mean, torch.ones_like(mean))
        return out

    def _index(self, info: dict, key: str, device) -> torch.Tensor:
        cache = info.setdefault("_on", {})
        k = (key, str(device))
        if k not in cache:
            cache[k] = info[key].to(device)
        return cache[k]

    def _quantiles(self, s: torch.Tensor) -> torch.Tensor:
        """Each neuron's quantile within its kind, (rank + 1) / N_kind, float64 (ties: lower index
        first, as in the single order)."""
        out = torch.empty(s.shape, dtype=torch.float64, device=s.device)
        for info in self.kinds.values():
            idx = self._index(info, "neurons", s.device)
            order = torch.sort(s[idx], stable=True).indices
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel(), device=s.device)
            out[idx] = (rank + 1).to(torch.float64) / info["n"]
        return out

    def _by_count_per_kind(self, scores, ratios) -> Selection:
        m = len(ratios)
        masks = torch.empty((m, self.n), dtype=torch.bool, device=scores.device)
        counts = torch.empty((m, len(self.layout.groups)), dtype=torch.int64, device=scores.device)
        for info in self.kinds.values():
            idx = self._index(info, "neurons", scores.device)
            gidx = self._index(info, "groups", scores.device)
            mk, _, ck = ops.global_masks_counts(scores[idx], ratios, info["sizes"], info["min_keep"])
            masks[:, idx] = mk
            counts[:, gidx] = ck
        achieved = 1.0 - counts.sum(1).to(torch.float64) / self.n
        return Selection(masks, counts, achieved)

    def _check_count(self, ratios) -> None:
        if self.per_kind:
            for kind, info in self.kinds.items():
                for p in ratios:
                    k = math.floor(p * info["n"] + 0.5)
                    if k > info["removable"]:
                        raise ValueError(
                            f"ratio {p} removes {k} of the {info['n']} {_KIND_WORDS.get(kind, kind)} neurons, but the "
                            f"limits ({self.describe()}) let at most {info['removable']} go: the nearest reachable "
                            f"ratios for them are {info['removable'] / info['n']:.4f} (below) and none (above)"
                        )
            return
        for p in ratios:
            k = math.floor(p * self.n + 0.5)
            if k > self.removable:
                raise ValueError(
                    f"ratio {p} removes {k} of {self.n} neurons, but the limits ({self.describe()}) let at most "
                    f"{self.removable} go: the nearest reachable ratios are {self.removable / self.n:.4f} (below) "
                    f"and none (above)"
                )

    def _by_count(self, scores, ratios) -> Selection:
        # The per-group minimums stay on the host: the operator reads them there, without a
        # device-to-host copy, wherever the scores are.
        min_keep = self._kernel_min_keep
        masks, _, counts = ops.global_masks_counts(scores, ratios, self.layout.group_sizes, min_keep)
        achieved = 1.0 - counts.sum(1).to(torch.float64) / self.n
        return Selection(masks, counts, achieved)

    def _on(self, device) -> dict:
        key = str(device)
        if key not in self._device_cache:
            sizes = self.sizes.to(device)
            minimums = self.minimums.to(device)
            removable = sizes - minimums
            d = {
                "sizes": sizes,
                "minimums": minimums,
                "gid": torch.repeat_interleave(torch.arange(len(sizes), device=device), sizes),
                "offsets": torch.cumsum(sizes, 0) - sizes,
                "removable": removable,
                "ustart": torch.cumsum(removable, 0) - removable,
                "cost": None if self.cost is None else self.cost.to(device),
            }
            if self.round_to is not None:
                # Attention heads are not rounded: a multiple of 8 key/value groups is not what
                # hardware asks for (their widths are multiples of head_dim already).
                step = torch.tensor([1 if g.kind == "heads" else self.round_to for g in self.layout.groups],
                                    dtype=torch.int64, device=device)
                d["step"] = step
                d["low"], d["high"] = rounding_bounds(sizes, minimums, step)
            self._device_cache[key] = d
        return self._device_cache[key]

    def _by_cost(self, scores, ratios, strict: bool = True) -> Selection:
        dev = scores.device
        d = self._on(dev)
        s = scores.to(torch.float32)
        nans = int(torch.isnan(s).sum())
        if nans:
            raise ValueError(f"scores hold {nans} NaN values; cannot rank channels")
        s = s + 0.0  # -0.0 becomes +0.0: the two are one score
        if self.per_kind:
            s = self._quantiles(s)
        gid, sizes = d["gid"], d["sizes"]
        n = self.n
        order = torch.sort(s, stable=True).indices  # ascending score, lower index first
        by_group = order[torch.sort(gid[order], stable=True).indices]
        rank = torch.empty(n, dtype=torch.int64, device=dev)
        rank[by_group] = torch.arange(n, device=dev) - d["offsets"][gid[by_group]]
        removable_mask = rank < d["removable"][gid]
        # Removal time of each removable neuron: its position among the removable ones in the
        # global order (1-based). Within a group, times rise with rank.
        times = torch.cumsum(removable_mask[order].to(torch.int64), 0)
        tau = torch.empty(n, dtype=torch.int64, device=dev)
        tau[order] = times
        total = self.removable
        stride = total + 1
        keys = torch.sort((gid * stride + tau)[removable_mask]).values
        group_base = torch.arange(len(sizes), device=dev) * stride

        def kept(j: torch.Tensor) -> torch.Tensor:  # j [m] -> kept neurons per group [m, G]
            q = group_base[None, :] + j[:, None]
            removed = torch.searchsorted(keys, q.contiguous(), right=True) - d["ustart"][None, :]
            return self._round(sizes[None, :] - removed, d)

        def achieved(counts: torch.Tensor) -> torch.Tensor:
            if d["cost"] is None:
                return 1.0 - counts.sum(1).to(torch.float64) / n
            return 1.0 - d["cost"].evaluate(counts) / d["cost"].full

        p = torch.tensor(ratios, dtype=torch.float64, device=dev)
        m = len(ratios)
        if self.by_count:  # the kernel's rule computed here (one kind): what the tests check the two by
            j = torch.tensor([math.floor(r * n + 0.5) for r in ratios], dtype=torch.int64, device=dev)
            counts = kept(j)
            return Selection(self._masks(rank, gid, counts, d), counts, achieved(counts))
        # Smallest j whose achieved fraction exceeds the ratio (total + 1 when none does).
        lo = torch.zeros(m, dtype=torch.int64, device=dev)
        hi = torch.full((m,), total + 1, dtype=torch.int64, device=dev)
        for _ in range(max(1, (total + 1).bit_length() + 1)):
            mid = (lo + hi) // 2
            over = achieved(kept(mid.clamp(max=total))) > p
            over &= mid <= total
            active = lo < hi
            hi = torch.where(active & over, mid, hi)
            lo = torch.where(active & ~over, mid + 1, lo)
        above = lo.clamp(max=total)
        below = (lo - 1).clamp(min=0)
        c_above, c_below = kept(above), kept(below)
        a_above, a_below = achieved(c_above), achieved(c_below)
        has_above = lo <= total
        has_below = lo >= 1
        pick_above = has_above & (~has_below | ((a_above - p).abs() < (p - a_below).abs()))
        counts = torch.where(pick_above[:, None], c_above, c_below)
        got = torch.where(pick_above, a_above, a_below)
        if strict:
            self._check_reached(ratios, got, a_below, has_below, a_above, has_above)
        return Selection(self._masks(rank, gid, counts, d), counts, got)

    def _round(self, counts: torch.Tensor, d) -> torch.Tensor:
        if self.round_to is None:
            return counts
        r = d["step"][None, :]
        nearest = torch.div(counts + r // 2, r, rounding_mode="floor") * r
        return torch.maximum(torch.minimum(nearest, d["high"][None, :]), d["low"][None, :])

    @staticmethod
    def _masks(rank, gid, counts, d) -> torch.Tensor:
        # Each group keeps its highest n_g: ascending ranks from C_g - n_g up.
        return rank[None, :] >= (d["sizes"][None, :] - counts)[:, gid]

    def _check_reached(self, ratios, got, a_below, has_below, a_above, has_above) -> None:
        got, a_below, a_above = got.tolist(), a_below.tolist(), a_above.tolist()
        has_below, has_above = has_below.tolist(), has_above.tolist()
        for i, p in enumerate(ratios):
            if abs(got[i] - p) > TOLERANCE:
                low = f"{a_below[i]:.4f}" if has_below[i] else "none"
                high = f"{a_above[i]:.4f}" if has_above[i] else "none"
                raise ValueError(
                    f"{self.target} ratio {p} is not reachable within {TOLERANCE} under {self.describe()}: the "
                    f"nearest reachable ratios are {low} (below) and {high} (above)"
                )
