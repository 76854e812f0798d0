"""online_kmeans (Liu et al. 2020's online variant): the partition keeps tracking D's drifting
features instead of collapsing into one cluster, and it resumes exactly."""

import json

import pytest
import torch
from pydantic import ValidationError
from sklearn.metrics import normalized_mutual_info_score

from harness.api import BuildContext, Discriminator, Models, Options
from harness_plugins.conditioners.kmeans import OnlineKMeans, OnlineOptions
from harness_plugins.datasets.toy2d import Grid, GridOptions
from tests.conftest import FAST, assert_resume_is_exact


class DriftingD(Discriminator):
    """A stand-in D whose features are ``drift(t, x)``; ``t`` is set by the test."""

    def __init__(self, drift) -> None:
        super().__init__()
        self.drift, self.t = drift, 0

    def forward(self, x):
        return torch.zeros(len(x), 1), self.drift(self.t, x)


def translate(t, x):  # the whole feature cloud moves 0.02 per step (grid spacing: 2)
    return x + torch.tensor([0.02, 0.012]) * t


def grow_and_turn(t, x):  # features grow and rotate, as D's weights do
    a = torch.tensor(0.004 * t)
    rotation = torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
    return (1 + 0.01 * t) * x @ rotation.T


@pytest.fixture(scope="module")
def grid() -> Grid:
    return Grid(GridOptions(size=5000), seed=0)


def online(grid, drift, steps, **options):
    """Set up on D at t=0, then ``steps`` real batches of 100 with D at t = 1, 2, ...;
    returns the conditioner and the final labels of every grid point."""
    cond = OnlineKMeans(OnlineOptions(k=25, subset=2000, n_init=2, **options),
                        BuildContext(grid, "gaussian", Options(), seed=0))
    d = DriftingD(drift)
    models = Models(None, d, None, grid, torch.device("cpu"))
    cond.setup(models)
    generator = torch.Generator().manual_seed(1)
    for t in range(1, steps + 1):
        d.t = t
        index = torch.randint(len(grid), (100,), generator=generator)
        cond.labels_for_real(index, d(grid.x[index])[1], grid.x[index])
    return cond, cond.partition(models, torch.arange(len(grid)))


@pytest.mark.parametrize("drift", [translate, grow_and_turn])
def test_partition_follows_drifting_features(grid, drift):
    cond, labels = online(grid, drift, 300)  # defaults: step=constant
    assert len(labels.unique()) >= 22
    assert normalized_mutual_info_score(grid.y, labels) > 0.95
    assert cond.class_weights().max() < 0.1  # P(c) follows the live partition


def test_count_step_freezes_and_collapses_under_the_same_drift(grid):
    """The official code's 1/count rule (kept as step=count): what the default fixes."""
    _, labels = online(grid, translate, 600, step="count")
    assert len(labels.unique()) <= 3
    assert normalized_mutual_info_score(grid.y, labels) < 0.4
    _, labels = online(grid, translate, 600)
    assert normalized_mutual_info_score(grid.y, labels) > 0.95


def test_count_step_is_the_running_mean_of_assigned_features(grid):
    cond = OnlineKMeans(OnlineOptions(k=25, subset=2000, n_init=2, step="count"),
                        BuildContext(grid, "gaussian", Options(), seed=0))
    models = Models(None, DriftingD(lambda t, x: x), None, grid, torch.device("cpu"))
    cond.setup(models)
    start, sizes = cond.centers.double().clone(), cond.sizes.clone()
    sums, counts = torch.zeros(25, 2, dtype=torch.double), torch.zeros(25, dtype=torch.double)
    for _ in range(20):
        index = torch.randint(len(grid), (100,))
        labels = cond.labels_for_real(index, grid.x[index], None)
        sums.index_add_(0, labels, grid.x[index].double())
        counts += torch.bincount(labels, minlength=25)
    # counts from 0, as the official code: a centre is the mean of the points it was given
    seen = counts > 0
    assert seen.sum() >= 20
    assert torch.allclose(cond.centers.double()[seen], sums[seen] / counts[seen, None], atol=1e-5)
    assert torch.equal(cond.centers.double()[~seen], start[~seen])
    assert torch.equal(cond.counts, counts) and torch.equal(cond.sizes, sizes + counts)


