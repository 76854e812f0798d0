"""Conditioning sources on controlled discriminator features."""

import types

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from harness.api import BuildContext, Discriminator, Models, Options
from harness.errors import ConfigError
from harness_plugins.backbones.biggan import BigGAN, BigGANOptions
from harness_plugins.backbones.dcgan import DCGAN, DCGANOptions
from harness_plugins.conditioners.kmeans import (
    OnlineKMeans,
    OnlineOptions,
    SelfConditioned,
    SelfConditionedOptions,
)
from harness_plugins.conditioners.mixture import MixtureComponent, MixtureOptions
from harness_plugins.conditioners.simple import GroundTruth, RandomLabels, RandomOptions
from harness_plugins.datasets.images import Digits, DigitsOptions
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


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(DigitsOptions(heldout_fraction=0.6), seed=0)  # 719 images


IMAGE_BACKBONES = {  # D with BatchNorm statistics / with spectral norm's power-iteration vectors
    "dcgan": lambda: DCGAN(DCGANOptions(width=4)),
    "biggan": lambda: BigGAN(BigGANOptions(width=4)),
}


def image_run(dataset, backbone: str, **opts) -> tuple[SelfConditioned, Models]:
    """A kmeans_d conditioner bound to, and set up on, a fresh image D (as a run does)."""
    torch.manual_seed(0)
    _, d = IMAGE_BACKBONES[backbone]().build(dataset.spec, 8, 16)
    live = models(dataset, d)
    options = SelfConditionedOptions(k=8, subset=200, n_init=1, recluster_every=10, **opts)
    cond = SelfConditioned(options, context(dataset))
    cond.bind(live)
    cond.setup(live)
    return cond, live


def whole_dataset_labels(cond: SelfConditioned, live: Models) -> torch.Tensor:
    """Every example labelled at once with the live D, as kmeans_d did before labelling
    lazily: D_f in chunks of 10k, nearest centre."""
    everything = torch.arange(len(live.dataset))
    return torch.cat([cond.nearest(live.features(c)).cpu() for c in everything.split(10_000)])


def train_a_little(d: Discriminator, dataset) -> None:
    """Change D's weights and buffers (BatchNorm statistics, spectral norm's vectors)."""
    d.train()
    with torch.no_grad():
        for parameter in d.parameters():
            parameter.mul_(-1.5)
        for _ in range(3):
            d(dataset.batch(torch.randint(len(dataset), (16,))))


@pytest.mark.parametrize("backbone", IMAGE_BACKBONES)
def test_lazy_labels_equal_the_whole_dataset_labelled_at_clustering_time(digits, backbone):
    cond, live = image_run(digits, backbone)
    expected = whole_dataset_labels(cond, live)
    assert cond.unlabelled == len(digits) - 200
    assert torch.equal(cond.cache[cond.subset], expected[cond.subset])
    train_a_little(live.discriminator, digits)  # labels stay those of D at clustering time
    assert not torch.equal(whole_dataset_labels(cond, live), expected)
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    batches = [order[:1], order[1:65], torch.cat([order[:40], order[65:66]]),  # one new
               order[66:70].repeat(3), order[70:]]
    for index in batches:
        labels = cond.labels_for_real(index, torch.empty(len(index), 1), None)
        assert torch.equal(labels, expected[index])
    assert cond.unlabelled == 0 and cond.frozen is None  # the copy is dropped once done
    assert torch.equal(cond.labels, expected)
    assert torch.equal(cond.partition(live, order[:100]), expected[order[:100]])


def test_reclustering_freezes_d_again_and_forgets_the_labels(digits):
    cond, live = image_run(digits, "biggan")
    cond.labels_for_real(torch.arange(200), torch.empty(200, 1), None)
    train_a_little(live.discriminator, digits)
    assert cond.update(10, live) is not None
    assert cond.unlabelled == len(digits) - 200
    assert torch.equal(cond.labels, whole_dataset_labels(cond, live))


