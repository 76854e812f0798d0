"""Our k-means and Hungarian matching: correctness against known partitions and sklearn."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from harness.clustering import cluster_means, kmeans, lloyd, matching_permutation


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
