"""The packages form layers: a module imports only from its own package and from the layers
below it (docs/DESIGN.md). Read from the source, so a new upward import fails here."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "epi_fast"

# Lower number = lower layer. Modules at the top of the package that only re-export or alias
# (__init__, __main__, info, _compat and the 0.1 aliases) are not layered.
LAYER = {
    "_version": 0, "_args": 0, "_io": 0,
    "ops": 1, "distributed": 1, "testing": 2,
    "layout": 2, "models": 2,
    "criteria": 3, "indicator": 3, "targets": 3,
    "surgery": 4,
    "policy": 5,
    "integrations": 6, "detection": 6,
    "app": 7,
}


def _unit(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return rel.parts[0]


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text())
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
            else:
                names = [node.module.split(".")] if node.module else []
            for parts in names:
                yield node.lineno, parts
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value.split(".")


def test_imports_go_down_the_layers():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = _unit(path)
        if unit not in LAYER:
            continue
        for line, parts in _imports(path):
            if parts[0] != "epi_fast" or len(parts) < 2:
                continue
            target = parts[1]
            if target not in LAYER or target == unit:
                continue
            if LAYER[target] > LAYER[unit]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line} ({unit}, layer {LAYER[unit]}) imports "
                             f"epi_fast.{'.'.join(parts[1:])} (layer {LAYER[target]})")
    assert not wrong, "\n".join(wrong)


def test_every_package_is_placed():
    units = {p.name if p.is_dir() else p.stem for p in ROOT.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py")}
    unlayered = {"__init__", "__main__", "info", "_compat", "_C"} | {
        "graph", "scoring", "serialize", "pruner", "cli", "cli_prune", "data", "report", "reference", "_ops", "_ext"}
    assert units - unlayered - set(LAYER) == set(), units - unlayered - set(LAYER)
