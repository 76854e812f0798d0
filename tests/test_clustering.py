"""Our k-means and Hungarian matching: correctness against known partitions and sklearn."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from harness import clustering
from harness.clustering import (
    KMeansResult,
    cluster_means,
    first_of_best,
    kmeans,
    kmeans_plus_plus,
    lloyd,
    matching_permutation,
    restart_generators,
    two_nearest,
)


def blobs(k: int = 6, per: int = 200, dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=g) * 10
    labels = torch.arange(k).repeat_interleave(per)
    return centers[labels] + torch.randn(k * per, dim, generator=g), labels


def test_kmeans_recovers_separated_blobs():
    x, truth = blobs()
    result = kmeans(x, 6, n_init=3, seed=0)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    expected = float(((x - result.centers[result.labels]) ** 2).sum())
    assert result.inertia == pytest.approx(expected, rel=1e-5)


def test_kmeans_inertia_matches_sklearn_on_overlapping_data():
    x = torch.randn(3000, 16, generator=torch.Generator().manual_seed(1))
    ours = kmeans(x, 20, n_init=10, seed=0).inertia
    theirs = KMeans(20, n_init=10, random_state=0).fit(x.numpy()).inertia_
    assert ours <= theirs * 1.02


def test_matching_restores_label_identity_after_permutation():
    old = torch.randint(7, (500,), generator=torch.Generator().manual_seed(2))
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    new = perm[old]  # the same partition, with shuffled ids
    mapping = torch.as_tensor(matching_permutation(old, new, 7))
    assert torch.equal(mapping[new], old)


def test_matching_minimises_changed_memberships():
    old = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    new = torch.tensor([1, 1, 0, 0, 0, 0, 2, 2])  # cluster 1 mostly became 0
    mapping = torch.as_tensor(matching_permutation(old, new, 3))
    assert mapping.tolist() == [1, 0, 2]
    assert int((mapping[new] != old).sum()) == 1


def test_initialising_from_old_means_reproduces_a_stable_partition():
    x, _ = blobs(k=5, seed=4)
    first = kmeans(x, 5, n_init=5, seed=0)
    init, counts = cluster_means(x, first.labels, 5)
    again = kmeans(x, 5, init=init)
    assert torch.equal(again.labels, first.labels)
    assert again.iterations == 1


def test_empty_clusters_are_refilled_not_crashed_on():
    x, _ = blobs(k=3, seed=5)
    centers = torch.cat([x[:3], torch.full((2, x.shape[1]), 1e6)])  # two centres nobody picks
    result = lloyd(x, centers)
    assert torch.bincount(result.labels, minlength=5).min() > 0


def test_fewer_distinct_points_than_clusters():
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]).repeat(10, 1)
    result = kmeans(x, 5, n_init=2, seed=0)
    assert result.inertia == pytest.approx(0.0, abs=1e-6)
    assert len(np.unique(result.labels.numpy())) == 3


def plain_lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int = 300, tol: float = 1e-4):
    """Textbook Lloyd (every distance, every iteration), scikit-learn's stopping rules."""
    tol_abs = tol * float(x.var(0).mean())
    previous = None
    for iteration in range(1, max_iter + 1):  # noqa: B007
        labels = torch.cdist(x.double(), centers.double()).argmin(1)
        if previous is not None and torch.equal(labels, previous):
            break
        previous = labels
        new, _ = cluster_means(x, labels, len(centers))
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= tol_abs:
            break
    return torch.cdist(x.double(), centers.double()).argmin(1), centers, iteration


def overlapping(n: int = 2000, dim: int = 8, seed: int = 6) -> torch.Tensor:
    x = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
    return x - x.mean(0)


def test_lloyd_skipping_points_by_bounds_gives_plain_lloyds_iterates():
    x = overlapping()
    start = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:12]]
    labels, centers, iterations = plain_lloyd(x, start)
    result = lloyd(x, start)
    assert iterations > 10  # long enough for the bounds to skip points
    assert result.iterations == iterations
    assert torch.equal(result.labels, labels)
    assert torch.allclose(result.centers, centers, atol=1e-5)
    assert result.inertia == pytest.approx(float(((x - centers[labels]) ** 2).sum()), rel=1e-5)


