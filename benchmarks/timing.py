"""Clocks, statistics, the bandwidth floor and peak-memory probes.

CPU code is timed with time.perf_counter after warm-up; CUDA code with CUDA events recorded on
the current stream around the call, after a device synchronisation, and read after the end
event has completed (so asynchronous launches are counted in full).

What a call finds in cache must not depend on what ran just before it: with implementations
timed in interleaved rounds, a model that fits in the last-level cache (MobileNetV2's 14 MB in
a 32 MB L3) would otherwise be read from DRAM by one implementation and from cache by the next.
So every timed call starts from one of two defined states (``Budget.cache``):

- ``"warm"`` (the default): the same call runs once, untimed, right before: the steady state of
  repeated calls, data and code cached as far as they fit (the floor alike);
- ``"cold"``: a buffer of twice the last-level cache (the CPU's L3, the GPU's L2) is
  overwritten, untimed, right before. This evicts the data and also the interpreter's and the
  dispatcher's own state, so fixed per-call costs weigh several times what they do in a loop.
"""

from __future__ import annotations

import ctypes
import os
import resource
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Budget:
    """How long to measure one implementation of one case."""

    warmup: int = 1
    min_reps: int = 5
    max_reps: int = 30
    seconds: float = 1.0
    cache: str = "warm"  # the state every timed call starts from: "warm" or "cold" (module doc)


def last_level_cache_bytes(device: torch.device) -> int | None:
    """The GPU's L2 or the CPU's largest cache (sysfs), in bytes; None where unknown."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)) or None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        entries = os.listdir(base)
    except OSError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        size = int(text[:-1]) * units[text[-1]] if text and text[-1] in units else int(text or 0)
        best = max(best or 0, size)
    return best


_FLUSH: dict = {}


def flush_bytes(device: torch.device) -> int:
    """Size of the buffer written before each timed call: twice the last-level cache, at least
    32 MiB (64 MiB where the cache size is unknown)."""
    llc = last_level_cache_bytes(device)
    return max(32 << 20, 2 * llc) if llc else 64 << 20


def flush_caches(device: torch.device) -> None:
    key = str(device)
    if key not in _FLUSH:
        _FLUSH[key] = torch.empty(flush_bytes(device) // 4, dtype=torch.int32, device=device)
    _FLUSH[key].fill_(1)
    sync(device)


def _stats(times: list[float]) -> dict:
    ts = sorted(times)
    n = len(ts)
    if n >= 4:
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive")
    else:
        q1, q3 = ts[0], ts[-1]
    return {
        "median_s": statistics.median(ts),
        "min_s": ts[0],
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "reps": n,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, budget: Budget) -> dict:
    """Median/min/IQR of fn() over repeated runs after `budget.warmup` untimed calls."""
    for _ in range(budget.warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < budget.max_reps and (
        len(times) < budget.min_reps or time.perf_counter() - start < budget.seconds
    ):
        times.append(_time_once(fn, device, budget.cache))
    return _stats(times)


def _time_once(fn, device: torch.device, cache: str = "warm") -> float:
    if cache == "cold":
        flush_caches(device)
    elif cache == "warm":
        fn()
        sync(device)
    else:
        raise ValueError(f"cache must be 'warm' or 'cold', got {cache!r}")
    if device.type == "cuda":
        begin = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure_interleaved(fns: dict, device: torch.device, budget: Budget) -> dict:
    """Like `measure` for several implementations at once, timed in rounds (each round runs each
    implementation once), so that a burst of load from elsewhere on a shared machine hits all of
    them alike instead of biasing whichever happened to be running. Each round starts one
    implementation further along, so none always follows the same neighbour. The budget's
    seconds are per implementation. Every implementation's stats keep its times per round
    (`samples_s`, in round order), for ratios taken within a round (`paired_ratio`)."""
    for _ in range(budget.warmup):
        for fn in fns.values():
            fn()
    sync(device)
    names = list(fns)
    times: dict = {name: [] for name in names}
    start = time.perf_counter()
    rounds = 0
    while rounds < budget.max_reps and (
        rounds < budget.min_reps or time.perf_counter() - start < budget.seconds * len(fns)
    ):
        shift = rounds % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(_time_once(fns[name], device, budget.cache))
        rounds += 1
    return {name: dict(_stats(ts), samples_s=ts) for name, ts in times.items()}


def paired_ratio(num: dict, den: dict) -> float | None:
    """Median over rounds of num's time / den's time in the same round (stats from
    measure_interleaved). Load that drifts from round to round (the machine's neighbours)
    cancels in each quotient; the ratio of the two medians keeps it. None without samples."""
    a, b = num.get("samples_s"), den.get("samples_s")
    if not a or not b or len(a) != len(b):
        return None
    return statistics.median(x / y for x, y in zip(a, b))


_FLOOR_CACHE: dict = {}


def floor_tensor(nbytes: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One flat tensor of (about) `nbytes` bytes of `dtype`: what one read of the inputs costs."""
    elem = torch.empty((), dtype=dtype).element_size()
    key = (max(1, nbytes // elem), dtype, str(device))
    if key not in _FLOOR_CACHE:
        _FLOOR_CACHE.clear()  # one at a time: the big ones are hundreds of MB
        if dtype.is_floating_point:
            flat = torch.empty(key[0], dtype=dtype, device=device).uniform_()
        else:
            flat = (torch.rand(key[0], device=device) > 0.5).to(dtype)
        _FLOOR_CACHE[key] = flat
    return _FLOOR_CACHE[key]


def read_floor(nbytes: int, dtype: torch.dtype, device: torch.device, budget: Budget) -> dict:
    """Time of one .sum() over a flat tensor of the same byte size and dtype."""
    flat = floor_tensor(nbytes, dtype, device)
    out = measure(lambda: flat.sum(), device, budget)
    out["bytes"] = flat.numel() * flat.element_size()
    return out


def copy_bandwidth(device: torch.device, budget: Budget, nbytes: int = 1 << 30) -> dict:
    """Device-to-device copy bandwidth, counting bytes read + written (GPU only)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    stats = measure(lambda: dst.copy_(src), device, budget)
    stats["bytes_moved"] = 2 * nbytes
    stats["bandwidth_GBps"] = 2 * nbytes / stats["median_s"] / 1e9
    del src, dst
    torch.cuda.empty_cache()
    return stats


# --- peak memory -----------------------------------------------------------------------------

def _vm_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    # Linux >= 4.0: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pin_malloc_to_mmap() -> bool:
    """Make glibc serve every allocation above 64 KiB with a fresh mmap (and return it on free),
    so that a peak-RSS delta sees large temporaries instead of reused heap pages. Called only
    before the memory probes, after all timings (it would change the baselines' costs)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024))
    except OSError:
        return False


def peak_extra_memory(fn, device: torch.device) -> dict:
    """Peak memory that fn() adds above what is allocated before it runs.

    CUDA: torch.cuda.max_memory_allocated. CPU: peak-RSS delta (VmHWM reset through
    /proc/self/clear_refs where allowed, else the resource.getrusage max-RSS delta, which only
    sees growth above the process's earlier peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return {"method": "torch.cuda.max_memory_allocated", "bytes": torch.cuda.max_memory_allocated(device) - base}
    if _reset_peak_rss():
        base = _vm_kib("VmRSS")
        fn()
        peak = _vm_kib("VmHWM")
        if base is not None and peak is not None:
            return {"method": "VmHWM - VmRSS (clear_refs reset)", "bytes": max(0, peak - base) * 1024}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": "getrusage ru_maxrss delta (lower bound)", "bytes": (after - before) * 1024}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
