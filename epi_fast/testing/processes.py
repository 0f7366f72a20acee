"""Several processes of one torch.distributed job on this machine, with a hang timeout.

`run_ranks(fn, world, timeout, args)` starts `world` processes (the "spawn" start method, not
torchrun), each calling ``fn(rank, world, init_file, *args)`` after nothing but its start;
`fn` initialises the process group itself from `init_file`. It waits at most `timeout`
seconds in all; processes still running then are killed and the call raises TimeoutError, so
a test whose ranks hang fails instead of hanging the suite. Returns every rank's exit code and
the seconds it took until that rank ended (None for a killed one).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

__all__ = ["run_ranks"]


def run_ranks(fn: Callable[..., Any], world: int, timeout: float, args: Sequence[Any] = (),
              init_file: Optional[str] = None) -> List[Tuple[Optional[int], Optional[float]]]:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    if init_file is None:
        fd, init_file = tempfile.mkstemp(prefix="epi_fast_init_")
        os.close(fd)
        os.remove(init_file)  # the file:// rendezvous creates it
    procs = [ctx.Process(target=fn, args=(rank, world, init_file, *args), daemon=True) for rank in range(world)]
    start = time.monotonic()
    for p in procs:
        p.start()
    ended: List[Optional[float]] = [None] * world
    try:
        while any(e is None for e in ended):
            now = time.monotonic() - start
            for rank, p in enumerate(procs):
                if ended[rank] is None and not p.is_alive():
                    p.join()
                    ended[rank] = now
            if now > timeout and any(e is None for e in ended):
                alive = [r for r, e in enumerate(ended) if e is None]
                raise TimeoutError(f"ranks {alive} of {world} still running after {timeout:.0f} s (killed)")
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        if os.path.exists(init_file):
            os.remove(init_file)
    return [(p.exitcode, e) for p, e in zip(procs, ended)]
