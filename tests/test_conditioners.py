"""Conditioning sources on controlled discriminator features."""

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from harness.api import BuildContext, Discriminator, Models, Options
from harness.errors import ConfigError
from harness_plugins.conditioners.kmeans import (
    OnlineKMeans,
    OnlineOptions,
    SelfConditioned,
    SelfConditionedOptions,
)
from harness_plugins.conditioners.mixture import MixtureComponent, MixtureOptions
from harness_plugins.conditioners.simple import GroundTruth, RandomLabels, RandomOptions
from harness_plugins.datasets.toy2d import Grid, GridOptions
from harness_plugins.priors.gmm import GaussianMixtureOptions


class FeatureMap(Discriminator):
    """A stand-in D whose features are a chosen function of x."""

    def __init__(self, transform=lambda x: x) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x):
        return torch.zeros(len(x), 1), self.transform(x)


@pytest.fixture
def grid() -> Grid:
    return Grid(GridOptions(size=5000), seed=0)


def context(dataset, prior="gaussian", prior_options=None) -> BuildContext:
    return BuildContext(dataset, prior, prior_options or Options(), seed=0)


def models(dataset, d) -> Models:
    return Models(None, d, None, dataset, torch.device("cpu"))


def self_conditioned(dataset, **opts) -> SelfConditioned:
    options = SelfConditionedOptions(k=25, subset=2000, n_init=3, recluster_every=10, **opts)
    return SelfConditioned(options, context(dataset))


def test_clusters_on_d_features_recover_grid_modes(grid):
    cond = self_conditioned(grid)
    cond.setup(models(grid, FeatureMap()))
    labels = cond.labels_for_real(torch.arange(len(grid)), torch.empty(len(grid), 2), None)
    assert adjusted_rand_score(grid.y, labels) == 1.0


def test_labels_come_from_the_discriminator_frozen_at_clustering_time(grid):
    cond = self_conditioned(grid)
    d = FeatureMap()
    cond.setup(models(grid, d))
    index = torch.arange(100)
    before = cond.labels_for_real(index, d(grid.x[index])[1], None)
    drifted = torch.randn(100, 2) * 100  # live features moved; labels must not
    assert torch.equal(cond.labels_for_real(index, drifted, None), before)


@pytest.mark.parametrize("init_from_previous", [True, False])
def test_reclustering_keeps_label_identity_when_features_change(grid, init_from_previous):
    cond = self_conditioned(grid, init_from_previous=init_from_previous)
    cond.setup(models(grid, FeatureMap()))
    before = cond.labels.clone()
    # new feature space: same clusters, rotated, scaled and shifted
    rotate = torch.tensor([[0.0, -3.0], [3.0, 0.0]])
    changed = cond.update(10, models(grid, FeatureMap(lambda x: x @ rotate + 7)))
    assert changed == 0.0
    assert torch.equal(cond.labels, before)


def test_without_matching_ids_are_not_preserved(grid):
    cond = self_conditioned(grid, init_from_previous=False, match=False)
    cond.setup(models(grid, FeatureMap()))
    before = cond.labels.clone()
    cond.update(10, models(grid, FeatureMap(lambda x: -x)))
    assert adjusted_rand_score(before, cond.labels) == 1.0  # same partition ...
    assert not torch.equal(cond.labels, before)  # ... under other ids


def test_recluster_only_on_schedule(grid):
    cond = self_conditioned(grid)
    cond.setup(models(grid, FeatureMap()))
    assert cond.update(7, models(grid, FeatureMap())) is None
    assert cond.update(20, models(grid, FeatureMap())) is not None


def test_class_weights_are_proportional_to_cluster_sizes(grid):
    cond = self_conditioned(grid)
    cond.setup(models(grid, FeatureMap()))
    sizes = torch.bincount(cond.subset_labels, minlength=25).double()
    assert torch.allclose(cond.class_weights(), sizes / sizes.sum())
    draws = cond.sample_labels(200_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=25).double() / len(draws)
    assert torch.allclose(freq, sizes / sizes.sum(), atol=0.005)


