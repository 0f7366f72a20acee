"""The App. E experiment's modes: what one unit (one seed) runs."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(HERE, "results", "appe")

# Shared by every mode: App. E's criterion, ratios and threshold, the main job's detector and
# recipe (SGD, Nesterov 0.9, weight decay 5e-4 off BatchNorm and biases, warm-up then cosine).
COMMON: Dict[str, Any] = dict(model="ssd_resnet18", criterion="magnitude", ratios=[0.09, 0.4], tau=0.983,
                              image_size=64, batch_size=32, lr=0.05, momentum=0.9, weight_decay=5e-4,
                              warmup_epochs=1, data_seed=0)

MODES: Dict[str, Dict[str, Any]] = {
    # The test suite's: tiny sets, 3 epochs, one candidate.
    "smoke": dict(COMMON, epochs=3, seeds=[0], candidates=[1], deadline=2, n_train=64, n_val=32, n_test=32,
                  batch_size=16),
    "quick": dict(COMMON, epochs=4, seeds=[0], candidates=[1, 2], deadline=2, n_train=300, n_val=100, n_test=200),
    # The experiment of docs/DETECTION_APPE.md: T = 6, a grid over epochs 1-4, EPI's deadline at
    # T / 2 (App. E's prunes came at 12% and 32% of its schedule), 3 seeds.
    "full": dict(COMMON, epochs=6, seeds=[0, 1, 2], candidates=[1, 2, 3, 4], deadline=3, n_train=1200, n_val=200,
                 n_test=500),
}


def window(cfg: Dict[str, Any]) -> int:
    """EPI's window: App. E's rule (50 of 800 epochs, at least 2), `scaled_window`."""
    from epi_fast.detection.schedule import scaled_window

    return scaled_window(cfg["epochs"])


def unit_config(cfg: Dict[str, Any], seed: int, mode: str) -> Dict[str, Any]:
    out = {k: v for k, v in cfg.items() if k != "seeds"}
    out.update(seed=seed, mode=mode, window=window(cfg), patience=window(cfg))
    out["config_sha256"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    return out


def unit_path(out: str, cfg: Dict[str, Any]) -> str:
    return os.path.join(out, "units", f"seed{cfg['seed']}.json")