def test_a_restored_state_labels_the_rest_with_the_frozen_d(digits):
    cond, live = image_run(digits, "biggan")
    expected = whole_dataset_labels(cond, live)
    cond.labels_for_real(torch.arange(300), torch.empty(300, 1), None)
    state = cond.state_dict()
    assert state["frozen"] is not None and (state["labels"] < 0).any()
    train_a_little(live.discriminator, digits)  # the resumed run's D has moved on
    resumed = SelfConditioned(cond.options, context(digits))
    resumed.bind(live)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.labels, expected)
    done = resumed.state_dict()  # every label known: the copy of D is no longer kept
    assert done["frozen"] is None
    again = SelfConditioned(cond.options, context(digits))
    again.load_state_dict(done)  # neither D nor binding needed
    assert torch.equal(again.labels, expected)
    unbound = SelfConditioned(cond.options, context(digits))
    with pytest.raises(ValueError, match="unlabelled and not bound to the run"):
        unbound.load_state_dict(state)
    with pytest.raises(ValueError, match="unlabelled and no frozen D in the state"):
        resumed.load_state_dict({**state, "frozen": None})


def test_labelling_time_goes_to_the_reclustering_timings(digits):
    cond, _ = image_run(digits, "dcgan")
    cond.labels_for_real(torch.arange(400), torch.empty(400, 1), None)
    step = types.SimpleNamespace(run=types.SimpleNamespace(timings={"recluster_s": 1.0}))
    cond.train_own(step)
    timings = step.run.timings
    assert timings["label_s"] > 0 and timings["recluster_s"] == 1.0 + timings["label_s"]
    cond.train_own(step)  # counted once
    assert timings["recluster_s"] == 1.0 + timings["label_s"]


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


@pytest.mark.parametrize(("every", "noted"), [(5000, True), (1500, True), (300, False),
                                              (0, False)])
def test_a_schedule_that_never_fires_is_noted(pm, capsys, every, noted):
    from harness.build import build_run
    from harness.config import make_config

    build_run(make_config({"cond": "kmeans_d", "steps": 1500, "dataset_options": {"size": 500},
                           "cond_options": {"recluster_every": every, "subset": 200}}), pm)
    note = "keeps the partition of step 0 (D untrained) throughout"
    assert (note in capsys.readouterr().err) is noted


def test_fakes_take_the_real_batch_labels_as_the_official_code_does(grid):
    """Liu et al.'s code scores G(z, y) with the y of the real batch beside it; ``prior``
    draws them from P(c); soft conditions (slcGAN's) are never paired."""
    rng = torch.Generator().manual_seed(0)
    real = torch.tensor([3, 3, 7, 1])
    paired = self_conditioned(grid)
    paired.setup(models(grid, FeatureMap()))
    assert torch.equal(paired.fake_labels(real, rng), real)
    drawn = self_conditioned(grid, fake_labels="prior")
    drawn.setup(models(grid, FeatureMap()))
    expected = drawn.sample_labels(4, torch.Generator().manual_seed(0))
    assert torch.equal(drawn.fake_labels(real, rng), expected)
    soft = torch.full((4, 25), 1 / 25)
    assert paired.fake_labels(soft, rng).shape == (4,)


def test_a_paired_runs_fakes_share_its_real_labels():
    from harness.build import build_run
    from harness.config import RunConfig
    from harness.manager import get_plugin_manager
    from harness.trainer import Trainer

    run = build_run(RunConfig(cond="random", cond_options={"k": 5}, steps=1,
                              dataset_options={"size": 500}), get_plugin_manager())
    trainer = Trainer(run)
    seen = []
    original = trainer.training_step.fake_batch
    trainer.training_step.fake_batch = lambda n, generator=None, labels=None: (
        seen.append(labels), original(n, generator, labels))[1]
    trainer.step()
    real = trainer.training_step.real_condition
    assert len(seen) == 2 and all(torch.equal(labels, real) for labels in seen)