def test_more_clusters_than_distinct_features_does_not_crash(grid):
    cond = self_conditioned(grid)
    collapsed = FeatureMap(lambda x: x.round().clamp(-1, 1))  # only 9 distinct points
    cond.setup(models(grid, collapsed))
    assert cond.update(10, models(grid, collapsed)) is not None
    assert torch.isfinite(cond.centers).all()
    assert cond.class_weights().sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cls", "name"), [(SelfConditioned, "kmeans_d"), (OnlineKMeans, "online_kmeans")]
)
def test_more_clusters_than_clustered_points_is_refused(grid, cls, name):
    with pytest.raises(ConfigError) as info:
        cls(cls.Options(k=50, subset=20), context(grid))
    assert str(info.value) == (
        f"invalid cond {name!r} option k=50: more clusters than the 20 clustered points "
        "(subset=20, dataset size 5000); valid: k <= 20"
    )
    nine = Grid(GridOptions(size=9), seed=0)
    with pytest.raises(ConfigError, match=r"9 clustered points \(subset=10000, dataset size 9\)"):
        cls(cls.Options(), context(nine))  # default k=50
    assert cls(cls.Options(k=9), context(nine)).num_classes == 9


def test_refill_with_more_empty_clusters_than_points(grid):
    cond = self_conditioned(grid)
    d = FeatureMap()
    cond.setup(models(grid, d))
    cond.subset, cond.subset_labels = cond.subset[:10], cond.subset_labels[:10]  # >= 15 empty
    assert cond.update(10, models(grid, d)) is not None
    assert torch.isfinite(cond.centers).all() and cond.centers.shape == (25, 2)


def test_online_kmeans_moves_centres_towards_batches(grid):
    cond = OnlineKMeans(OnlineOptions(k=25, subset=2000, n_init=2), context(grid))
    cond.setup(models(grid, FeatureMap()))
    shift = torch.tensor([0.5, 0.0])
    before = cond.centers.clone()
    for _ in range(50):
        index = torch.randint(len(grid), (100,))
        cond.labels_for_real(index, grid.x[index] + shift, None)
    moved = (cond.centers - before).mean(0)
    assert moved[0] > 0.3 and abs(moved[1]) < 0.05
    assert cond.class_weights().sum() == pytest.approx(1.0)


def test_online_kmeans_revives_dead_centres(grid):
    cond = OnlineKMeans(OnlineOptions(k=25, subset=2000, n_init=1, decay=0.5), context(grid))
    cond.setup(models(grid, FeatureMap()))
    only_one_mode = grid.x[grid.y == 0][:100]
    for _ in range(30):
        cond.labels_for_real(torch.arange(100), only_one_mode, None)
    assert (cond.class_weights() > 0).all()


def test_random_labels_are_fixed_per_example_and_uniform(grid):
    cond = RandomLabels(RandomOptions(k=10), context(grid))
    index = torch.arange(50)
    first = cond.labels_for_real(index, torch.zeros(50, 2), None)
    assert torch.equal(cond.labels_for_real(index, torch.randn(50, 2), None), first)
    assert torch.allclose(cond.class_weights(), torch.full((10,), 0.1, dtype=torch.float))


def test_ground_truth_uses_dataset_labels(grid):
    cond = GroundTruth(Options(), context(grid))
    assert cond.num_classes == 25
    index = torch.arange(30)
    assert torch.equal(cond.labels_for_real(index, torch.zeros(30, 2), None), grid.y[index])


def test_gmm_conditioner_needs_a_mixture_prior(grid):
    with pytest.raises(ConfigError, match="--cond gmm needs a mixture prior.*gaussian"):
        MixtureComponent(MixtureOptions(), context(grid))
    cond = MixtureComponent(
        MixtureOptions(), context(grid, "gmm", GaussianMixtureOptions(num_components=7))
    )
    assert cond.num_classes == 7 and not cond.conditions_networks
