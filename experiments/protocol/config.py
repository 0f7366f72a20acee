"""What a run is: the modes, the digits-hard corruption, the training recipe, one unit's config.

The training recipe is the main job's (`epi_fast.app.training.TRAIN_DEFAULTS`); the EPI
thresholds are the criteria's own (`Criterion.default_tau`, resolved by `PrunerConfig`), so
this module holds neither a copy of the schedule nor a table of taus.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from epi_fast.app.training import TRAIN_DEFAULTS

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(HERE, "results")

_W, _P = TRAIN_DEFAULTS["window"], TRAIN_DEFAULTS["patience"]
_T = TRAIN_DEFAULTS["epochs"]
# The pre-defined prune epoch and EPI's deadline are one value, fixed before running: T / 3.
_PREDEF = _T // 3
MODES: Dict[str, Dict[str, Any]] = {
    # < 60 s: one seed, one ratio, a 256-image training subset of digits, 6 epochs.
    "smoke": dict(epochs=6, seeds=[0], ratios=[0.5], criteria=["magnitude", "gradient"], candidates=[0, 3],
                  predef=3, deadline=3, train_subset=256, settings=["digits"], window=3, patience=3,
                  max_layer_ratio=0.9),
    # < 5 min: 2 seeds, 2 ratios, 12 epochs on digits (`--settings mnist1d` runs it on MNIST-1D).
    "quick": dict(epochs=12, seeds=[0, 1], ratios=[0.3, 0.7], criteria=["magnitude", "gradient"],
                  candidates=[0, 2, 4, 6], predef=4, deadline=4, train_subset=None,
                  settings=["digits"], window=3, patience=3, max_layer_ratio=0.9),
    # The protocol of docs/REPRODUCTION.md, fixed before its results (protocol_sha256() below):
    # T = 30, pre-def = deadline = T / 3 = 10, oracle candidates every 5 epochs (sized so that
    # the full run fits its budget; see the docs), 5 seeds on MNIST-1D, 3 on digits.
    "full": dict(epochs=_T, seeds=[0, 1, 2, 3, 4], ratios=[0.3, 0.5, 0.7], criteria=["magnitude", "gradient"],
                 candidates=[0, 5, 10, 15, 20], predef=_PREDEF, deadline=_PREDEF, train_subset=None,
                 settings=["mnist1d", "digits"], window=_W, patience=_P, max_layer_ratio=0.9,
                 seeds_by_setting={"digits": [0, 1, 2]}),
}
# The network of each setting (the command line's --model overrides it).
SETTING_MODELS = {"mnist1d": "resnet1d_small", "digits": "resnet_small", "digits-hard": "resnet_small"}


def default_model(setting: str) -> str:
    return SETTING_MODELS.get(setting, "resnet_small")


# The training recipe of every run: the main job's, as the unit files record it.
TRAIN: Dict[str, Any] = {k: TRAIN_DEFAULTS[k] for k in ("batch_size", "lr", "momentum", "weight_decay", "warmup_epochs")}

# The harder task (documented in docs/REPRODUCTION.md): digits with a 400-image training
# subset, 20% of the training labels flipped to another class, Gaussian pixel noise (sigma 0.6
# of the standardised scale) and one 4x4 occluding patch per image (train and test alike).
HARD = dict(train_subset=400, label_noise=0.2, pixel_noise=0.6, occlusion=4)

# Where the t = 0 structure comes from (the unit config's "t0"; a different value reruns a unit).
T0_WEIGHTS = "initial-weights"     # weight criteria: the weights at initialisation
T0_FIRST_STEP = "first-step"       # gradient criteria, StructureTracker: the first finite optimizer step
T0_TRAIN_PASS = "train-set-pass"   # epi_fast 0.1's protocol: one ordered pass over the training set
T0_DESCRIPTIONS = {
    T0_WEIGHTS: "the criterion's scores of the weights at initialisation",
    T0_FIRST_STEP: ("the Taylor scores of the first optimizer step with finite gradients, taken at the initial "
                    "weights (StructureTracker.initial); the e = 0 branch prunes the untrained network with them"),
    T0_TRAIN_PASS: ("the Taylor scores of the initial weights averaged over one ordered pass of the training set "
                    "without updates (epi_fast 0.1's protocol, a separate pass)"),
}
# Protocol names of the criteria -> the library's (resolved through epi_fast.criteria.get_criterion).
CRITERIA = {"magnitude": "magnitude", "gradient": "gradient"}


def criterion(name: str):
    """The library's `Criterion` object for a protocol criterion name."""
    from epi_fast.criteria import get_criterion

    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; expected one of {', '.join(CRITERIA)}")
    return get_criterion(CRITERIA[name])


