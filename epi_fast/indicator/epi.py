"""When to prune: the Early Pruning Indicator (EPI) and the Early-Bird baseline.

EPI (Shen et al., CVPR 2022) watches the *structure* of the sub-network that a criterion would
keep at a prune ratio, i.e. the kept-channel count of every prunable layer, epoch after epoch,
and says "prune now" once that structure has stopped changing. The formulas and the firing
rule are fixed in the project's CONTRACTS.md / EPI.md:

    d_l(N1, N2)  = |n1_l - n2_l| / (n1_l + n2_l)          (0/0 counts as 0)
    Psi(N1, N2)  = 1 - mean_l d_l(N1, N2)
    EPI_t        = mean_{j=1..r} Psi(N_t, N_{t-j})

Structures are fed once per epoch, the first at initialisation (t = 0), so EPI_t exists from
t = r on. The indicator fires at the first t with EPI_t >= tau and EPI_t >= each of the previous
`patience` EPI values (all that exist when fewer do).

These classes are host-side bookkeeping over a few hundred integers per epoch; they hold no
tensors of the model and do no device work, so they are cheap to checkpoint and identical on
every rank that feeds them the same counts.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._args import check_int, check_unit

__all__ = [
    "structure_similarity",
    "layer_distances",
    "EarlyPruningIndicator",
    "update_indicators",
]


def _as_counts(counts: Any, name: str = "counts") -> List[int]:
    """A 1-D sequence of non-negative integer counts as a list of Python ints.

    Integral floats (e.g. 3.0 from a float tensor) are accepted; fractional, negative,
    non-finite and boolean values are refused because a count of kept channels is none of those.
    """
    if isinstance(counts, torch.Tensor):
        if counts.dim() != 1:
            raise ValueError(f"{name} must be 1-D (one kept count per layer), got shape {tuple(counts.shape)}")
        if counts.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer counts, got a bool tensor (a mask?)")
        values = counts.detach().cpu().tolist()
    else:
        try:
            values = list(counts)
        except TypeError:
            raise TypeError(f"{name} must be a 1-D sequence of counts, got {type(counts).__name__}") from None
    # Fast path (once per ratio per epoch in a training loop): plain non-negative ints, which is
    # what an integer tensor's tolist() gives. Anything else takes the checks below.
    if values and all(type(v) is int for v in values) and min(values) >= 0:
        return values
    out: List[int] = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{name}[{i}] must be an integer count, got {v!r}")
        if not math.isfinite(v) or v != int(v):
            raise ValueError(f"{name}[{i}] must be an integer count, got {v!r}")
        if v < 0:
            raise ValueError(f"{name}[{i}] is negative ({v!r}); kept counts must be >= 0")
        out.append(int(v))
    if not out:
        raise ValueError(f"{name} is empty; a structure needs at least one layer")
    return out


def layer_distances(n1: Sequence[int], n2: Sequence[int]) -> List[float]:
    """Per-layer distances d_l = |n1_l - n2_l| / (n1_l + n2_l), with 0/0 taken as 0."""
    a = _as_counts(n1, "n1")
    b = _as_counts(n2, "n2")
    if len(a) != len(b):
        raise ValueError(f"structures have different numbers of layers: {len(a)} and {len(b)}")
    return _distances(a, b)


def _distances(a: List[int], b: List[int]) -> List[float]:
    return [abs(x - y) / (x + y) if x + y else 0.0 for x, y in zip(a, b)]


def _psi_rows(n: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Psi(n, earlier[..., j, :]) for int64 structures, layers on the last axis.

    n is [..., L] and earlier [..., r, L]; the result is [..., r]. The layer sum runs along the
    contiguous last axis whatever the leading shape, so one indicator and a stack of several
    give the same bits (tests/indicator/test_indicator.py checks it)."""
    n = n[..., None, :]
    # Counts are >= 0, so den == 0 only where num == 0 too: dividing by max(den, 1) makes 0/0
    # count as 0 and leaves every other quotient as it is.
    d = np.abs(earlier - n) / np.maximum(earlier + n, 1)
    return 1.0 - d.sum(axis=-1) / earlier.shape[-1]


def _mean_similarity(n: np.ndarray, earlier: np.ndarray) -> float:
    """mean_j Psi(n, earlier[j]) for int64 structures, all pairs at once (the per-epoch path)."""
    # fsum: correctly rounded, so the ring's slot order (not chronological) cannot matter.
    return math.fsum(_psi_rows(n, earlier).tolist()) / earlier.shape[0]


def structure_similarity(n1: Sequence[int], n2: Sequence[int]) -> float:
    """Psi(N1, N2) = 1 - mean over layers of d_l: 1.0 for identical structures."""
    d = layer_distances(n1, n2)
    return 1.0 - math.fsum(d) / len(d)


