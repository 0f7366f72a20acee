"""Paired comparisons for few seeds: a t interval, an exact sign-flip test, the detectable effect.

With n = 3 to 5 paired seeds a percentile bootstrap under-covers (its interval is built from at
most 2^n distinct resamples and is too narrow), so the protocol reports the Student t interval
of the mean difference and, beside it, the exact sign-flip permutation test (under the null of
no effect each pair's difference is as likely positive as negative; all 2^n sign patterns are
enumerated, so the p-value is exact for any n used here).
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, Optional, Sequence

import numpy as np

# Enumerate every sign pattern up to this many pairs (2^16 = 65,536 patterns).
EXACT_MAX_PAIRS = 16


def sign_flip_p(diffs: Sequence[float]) -> Optional[float]:
    """Two-sided exact p-value of the sign-flip test for mean(diffs) = 0: the share of the 2^n
    sign patterns whose |mean| is at least the observed |mean|. None for no pairs. Zeros (a run
    forced at the deadline, whose EPI - pre-def is zero by construction) take both signs alike."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n == 0:
        return None
    if n > EXACT_MAX_PAIRS:
        raise ValueError(f"sign_flip_p enumerates 2^n patterns; {n} pairs is more than {EXACT_MAX_PAIRS}")
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    means = np.abs(signs @ d) / n
    # A tolerance so that float rounding does not drop the observed pattern itself.
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def paired(diffs: Sequence[float], power: float = 0.8, alpha: float = 0.05) -> Dict[str, Any]:
    """Summary of paired differences (already in the unit reported, e.g. points of top-1):
    mean, sample sd, the (1 - alpha) t interval and its half-width, the exact sign-flip p, the
    smallest true effect this design detects with the given power at level alpha (two-sided t
    test, the observed sd taken as the truth: (t_{1-alpha/2} + t_{power}) sd / sqrt(n)), and the
    verdict: "positive" / "negative" when the interval excludes zero, else "inconclusive"."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    out: Dict[str, Any] = {"n": n, "values": [float(v) for v in d]}
    if n == 0:
        return {**out, "mean": None, "sd": None, "ci": None, "half_width": None, "p_sign_flip": None,
                "detectable": None, "verdict": "no pairs"}
    mean = float(d.mean())
    out.update(mean=mean, p_sign_flip=sign_flip_p(d))
    if n < 2:
        return {**out, "sd": None, "ci": None, "half_width": None, "detectable": None, "verdict": "one pair"}
    sd = float(d.std(ddof=1))
    se = sd / np.sqrt(n)
    tc = float(stats.t.ppf(1 - alpha / 2, n - 1))
    half = tc * se
    lo, hi = mean - half, mean + half
    verdict = "positive" if lo > 0 else "negative" if hi < 0 else "inconclusive"
    detectable = (tc + float(stats.t.ppf(power, n - 1))) * se
    return {**out, "sd": sd, "ci": [lo, hi], "half_width": half, "detectable": detectable, "verdict": verdict}
