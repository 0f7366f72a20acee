"""Shared by the three cost benchmarks: the machine's load, and timing in interleaved rounds."""

from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from typing import Callable, Dict, Optional, Tuple

from ..timing import _stats as timing_stats


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def wait_for_quiet(threshold: Optional[float], max_wait_s: float, poll_s: float = 15.0, log=print) -> dict:
    """Sleep until the 1-minute load average is below `threshold` (None: do not wait), at most
    `max_wait_s`. Returns what was seen: the load when called, when it returned, the wait."""
    first = load_average()
    start = time.monotonic()
    load = first
    if threshold is not None and load is not None and load[0] >= threshold:
        log(f"  load average {load} >= {threshold}: waiting (at most {max_wait_s:.0f} s)")
        while load is not None and load[0] >= threshold and time.monotonic() - start < max_wait_s:
            time.sleep(min(poll_s, max(0.0, max_wait_s - (time.monotonic() - start))) or poll_s)
            load = load_average()
    waited = time.monotonic() - start
    quiet = threshold is None or load is None or load[0] < threshold
    if threshold is not None:
        log(f"  load average {load} after {waited:.0f} s" + ("" if quiet else f" (still >= {threshold}: measuring anyway)"))
    return {"threshold": threshold, "load_when_called": first, "load_at_start": load, "waited_s": round(waited, 1),
            "quiet": quiet}


def stats(times) -> dict:
    """The harness's summary of repeated timings (benchmarks.timing), with the samples kept."""
    return {**timing_stats(list(times)), "samples_s": list(times)}


def paired_ratio(num: dict, den: dict) -> Optional[float]:
    """Median over rounds of num's time / den's time in the same round: load that drifts from
    round to round hits both halves of each quotient."""
    a, b = num.get("samples_s"), den.get("samples_s")
    if not a or not b or len(a) != len(b):
        return None
    return statistics.median(x / y for x, y in zip(a, b))


Timed = Tuple[Callable[[], object], Callable[[object], object]]


def interleaved(fns: Dict[str, Timed], rounds: int, warmup: int = 1, collect: bool = False) -> Dict[str, dict]:
    """Time several functions in rounds: each round runs each one once, starting one further
    along the list each round, so that none always follows the same neighbour and a burst of
    load from elsewhere hits them all alike. `fns[name] = (prepare, run)`: `prepare()` runs
    untimed right before each call (e.g. a deep copy of the model to prune) and its result is
    passed to `run`, which is timed. `collect`: a garbage collection before each timed call,
    untimed. Returns per name the stats of its times (`samples_s` in round order) and the median
    count of minor page faults during its timed calls (`minor_faults`: fresh pages the allocator
    had the kernel map, e.g. for large activations)."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            prepare, run = fns[name]
            run(prepare())
    times: Dict[str, list] = {name: [] for name in names}
    faults: Dict[str, list] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            prepare, run = fns[name]
            arg = prepare()
            if collect:
                gc.collect()
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            run(arg)
            times[name].append(time.perf_counter() - t0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            del arg
    return {name: dict(stats(ts), minor_faults=statistics.median(faults[name])) for name, ts in times.items()}


def nothing():
    return None