def test_two_nearest_matches_sorting_all_distances():
    x = overlapping(500, 6)
    centers = torch.randn(3, 7, 6, generator=torch.Generator().manual_seed(1))
    labels, first, second = two_nearest(x, centers)
    for r in range(3):
        ordered = torch.cdist(x, centers[r]).square().sort(1)
        assert torch.equal(labels[r], ordered.indices[:, 0])
        assert torch.allclose(first[r], ordered.values[:, 0], atol=1e-4)
        assert torch.allclose(second[r], ordered.values[:, 1], atol=1e-4)


def individual_restarts(x: torch.Tensor, k: int, n_init: int, seed: int):
    """Each restart of ``kmeans`` run on its own: k-means++ from its generator, then Lloyd."""
    centred = x - x.mean(0)
    return [
        lloyd(centred, kmeans_plus_plus(centred, k, [generator])[0])
        for generator in restart_generators(seed, n_init)
    ]


def test_batched_restarts_give_the_best_of_the_restarts_run_one_by_one():
    x = overlapping(1000, 6)
    runs = individual_restarts(x, 10, 4, seed=3)
    best = min(runs, key=lambda run: run.inertia)
    result = kmeans(x, 10, n_init=4, seed=3)
    assert len({run.iterations for run in runs}) > 1  # restarts converge separately
    assert result.inertia == pytest.approx(best.inertia, rel=1e-6)
    assert result.inertia <= min(run.inertia for run in runs) * (1 + 1e-6)
    assert torch.equal(result.labels, best.labels)
    assert result.iterations == best.iterations


def test_restart_i_does_not_depend_on_how_many_restarts_run():
    x = overlapping(800, 5) + 3.0
    centred = x - x.mean(0)
    generators = restart_generators(7, 5)
    few = kmeans_plus_plus(centred, 9, restart_generators(7, 2))
    many = kmeans_plus_plus(centred, 9, generators)
    assert torch.equal(few, many[:2])
    assert not torch.equal(many[0], many[1])


def test_kmeans_is_deterministic_for_a_seed():
    x = overlapping(600, 6)
    a, b = kmeans(x, 8, n_init=3, seed=11), kmeans(x, 8, n_init=3, seed=11)
    assert torch.equal(a.centers, b.centers) and torch.equal(a.labels, b.labels)
    assert a.inertia == b.inertia and a.iterations == b.iterations
    other = kmeans(x, 8, n_init=3, seed=12)
    assert not torch.equal(other.centers, a.centers)


def test_max_iter_caps_every_restart():
    x = overlapping()
    result = kmeans(x, 15, n_init=3, seed=0, max_iter=2)
    assert result.iterations == 2
    expected = float(((x - result.centers[result.labels]) ** 2).sum())
    assert result.inertia == pytest.approx(expected, rel=1e-5)


def test_chunked_distances_give_the_unchunked_result(monkeypatch):
    x = overlapping(1500, 7)
    whole = kmeans(x, 12, n_init=3, seed=5)
    monkeypatch.setattr(clustering, "CHUNK_BYTES", 4096)  # 28-row chunks, one restart per block
    assert clustering._row_chunk(len(x), 3 * 12, 4) < 50
    chunked = kmeans(x, 12, n_init=3, seed=5)
    assert torch.equal(chunked.labels, whole.labels)
    assert torch.allclose(chunked.centers, whole.centers, atol=1e-6)
    assert chunked.inertia == pytest.approx(whole.inertia, rel=1e-6)


def test_one_cluster_is_the_mean():
    x = overlapping(100, 3) + 2.0
    result = kmeans(x, 1, n_init=2, seed=0)
    assert torch.allclose(result.centers[0], x.mean(0), atol=1e-5)
    assert result.labels.eq(0).all()


def test_of_restarts_finding_one_partition_the_first_wins_whatever_the_rounding():
    """Such restarts tie in inertia up to float rounding; which is lowest may differ on
    another CPU, the labels must not."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centers = torch.eye(3)

    def found(ids: list[int], inertia: float) -> KMeansResult:
        return KMeansResult(centers[ids], torch.tensor(ids)[labels], inertia, 1)

    first, rounded_lower, worse = found([2, 0, 1], 5.0), found([0, 1, 2], 5.0 - 1e-6), \
        KMeansResult(centers, torch.tensor([0, 1, 1, 1, 2, 2]), 4.0, 1)
    assert first_of_best([first, rounded_lower]) is first
    assert first_of_best([rounded_lower, first]) is rounded_lower
    assert first_of_best([first, worse, rounded_lower]) is worse
