"""Run artefacts written so that a reader never sees half a file.

Every writer goes through `atomic_write`: the bytes land in a temporary file in the *same*
directory (so the final rename stays on one file system), are flushed to disk, and replace the
target with `os.replace`, which is atomic on POSIX and Windows. A crash leaves either the old
file or the new one, plus at worst a stray `.tmp` file, never a truncated JSON or PNG.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

__all__ = [
    "atomic_write",
    "write_bytes",
    "write_json",
    "write_jsonl",
    "write_png",
    "plot_epi_curve",
    "jsonable",
]


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call `write(f)` on a temporary binary file beside `path`, then move it over `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def jsonable(obj: Any) -> Any:
    """Plain JSON types for tensors, numpy scalars and non-finite floats.

    JSON has no NaN/Infinity; writing them (Python's default) produces files that strict
    parsers reject, so they become null.
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    text = json.dumps(jsonable(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"
    write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> None:
    """The whole file at once: one compact JSON object per line."""
    lines = [json.dumps(jsonable(r), allow_nan=False, separators=(",", ":")) for r in records]
    write_bytes(path, ("\n".join(lines) + ("\n" if lines else "")).encode("utf-8"))


def write_png(path: str | os.PathLike, figure: Any, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically (rendered to memory first)."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes(path, buf.getvalue())


def plot_epi_curve(
    path: str | os.PathLike,
    epi_tracked: Mapping[Any, Sequence[Optional[float]]],
    tau: float,
    prune_epoch: Optional[int],
    title: Optional[str] = None,
) -> None:
    """EPI against epoch, one line per tracked ratio; tau dashed; the prune epoch marked.

    `epi_tracked` maps a ratio (float or string) to its EPI values for epochs 0, 1, ...,
    None where undefined. Uses the Agg backend through an explicit Figure, so it works
    headless and never touches pyplot's global state.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    longest = 0
    for ratio, values in sorted(epi_tracked.items(), key=lambda kv: float(kv[0])):
        pts = [(t, v) for t, v in enumerate(values) if v is not None]
        longest = max(longest, len(values))
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=f"ratio {float(ratio):g}")
    ax.axhline(tau, color="black", linestyle="--", linewidth=1, label=f"tau = {tau:g}")
    if prune_epoch is not None:
        ax.axvline(prune_epoch, color="tab:red", linestyle=":", linewidth=1.5, label=f"pruned after epoch {prune_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("EPI")
    ax.set_xlim(0, max(longest - 1, 1))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "Early Pruning Indicator")
    write_png(path, fig)


def summary_ratio_key(ratio: float) -> str:
    """The string key of a ratio in summary.json (`"0.5"`, `"0.25"`): shortest round-trip form."""
    return repr(float(ratio))


def mapping_with_string_ratios(values: Dict[float, Any]) -> Dict[str, Any]:
    return {summary_ratio_key(r): v for r, v in values.items()}