def test_revive_reseeds_the_centres_a_jump_left_dead(grid):
    """A jump of D's features puts every point nearest one centre; with revive > 0 the others
    die (their counts fade) and are re-seeded where the points are. Off by default."""
    def jump(t, x):
        return x + (torch.tensor([40.0, 0.0]) if t else 0)

    cond, labels = online(grid, jump, 400, revive=0.01)
    assert len(labels.unique()) >= 20
    assert normalized_mutual_info_score(grid.y, labels) > 0.9
    assert (cond.class_weights() > 0.01).sum() >= 20
    cond, frozen = online(grid, jump, 400)
    assert len(frozen.unique()) <= 3
    assert cond.class_weights().max() > 0.9  # the dead centres fade out of P(c)


def test_options_are_checked():
    for bad in ({"lr": 0.0}, {"lr": 1.0}, {"step": "macqueen"}, {"revive": 1.0}):
        with pytest.raises(ValidationError):
            OnlineOptions(**bad)


RUN = ["--cond", "online_kmeans", "--cond-opt", "k=10", "--cond-opt", "subset=500",
       "--cond-opt", "n_init=1", "--threads", "1"]


def test_state_dict_round_trip_continues_identically(grid):
    cond, _ = online(grid, translate, 20)
    state = {key: value.clone() for key, value in cond.state_dict().items()}
    copy = OnlineKMeans(cond.options, cond.context)
    copy.load_state_dict(state)
    x = translate(21, grid.x[:100])
    assert torch.equal(cond.labels_for_real(None, x, None), copy.labels_for_real(None, x, None))
    for key, value in cond.state_dict().items():
        assert torch.equal(value, copy.state_dict()[key]), key


def test_interrupt_then_resume_continues_exactly(cli, pm, tmp_path):
    args = ["run", *RUN, *FAST, "--checkpoint-every", "10"]
    assert_resume_is_exact(cli, pm, tmp_path, args, stop_at=15)


def test_training_on_ring_keeps_several_clusters(cli, tmp_path):
    """Real runs whose D (lr 3e-4) moves its features fast: the partition of the real ring
    must still split its modes. The 1/count rule (step=count) ends these runs with every
    point in one cluster (NMI 0 for seeds 0-3); the default keeps NMI near 1 for most seeds
    (one unlucky first clustering, seed 0 with the batched k-means, ends at 0.44), so three
    seeds, trained together, must have a median NMI above 0.5."""
    result = cli("run", *RUN, "--steps", "400", "--lr-d", "3e-4", "--eval-samples", "2000",
                 "--no-progress", "--dataset-opt", "size=2000", "--seeds", "0-2",
                 "--vectorise", "yes", "--out", tmp_path)
    assert result.code == 0, result.err
    nmi = sorted(json.loads((d / "metrics.json").read_text())["cluster_nmi"]
                 for d in tmp_path.iterdir() if d.is_dir())
    assert len(nmi) == 3 and nmi[1] > 0.5, nmi


def test_the_burn_in_refits_once_in_the_live_features(grid):
    """The official code's burn-in: after step 1 one k-means of the subset in the live D's
    features, started from the first partition's means; never again, and not when off."""
    def build(**options):
        cond = OnlineKMeans(OnlineOptions(k=25, subset=2000, n_init=2, **options),
                            BuildContext(grid, "gaussian", Options(), seed=0))
        cond.setup(models)
        return cond

    d = DriftingD(translate)
    models = Models(None, d, None, grid, torch.device("cpu"))
    cond, off = build(), build(burn_in=False)
    before, d.t = cond.centers.clone(), 50  # every feature moved by (1.0, 0.6)
    assert cond.update(1, models) == 0.0  # the same partition, in the new features
    assert torch.allclose(cond.centers, before + torch.tensor([1.0, 0.6]), atol=1e-4)
    assert cond.update(2, models) is None and off.update(1, models) is None