def t0_kind(name: str) -> str:
    return T0_FIRST_STEP if criterion(name).needs_gradients else T0_WEIGHTS


def setting_tag(setting: str) -> str:
    return setting if setting in SETTING_MODELS else os.path.basename(os.path.normpath(setting))


def protocol_definition() -> Dict[str, Any]:
    """Everything the full run's results depend on that is fixed in advance: the full mode, the
    training recipe, the data definitions, the networks and the group reductions."""
    from .data import DIGITS_VAL_FRACTION, MNIST1D

    return {"full": MODES["full"], "train": TRAIN, "hard": HARD, "mnist1d": MNIST1D,
            "digits_val_fraction": DIGITS_VAL_FRACTION, "models": SETTING_MODELS,
            "reduce": {"magnitude": "mean", "gradient": "sum"}, "criteria": CRITERIA,
            "oracle": "the candidate epoch with the best validation accuracy (ties: the earlier), reported on test"}


def protocol_sha256() -> str:
    """The hash of `protocol_definition()` (canonical JSON), recorded by every unit file."""
    import hashlib
    import json

    text = json.dumps(protocol_definition(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def unit_config(setting: str, seed: int, crit: str, cfg: Dict[str, Any], mode: str, model: str,
                reduce: Dict[str, str]) -> Dict[str, Any]:
    """The configuration of one (setting, seed, criterion) unit: everything its results depend on."""
    return dict(setting=setting, setting_tag=setting_tag(setting), seed=seed, criterion=crit,
                epochs=cfg["epochs"], ratios=list(cfg["ratios"]), candidates=list(cfg["candidates"]),
                predef=cfg["predef"], deadline=cfg["deadline"], window=cfg["window"], patience=cfg["patience"],
                model=model or default_model(setting), train_subset=cfg["train_subset"], mode=mode,
                train=dict(TRAIN), hard=dict(HARD) if setting == "digits-hard" else None, reduce=dict(reduce),
                t0=t0_kind(crit), max_layer_ratio=cfg.get("max_layer_ratio", 1.0),
                protocol_sha256=protocol_sha256())


def legacy_t0(config: Dict[str, Any]) -> str:
    """The t = 0 definition of a unit config written before configs recorded it (epi_fast 0.1)."""
    return T0_TRAIN_PASS if config.get("criterion") == "gradient" else T0_WEIGHTS


def upgraded(config: Dict[str, Any]) -> Dict[str, Any]:
    """A stored unit config with the keys that older protocols left implicit filled in."""
    out = dict(config)
    out.setdefault("t0", legacy_t0(config))
    return out


def same_config(stored: Optional[Dict[str, Any]], wanted: Dict[str, Any]) -> bool:
    """Whether a stored unit was computed with the configuration wanted now (JSON-normalised)."""
    import json

    if stored is None:
        return False
    return upgraded(stored) == json.loads(json.dumps(wanted))


def unit_path(out: str, cfg: Dict[str, Any]) -> str:
    return os.path.join(out, "units", f"{cfg['setting_tag']}__{cfg['criterion']}__seed{cfg['seed']}.json")


def pruner_config(cfg: Dict[str, Any]):
    """The `PrunerConfig` of a unit: its first ratio the target, the others tracked, its
    criterion, window, patience and group reduction; tau the criterion's own; no deadline (the
    protocol applies the deadline itself, with `prune_epoch_for`, to the finished curve). Ratios
    count channels; the per-layer limit is the unit's max_layer_ratio (the library's default
    0.9 in every mode: no layer loses more than 90% of its channels; units of earlier protocols
    without it ran the paper's rule, 1.0)."""
    from epi_fast.policy.config import PrunerConfig

    ratios = list(cfg["ratios"])
    crit = cfg["criterion"]
    criterion(crit)  # a protocol criterion name
    return PrunerConfig.build(ratios[0], criterion=CRITERIA[crit], window=cfg["window"], patience=cfg["patience"],
                              track_ratios=ratios[1:], reduce=cfg["reduce"][crit],
                              max_layer_ratio=cfg.get("max_layer_ratio", 1.0))
