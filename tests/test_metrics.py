"""The 2-D mode metrics and partition scores on hand-made inputs with known answers."""

import math

import numpy as np
import pytest
import torch

from harness.errors import MetricError
from harness_plugins.datasets.toy2d import Grid, GridOptions, Ring, RingOptions
from harness_plugins.metrics.clusters import partition_scores
from harness_plugins.metrics.modes import mode_statistics

CENTERS = Ring(RingOptions(size=10), seed=0).spec.modes.centers
STD = 0.01


def at_modes(modes: list[int], per_mode: int = 100, offset: float = 0.0) -> torch.Tensor:
    index = torch.tensor(modes).repeat_interleave(per_mode)
    return CENTERS[index] + offset


def test_all_modes_exactly_covered():
    stats = mode_statistics(at_modes(list(range(8))), CENTERS, STD)
    assert stats == {"modes": 8.0, "hq_pct": 100.0, "rkl": pytest.approx(0.0, abs=1e-12)}


def test_half_the_modes():
    stats = mode_statistics(at_modes([0, 2, 4, 6]), CENTERS, STD)
    assert stats["modes"] == 4
    assert stats["hq_pct"] == 100.0
    assert stats["rkl"] == pytest.approx(math.log(2))


def test_one_mode_only():
    stats = mode_statistics(at_modes([3]), CENTERS, STD)
    assert stats["modes"] == 1
    assert stats["rkl"] == pytest.approx(math.log(8))


def test_off_mode_points_are_low_quality_but_still_assigned():
    # 4 std away on one coordinate: not high quality, still nearest to its mode.
    off = at_modes(list(range(8)), offset=torch.tensor([4 * STD, 0.0]))
    stats = mode_statistics(off, CENTERS, STD)
    assert stats["modes"] == 0 and stats["hq_pct"] == 0.0
    assert stats["rkl"] == pytest.approx(0.0, abs=1e-12)


def test_quality_threshold_is_per_coordinate_three_std():
    inside = at_modes([0], per_mode=1, offset=torch.tensor([2.9 * STD, -2.9 * STD]))
    outside = at_modes([0], per_mode=1, offset=torch.tensor([3.1 * STD, 0.0]))
    stats = mode_statistics(torch.cat([inside, outside]), CENTERS, STD)
    assert stats["hq_pct"] == 50.0 and stats["modes"] == 1


def test_mixed_quality_counts_mode_once_hq():
    good = at_modes([0, 1], per_mode=3)
    bad = at_modes([2], per_mode=6, offset=torch.tensor([0.5, 0.0]))
    stats = mode_statistics(torch.cat([good, bad]), CENTERS, STD)
    assert stats["modes"] == 2
    assert stats["hq_pct"] == pytest.approx(50.0)


def test_datasets_match_the_published_protocol():
    ring = Ring(RingOptions(size=50_000), seed=1)
    assert torch.allclose(ring.x.std(0), torch.full((2,), 2 / math.sqrt(2)), atol=0.05)
    assert torch.allclose(ring.spec.modes.centers.norm(dim=1), torch.full((8,), 2.0))
    grid = Grid(GridOptions(), seed=0)
    assert grid.spec.modes.std == 0.05 and len(grid) == 100_000
    assert sorted(set(grid.spec.modes.centers[:, 0].tolist())) == [-4, -2, 0, 2, 4]
    # every training point lies within 3 std of its own mode (99.7% per coordinate)
    stats = mode_statistics(grid.x[:20_000], grid.spec.modes.centers, 0.05)
    assert stats["modes"] == 25 and stats["hq_pct"] > 99.0 and stats["rkl"] < 0.01


def test_partition_scores_perfect_and_permuted():
    true = np.repeat(np.arange(4), 25)
    assert partition_scores(true, true) == pytest.approx(
        {"nmi": 1.0, "ari": 1.0, "purity": 1.0, "acc": 1.0}
    )
    permuted = (true + 1) % 4
    assert partition_scores(true, permuted)["acc"] == 1.0


def test_purity_is_measured_per_cluster_not_per_class():
    true = np.repeat(np.arange(4), 25)
    one_cluster = np.zeros(100, dtype=int)
    singletons = np.arange(100)
    assert partition_scores(true, one_cluster)["purity"] == pytest.approx(0.25)
    assert partition_scores(true, singletons)["purity"] == pytest.approx(1.0)
    # one-to-one Hungarian accuracy: only 4 singletons can be matched
    assert partition_scores(true, singletons)["acc"] == pytest.approx(0.04)


def test_non_finite_samples_are_low_quality_and_of_no_mode():
    good = at_modes([1, 3])  # 200 samples on modes 1 and 3
    bad = torch.tensor([[float("nan"), 0.0], [float("inf"), 1.0], [0.0, -float("inf")]])
    stats = mode_statistics(torch.cat([bad.repeat(100, 1)[:200], good]), CENTERS, STD)
    assert stats["modes"] == 2
    assert stats["hq_pct"] == 50.0  # all 400 samples in the denominator
    assert stats["rkl"] == pytest.approx(math.log(4))  # two of 8 modes, none given to mode 0
    with pytest.raises(MetricError, match="^modes_2d: all 3 generated samples are non-finite$"):
        mode_statistics(bad, CENTERS, STD)