class EpochHistory:
    """What every indicator answers: one value per recorded epoch t = 0, 1, ... (None where
    undefined) in `_history`, and the first epoch its rule held in `_fired_epoch`."""

    _history: List[Optional[float]]
    _fired_epoch: Optional[int]

    @property
    def fired(self) -> bool:
        return self._fired_epoch is not None

    @property
    def fired_epoch(self) -> Optional[int]:
        """The epoch t (0 = initialisation) at which the rule first held, else None."""
        return self._fired_epoch

    @property
    def history(self) -> List[Optional[float]]:
        """The indicator's value per recorded epoch t = 0, 1, ...; None where undefined."""
        return list(self._history)


class EarlyPruningIndicator(EpochHistory):
    """EPI for one prune ratio.

    Args:
        window: r, the number of earlier structures each EPI value averages over.
        tau: the threshold in (0, 1]; 0.983 is the paper's value for magnitude criteria,
            0.944 for the gradient (Taylor) criterion.
        patience: how many previous EPI values the current one must not fall below
            (all that exist when fewer do); 0 disables that condition.

    `update(counts)` is called once at initialisation (t = 0) and once after every epoch.
    Updates after firing still compute EPI (useful for curves); `fired_epoch` keeps the first.
    """

    def __init__(self, window: int = 5, tau: float = 0.983, patience: int = 5) -> None:
        self.window = check_int(window, "window", 1)
        self.tau = check_unit(tau, "tau", low_open=True, high_open=False)
        self.patience = check_int(patience, "patience", 0)
        self.reset()

    def reset(self) -> None:
        # Only the last `window` structures can enter a future EPI value: keep no more.
        self._structures: Deque[List[int]] = deque(maxlen=self.window)
        # The same structures as an int64 ring (row `_slot` is the oldest), built when the
        # window first fills: EPI is then a few array operations instead of r * L Python steps.
        self._ring: Optional[np.ndarray] = None
        self._slot = 0
        self._history: List[Optional[float]] = []
        self._fired_epoch: Optional[int] = None
        self._num_layers: Optional[int] = None

    # -- feeding -------------------------------------------------------------------------
    def update(self, counts: Sequence[int]) -> Optional[float]:
        """Record the structure of the next epoch; return EPI_t, or None while undefined."""
        n = _as_counts(counts)
        if self._num_layers is not None and len(n) != self._num_layers:
            raise ValueError(
                f"structure has {len(n)} layers but earlier structures had {self._num_layers}; "
                "the layer set must not change while tracking (was the model pruned? start a new indicator)"
            )
        epi: Optional[float] = None
        current = None
        if len(self._structures) == self.window:
            # The stored structures were validated when they came in: compare them as they are.
            current = np.asarray(n, dtype=np.int64)
            epi = _mean_similarity(current, self._full_ring())
        self._commit(n, current, epi)
        return epi

    def _full_ring(self) -> np.ndarray:
        """The window as an int64 [r, L] ring; only once the window is full."""
        if self._ring is None:
            self._ring = np.array(self._structures, dtype=np.int64)  # oldest first
            self._slot = 0
        return self._ring

    def _commit(self, n: List[int], current: Optional[np.ndarray], epi: Optional[float]) -> None:
        """Records structure n (validated; `current` is its int64 array when the ring is used)."""
        if current is not None:
            self._ring[self._slot] = current  # replaces the oldest, as the deque does below
            self._slot = (self._slot + 1) % self.window
        t = len(self._history)
        if epi is not None and self._fired_epoch is None and self._rule_holds(epi):
            self._fired_epoch = t
        self._num_layers = len(n)
        self._structures.append(n)
        self._history.append(epi)

    def _rule_holds(self, epi: float) -> bool:
        if epi < self.tau:
            return False
        if self.patience == 0:
            return True
        # The last `patience` defined values, found from the end (the history grows by one
        # value per epoch; the rule must not cost more each epoch).
        seen = 0
        for v in reversed(self._history):
            if v is None:
                continue
            if epi < v:
                return False
            seen += 1
            if seen == self.patience:
                break
        return True

    # -- reading -------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The t of the latest recorded structure (-1 before the first update)."""
        return len(self._history) - 1

    @property
    def last_structure(self) -> Optional[List[int]]:
        return list(self._structures[-1]) if self._structures else None

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "window": self.window,
            "tau": self.tau,
            "patience": self.patience,
            "structures": [list(s) for s in self._structures],
            "history": list(self._history),
            "fired_epoch": self._fired_epoch,
            "num_layers": self._num_layers,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        # A resumed run must apply the same rule it started with; silently adopting another
        # window/tau/patience would make the resumed decision differ from the uninterrupted one.
        for key in ("window", "tau", "patience"):
            if key not in state:
                raise KeyError(f"EPI state is missing {key!r}")
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"EPI state was saved with {key}={state[key]!r} but this indicator has "
                    f"{key}={getattr(self, key)!r}"
                )
        structures = [_as_counts(s, "structures[i]") for s in state["structures"]]
        if len(structures) > self.window:
            raise ValueError(f"EPI state holds {len(structures)} structures, more than window={self.window}")
        history = list(state["history"])
        if len(structures) > len(history):
            raise ValueError("EPI state holds more structures than recorded epochs")
        self.reset()
        self._structures.extend(structures)
        self._history = [None if v is None else float(v) for v in history]
        self._fired_epoch = state["fired_epoch"]
        self._num_layers = state["num_layers"]

    @classmethod
    def update_many(cls, indicators: Sequence["EarlyPruningIndicator"], counts: Any) -> List[Optional[float]]:
        """Feeds one epoch's structures to several indicators: row i of `counts` to `indicators[i]`.

        The result, and every indicator's state afterwards, is what `indicators[i].update(counts[i])`
        in turn gives, bit for bit; this is the per-epoch path for several tracked ratios (one
        [ratios, L] counts tensor per epoch), with the EPI values of all indicators whose window is
        full computed in one array pass. `counts` is an integer tensor or array [len(indicators), L],
        or a sequence of per-indicator count sequences. If a row is refused, no indicator has been
        updated.
        """
        inds = list(indicators)
        for i, ind in enumerate(inds):
            if not isinstance(ind, cls):
                raise TypeError(f"indicators[{i}] must be an EarlyPruningIndicator, got {type(ind).__name__}")
        if len({id(ind) for ind in inds}) != len(inds):
            raise ValueError("indicators holds the same indicator twice; each takes one structure per epoch")
        rows, array = _count_rows(counts, len(inds))
        for i, (ind, n) in enumerate(zip(inds, rows)):
            if ind._num_layers is not None and len(n) != ind._num_layers:
                raise ValueError(
                    f"counts[{i}] has {len(n)} layers but indicators[{i}]'s earlier structures had "
                    f"{ind._num_layers}; the layer set must not change while tracking"
                )
        # Indicators with a full window and one (window, L) shape are computed together.
        batch: Dict[tuple, List[int]] = {}
        for i, (ind, n) in enumerate(zip(inds, rows)):
            if len(ind._structures) == ind.window:
                batch.setdefault((ind.window, len(n)), []).append(i)
        epis: List[Optional[float]] = [None] * len(inds)
        currents: List[Optional[np.ndarray]] = [None] * len(inds)
        for (window, _), members in batch.items():
            if array is not None:
                current = array if len(members) == len(inds) else array[members]
            else:
                current = np.array([rows[i] for i in members], dtype=np.int64)  # [b, L]
            rings = np.stack([inds[i]._full_ring() for i in members])  # [b, r, L]
            psi = _psi_rows(current, rings).tolist()  # [b][r]
            for j, i in enumerate(members):
                epis[i] = math.fsum(psi[j]) / window
                currents[i] = current[j]
        for ind, n, current, epi in zip(inds, rows, currents, epis):
            ind._commit(n, current, epi)
        return epis

    def __repr__(self) -> str:
        return (
            f"EarlyPruningIndicator(window={self.window}, tau={self.tau}, patience={self.patience}, "
            f"epoch={self.epoch}, fired_epoch={self.fired_epoch})"
        )


