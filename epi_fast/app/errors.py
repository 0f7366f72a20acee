"""How every `epi-fast` subcommand reports a failure: one line on stderr naming the problem,
exit status 2 for usage errors and 1 for failures, a traceback only with --debug; and the
argument types the subcommands share."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Tuple, Type


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (counts, sizes, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def run_reporting_errors(prog: str, debug: bool, func: Callable[[], int],
                         usage_errors: Tuple[Type[BaseException], ...]) -> int:
    try:
        return int(func() or 0)
    except usage_errors as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        # Expected failures read as plain messages; anything else names its type.
        kind = "" if isinstance(e, (RuntimeError, OSError, ValueError)) else f"{type(e).__name__}: "
        print(f"{prog}: error: {kind}{one_line(e)}", file=sys.stderr)
        return 1
