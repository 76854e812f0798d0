"""Verdicts over seeds (Welch's t-test, bootstrap intervals) and the probability of
improvement, against scipy's own computations and cases with known answers."""

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from harness import leaderboard
from harness.errors import HarnessError
from harness.statistics import (
    confidence_interval,
    probability_of_improvement,
    verdict,
    welch_p_value,
)


def test_welch_uses_the_published_standard_error_times_sqrt_trials():
    values = np.array([99.0, 99.4, 99.8])
    expected = stats.ttest_ind_from_stats(99.4, 0.4, 3, 99.5, 0.3 * math.sqrt(10), 10,
                                          equal_var=False).pvalue
    assert verdict(values, 99.5, 0.3, "sem", 10, "higher") == ("consistent",
                                                              pytest.approx(expected))
    assert verdict(values - 5, 99.5, 0.3, "sem", 10, "higher")[0] == "worse"
    assert verdict(values + 5, 99.5, 0.3, "std", 10, "higher")[0] == "better"
    assert verdict(values - 5, 99.5, 0.3, "sem", 10, None)[0] == "differs"


def test_few_seeds_get_no_verdict():
    assert verdict(np.array([1.0, 2.0]), 1.5, 0.1, "sem", 10, "higher")[0] == \
        "too few seeds (2 of 3)"


def test_without_spread_the_published_value_is_held_against_the_bootstrap_interval():
    values = np.array([7.0, 8.0, 8.0, 8.0, 6.0])
    low, high = confidence_interval(values)
    assert low < values.mean() < high and low >= 6.0 and high <= 8.0
    assert verdict(values, 7.5, math.nan, "sem", 10, "higher")[0] == "consistent"
    assert verdict(values, 8.5, math.nan, "sem", 10, "higher")[0] == "worse"  # above it
    assert verdict(np.full(3, 8.0), 8.0, math.nan, "sem", None, "higher")[0] == "consistent"


def test_no_spread_on_either_side():
    assert welch_p_value(np.full(3, 25.0), 25.0, 0.0, 10) == 1.0
    assert welch_p_value(np.full(3, 24.0), 25.0, 0.0, 10) == 0.0


def test_probability_of_improvement():
    assert probability_of_improvement([3, 4, 5], [0, 1, 2], "higher")[0] == 1.0
    assert probability_of_improvement([3, 4, 5], [0, 1, 2], "lower")[0] == 0.0
    p, low, high = probability_of_improvement([1, 2, 3, 4], [1, 2, 3, 4], "higher")
    assert p == 0.5 and 0 <= low < 0.5 < high <= 1  # ties count half
    # the Mann-Whitney U statistic over n * m
    x, y = np.array([0.3, 0.9, 0.5, 0.7]), np.array([0.2, 0.6, 0.4])
    u = stats.mannwhitneyu(x, y).statistic
    assert probability_of_improvement(x, y, "higher")[0] == pytest.approx(u / 12)


def seeds_frame() -> pd.DataFrame:
    rows = [("ring", "none", [6, 7, 8], [0.4, 0.5, 0.3]), ("ring", "kmeans_d", [8, 8, 8],
            [0.01, 0.02, 0.001]), ("grid", "none", [17, 18], [0.7, 0.6]),
            ("grid", "kmeans_d", [25, 24], [0.01, 0.02]), ("ring", "random", [7, 8], [0.1, 0.2])]
    return pd.DataFrame([
        {"run_id": f"{d}-{c}-{i}", "seed": i, "status": "finished", "dataset": d, "cond": c,
         "cond.k": {"kmeans_d": 50, "random": 8}.get(c), "modes": float(m), "rkl": r}
        for d, c, modes, rkls in rows for i, (m, r) in enumerate(zip(modes, rkls, strict=True))
    ])


def test_each_group_against_the_baseline_with_its_other_settings():
    table = leaderboard.improvements(seeds_frame(), ["modes", "rkl"],
                                     {"modes": "higher", "rkl": "lower"}, "cond=none")
    got = {(r.dataset, r.cond, r.metric): r.p_improvement for r in table.itertuples()}
    assert got[("ring", "kmeans_d", "rkl")] == 1.0 and got[("grid", "kmeans_d", "modes")] == 1.0
    # ring: 8 against 6, 7, 8 (x3 seeds): 6 wins and 3 ties of 9 pairs
    assert got[("ring", "kmeans_d", "modes")] == pytest.approx((6 + 1.5) / 9)
    assert ("grid", "random", "modes") not in got and len(got) == 6  # grid has no random
    assert set(table["over"]) == {"none"} and set(table["seeds"]) >= {"3 vs 3", "2 vs 2"}


@pytest.mark.parametrize(("baseline", "message"), [
    ("cond", "no run has cond= (valid: kmeans_d, none, random)"),
    ("colour=red", "give COLUMN=VALUE with a grouping column (valid: dataset, cond, cond.k)"),
    ("cond=gan", "no run has cond=gan (valid: kmeans_d, none, random)"),
])
def test_a_baseline_no_group_has_is_refused(baseline, message):
    with pytest.raises(HarnessError, match=re.escape(message)):
        leaderboard.improvements(seeds_frame(), ["modes", "rkl"], {"modes": "higher"}, baseline)
