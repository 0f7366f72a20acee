"""How every `epi-fast` subcommand reports a failure: one line on stderr naming the problem,
exit status 2 for usage errors and 1 for failures, a traceback only with --debug; how it stops
on Ctrl-C (exit 130) and SIGTERM (exit 143); and the argument types the subcommands share.

SIGTERM is turned into `Terminated`, a KeyboardInterrupt, for the duration of the command only
(`sigterm_raises`): every `except Exception` in the libraries lets it through, as it lets
Ctrl-C through, so the same clean-up runs for both.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import traceback
from typing import Callable, Iterator, Optional, Tuple, Type

__all__ = [
    "one_line", "run_reporting_errors", "Terminated", "sigterm_raises",
    "interrupt_exit_status", "interrupt_signal_name", "report_interrupt",
]


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (or another terminating signal) while a command ran."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(interrupt_signal_name(signum))
        self.signum = int(signum)


def interrupt_signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _signum(e: KeyboardInterrupt) -> int:
    return int(getattr(e, "signum", signal.SIGINT))


def interrupt_exit_status(e: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (SIGINT), 143 for SIGTERM: 128 + the signal number, as a shell reports a
    process the signal killed."""
    return 128 + _signum(e)


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While inside, SIGTERM raises `Terminated` in the main thread; the previous handler is
    restored on the way out. Outside the main thread (where Python cannot install handlers)
    it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        # None: a handler installed outside Python; the default is the nearest thing to it.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def run_reporting_errors(prog: str, debug: bool, func: Callable[[], int],
                         usage_errors: Tuple[Type[BaseException], ...]) -> int:
    """Run `func` and turn what it raises into the exit status and one line on stderr.

    A failure or an interruption may carry `epi_fast_detail` (a short text) to be printed
    after its message, e.g. where the partial results are."""
    with sigterm_raises():
        try:
            return int(func() or 0)
        except usage_errors as e:
            if debug:
                traceback.print_exc()
            _print_error(prog, e, one_line(e))
            return 2
        except KeyboardInterrupt as e:
            return report_interrupt(prog, debug, e)
        except Exception as e:
            if debug:
                traceback.print_exc()
            # Expected failures read as plain messages; anything else names its type.
            kind = "" if isinstance(e, (RuntimeError, OSError, ValueError)) else f"{type(e).__name__}: "
            detail = getattr(e, "epi_fast_detail", None)
            _print_error(prog, e, f"{kind}{one_line(e)}{' (' + detail + ')' if detail else ''}")
            return int(getattr(e, "epi_fast_exit_status", 1))


def _print_error(prog: str, e: BaseException, text: str) -> None:
    # In a distributed run (app/dist_job.py) an error that another rank prints already is
    # marked quiet, and one that only a rank other than 0 met names that rank.
    if getattr(e, "epi_fast_quiet", False):
        return
    rank = getattr(e, "epi_fast_rank", None)
    where = f" (rank {rank})" if rank is not None else ""
    print(f"{prog}{where}: error: {text}", file=sys.stderr)


def report_interrupt(prog: str, debug: bool, e: KeyboardInterrupt) -> int:
    """The one line of an interrupted command; returns its exit status (130 or 143)."""
    if debug:
        traceback.print_exc()
    signum = _signum(e)
    how = "" if signum == signal.SIGINT else f" ({interrupt_signal_name(signum)})"
    detail: Optional[str] = getattr(e, "epi_fast_detail", None)
    if not getattr(e, "epi_fast_quiet", False):
        print(f"{prog}: interrupted{how}{': ' + detail if detail else ''}", file=sys.stderr)
    return interrupt_exit_status(e)
