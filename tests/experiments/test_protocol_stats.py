"""The reproduction's paired statistics: the exact sign-flip test, the t interval and its
coverage at n = 5, the detectable effect, and the verdicts."""

import itertools

import numpy as np
import pytest
from scipy import stats

from experiments.protocol.stats import paired, sign_flip_p


def brute_sign_flip(d):
    d = np.asarray(d, dtype=float)
    obs = abs(d.mean())
    hits = [abs(np.mean(np.array(s) * d)) >= obs - 1e-12 for s in itertools.product((1, -1), repeat=len(d))]
    return sum(hits) / len(hits)


def test_sign_flip_exact_small_cases():
    # All of one sign: only the observed pattern and its mirror reach |mean| = 2 -> 2 / 8.
    assert sign_flip_p([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert sign_flip_p([0.0, 0.0, 0.0]) == 1.0        # forced runs: no evidence at all
    assert sign_flip_p([]) is None
    rng = np.random.default_rng(0)
    for n in (1, 2, 4, 5, 7):
        d = rng.normal(0.3, 1.0, size=n).round(2)     # rounded: ties between patterns happen
        assert sign_flip_p(d) == pytest.approx(brute_sign_flip(d))
    with pytest.raises(ValueError, match="2\\^n"):
        sign_flip_p(np.ones(17))


def test_t_interval_matches_scipy_and_verdicts():
    d = [0.4, -0.2, 1.1, 0.3, 0.7]
    out = paired(d)
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert out["ci"] == pytest.approx([ci.low, ci.high])
    assert out["half_width"] == pytest.approx((ci.high - ci.low) / 2)
    assert out["n"] == 5 and out["mean"] == pytest.approx(np.mean(d)) and out["sd"] == pytest.approx(np.std(d, ddof=1))
    assert out["verdict"] == "inconclusive" and ci.low < 0 < ci.high
    assert paired([1.0, 1.2, 0.9, 1.1, 1.05])["verdict"] == "positive"
    assert paired([-1.0, -1.2, -0.9, -1.1, -1.05])["verdict"] == "negative"
    assert paired([0.5])["verdict"] == "one pair" and paired([])["verdict"] == "no pairs"
    # The detectable effect: (t_.975 + t_.8) sd / sqrt(n) with 4 degrees of freedom.
    want = (stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * np.std(d, ddof=1) / np.sqrt(5)
    assert out["detectable"] == pytest.approx(want)
    assert out["detectable"] > out["half_width"]


def test_t_interval_covers_at_five_pairs():
    """At n = 5 the t interval covers the true mean about 95% of the time (a percentile
    bootstrap, for comparison, covers markedly less): 4,000 simulated designs."""
    rng = np.random.default_rng(1)
    sims = rng.normal(0.0, 1.0, size=(4000, 5))
    covered = np.mean([(lambda c: c[0] <= 0.0 <= c[1])(paired(s)["ci"]) for s in sims])
    assert 0.935 < covered < 0.965
    boot = []
    for s in sims[:1000]:
        means = rng.choice(s, size=(500, 5)).mean(axis=1)
        lo, hi = np.percentile(means, [2.5, 97.5])
        boot.append(lo <= 0.0 <= hi)
    assert np.mean(boot) < covered - 0.05
