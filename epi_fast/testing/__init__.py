"""Helpers shared by the tests and the benchmarks: how the operators' results are compared
(tolerances and exact equality, with the reasons in ``compare``), and the processes of a
distributed test with a hang timeout (``processes``)."""

from .compare import (
    ATOL,
    RTOL,
    U,
    assert_bounded,
    assert_exact,
    assert_scores_close,
    close,
    equal,
    score_rtol,
    taylor_bound,
)
from .processes import run_ranks

__all__ = [
    "U",
    "RTOL",
    "ATOL",
    "score_rtol",
    "close",
    "equal",
    "assert_scores_close",
    "assert_bounded",
    "assert_exact",
    "taylor_bound",
    "run_ranks",
]
