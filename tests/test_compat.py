"""The 0.1 module paths keep working for one release, and say where their contents moved."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from epi_fast._compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_module_paths_alias_their_new_home(old):
    # A fresh interpreter: the warning fires on the first import only.
    code = (
        "import warnings, importlib, sys\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        f"    warnings.simplefilter('always')\n"
        f"    m = importlib.import_module({old!r})\n"
        f"assert m is importlib.import_module({MOVED[old]!r}), m\n"
        "assert any(issubclass(x.category, DeprecationWarning) and "
        f"{MOVED[old]!r} in str(x.message) for x in w), [str(x.message) for x in w]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_graph_module_exposes_the_layout_api():
    with pytest.warns(DeprecationWarning):
        sys.modules.pop("epi_fast.graph", None)
        graph = importlib.import_module("epi_fast.graph")
    assert callable(graph.group_layout) and graph.GroupLayout.__doc__


def test_public_names_of_0_1_are_still_importable():
    import epi_fast

    for name in ("info", "channel_scores", "taylor_scores", "taylor_accumulate_", "group_reduce", "global_masks",
                 "global_masks_counts", "layer_counts", "mask_overlap", "group_layout", "GroupLayout", "prune",
                 "save_pruned", "load_pruned", "build_model", "EarlyPruningIndicator", "EarlyBirdIndicator",
                 "EPIPruner", "reference", "__version__"):
        assert getattr(epi_fast, name) is not None, name
    from epi_fast.indicator import update_indicators, structure_similarity, layer_distances  # noqa: F401
    from epi_fast.surgery import prune, prune_with_masks, count_ops  # noqa: F401
    from epi_fast.policy import EPIPruner, CRITERIA, GRADIENT_CRITERIA, default_tau  # noqa: F401
    assert set(CRITERIA) >= {"magnitude", "bn", "l1", "l2", "gradient", "taylor"}
    assert set(GRADIENT_CRITERIA) == {"gradient", "taylor"}


def test_python_m_cli_prune_still_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "epi_fast.cli_prune", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--ratio" in proc.stdout