def update_indicators(indicators: Sequence[EarlyPruningIndicator], counts: Any) -> List[Optional[float]]:
    """Feeds row i of `counts` to `indicators[i]`: `EarlyPruningIndicator.update_many`."""
    return EarlyPruningIndicator.update_many(indicators, counts)


def _count_rows(counts: Any, m: int) -> Tuple[List[List[int]], Optional[np.ndarray]]:
    """counts as m validated lists of Python ints (see _as_counts), and as an int64 [m, L]
    array when it came as an integer tensor or array (checked there in one pass)."""
    if isinstance(counts, (torch.Tensor, np.ndarray)):
        if counts.ndim != 2:
            raise ValueError(f"counts must be 2-D [indicators, layers], got shape {tuple(counts.shape)}")
        if counts.shape[0] != m:
            raise ValueError(f"counts has {counts.shape[0]} rows but there are {m} indicators")
        if isinstance(counts, torch.Tensor):
            if counts.dtype == torch.bool:
                raise TypeError("counts must hold integer counts, got a bool tensor (masks?)")
            counts = counts.detach().cpu()
            # Floating counts (bf16 has no numpy twin) take the per-value checks below.
            counts = counts.numpy() if not counts.is_floating_point() else np.array(counts.tolist(), dtype=object)
        if counts.dtype.kind in "iu" and counts.size and counts.shape[1]:
            arr = counts.astype(np.int64, copy=False)
            if arr.min() >= 0:
                return arr.tolist(), arr
        rows = counts.tolist()  # anything else: the per-value checks name the culprit
    else:
        try:
            rows = list(counts)
        except TypeError:
            raise TypeError(f"counts must be a 2-D sequence of counts, got {type(counts).__name__}") from None
        if len(rows) != m:
            raise ValueError(f"counts has {len(rows)} rows but there are {m} indicators")
    return [_as_counts(row, f"counts[{i}]") for i, row in enumerate(rows)], None
