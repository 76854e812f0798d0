"""Statistics over seeds: a measured mean against a published one, its confidence interval,
and the probability that one composition improves on another.

Built on scipy (``ttest_ind_from_stats``, ``bootstrap``) rather than the
rliable package: rliable computes the same probability of improvement (Agarwal et al. 2021,
"Deep RL at the Edge of the Statistical Precipice", Sec. 4.3) through scipy-like bootstraps,
but pins old releases of ``arch`` and pulls seaborn, for three functions that are a few lines
each on scipy, which the harness already needs.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
from scipy import stats

ALPHA = 0.05
"""Two-sided significance level of every verdict (95 % confidence)."""

MIN_SEEDS = 3
"""Fewer seeds than this get no verdict: their spread says too little."""

RESAMPLES = 9999
"""Bootstrap resamples (fixed seed 0, so an interval is the same at every call)."""


def confidence_interval(values: np.ndarray) -> tuple[float, float]:
    """95 % bootstrap confidence interval (BCa; percentile where BCa is undefined) of the
    mean of ``values`` (n,) finite floats, n >= 2; a point when all values are equal."""
    values = np.asarray(values, dtype=float)
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa on a few seeds: degenerate, falls back
            interval = stats.bootstrap((values,), np.mean, confidence_level=1 - ALPHA,
                                       n_resamples=RESAMPLES, method=method,
                                       random_state=0).confidence_interval
        if math.isfinite(interval.low) and math.isfinite(interval.high):
            break
    return float(interval.low), float(interval.high)


def welch_p_value(values: np.ndarray, mean: float, std: float, trials: int) -> float:
    """Two-sided p-value of Welch's t-test between ``values`` (n,) and a published sample
    given by its ``mean``, standard deviation ``std`` and ``trials`` (Welch 1947; scipy's
    ``ttest_ind_from_stats`` with unequal variances). When neither side varies, 1.0 for equal
    means and 0.0 otherwise."""
    values = np.asarray(values, dtype=float)
    measured_std = float(values.std(ddof=1))
    if measured_std == 0 and std == 0:
        return 1.0 if float(values.mean()) == mean else 0.0
    return float(stats.ttest_ind_from_stats(float(values.mean()), measured_std, len(values),
                                            mean, std, trials, equal_var=False).pvalue)


def published_std(spread: float, statistic: Literal["sem", "std"], trials: int) -> float:
    """A published spread as a standard deviation: a standard error times sqrt(trials)."""
    return spread * math.sqrt(trials) if statistic == "sem" else spread


def verdict(values: np.ndarray, mean: float, spread: float, statistic: Literal["sem", "std"],
            trials: int | None, better: str | None) -> tuple[str, float]:
    """Measured ``values`` (one per seed) against a published ``mean`` ± ``spread`` (its
    ``statistic`` over ``trials``; spread NaN when the paper gives a single number):
    ``("consistent" | "better" | "worse" | "differs", p)``, or ``("too few seeds (n of 3)",
    nan)``.

    With a spread and a trial count: Welch's t-test at ``ALPHA``; otherwise the published
    mean against the 95 % bootstrap interval of the measured mean (p is NaN). ``better``
    (``"higher"`` / ``"lower"`` / None) names the direction; ``differs`` when it has none.
    """
    values = np.asarray(values, dtype=float)
    if len(values) < MIN_SEEDS:
        return f"too few seeds ({len(values)} of {MIN_SEEDS})", math.nan
    if math.isnan(spread) or not trials:
        low, high = confidence_interval(values)
        p, agrees = math.nan, low <= mean <= high
    else:
        p = welch_p_value(values, mean, published_std(spread, statistic, trials), trials)
        agrees = p >= ALPHA
    if agrees:
        return "consistent", p
    if better is None:
        return "differs", p
    return ("better" if (float(values.mean()) > mean) == (better == "higher") else "worse"), p


def probability_of_improvement(x: np.ndarray, y: np.ndarray, better: str
                               ) -> tuple[float, float, float]:
    """P(X improves on Y): the probability that a seed of X beats a seed of Y, ties counting
    half (the Mann-Whitney U statistic over len(x) * len(y); Agarwal et al. 2021, Sec. 4.3),
    with its 95 % bootstrap interval (percentile, each side resampled on its own). ``better``
    ``"higher"`` or ``"lower"``. Returns (probability, low, high), each in [0, 1]."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if better == "lower":
        x, y = -x, -y

    def probability(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        wins = (a[..., :, None] > b[..., None, :]).mean((-2, -1))
        ties = (a[..., :, None] == b[..., None, :]).mean((-2, -1))
        return wins + 0.5 * ties

    point = float(probability(x, y))
    if np.ptp(np.concatenate([x, y])) == 0:
        return point, point, point
    interval = stats.bootstrap((x, y), probability, confidence_level=1 - ALPHA,
                               n_resamples=RESAMPLES, method="percentile", vectorized=True,
                               random_state=0).confidence_interval
    return point, float(interval.low), float(interval.high)
