"""k-means in torch (k-means++ seeding, batched Lloyd) and Hungarian label matching.

Vectorised so it runs on the device that holds the features; scikit-learn is the
reference it is benchmarked against (benchmarks/bench_kmeans.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass
class KMeansResult:
    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float
    iterations: int


def squared_distances(
    x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, k) squared Euclidean distances, clamped at zero; ``x_sq`` caches ||x||^2 (n, 1)."""
    if x_sq is None:
        x_sq = (x * x).sum(1, keepdim=True)
    return torch.addmm(x_sq + (centers * centers).sum(1), x, centers.T, alpha=-2).clamp_min_(0)


def kmeans_plus_plus(
    x: torch.Tensor, k: int, generator: torch.Generator, x_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding (2 + log k local trials per centre, as scikit-learn)."""
    n = len(x)
    trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(1, keepdim=True) if x_sq is None else x_sq
    first = torch.randint(n, (1,), generator=generator, device="cpu").item()
    centers = [x[first]]
    closest = squared_distances(x, x[first : first + 1], x_sq).squeeze(1)
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: pick any
            pick = torch.randint(n, (trials,), generator=generator)
        else:
            probs = (closest / total).cpu().double()
            pick = torch.multinomial(probs, trials, replacement=True, generator=generator)
        candidates = x[pick.to(x.device)]
        new_closest = torch.minimum(closest, squared_distances(x, candidates, x_sq).T)
        best = int(new_closest.sum(1).argmin())
        centers.append(candidates[best])
        closest = new_closest[best]
    return torch.stack(centers)


def lloyd(
    x: torch.Tensor,
    centers: torch.Tensor,
    max_iter: int = 300,
    tol: float = 1e-4,
    x_sq: torch.Tensor | None = None,
) -> KMeansResult:
    """Lloyd iterations from ``centers``; an empty cluster takes the worst-fit point.

    Stops, as scikit-learn does, when no label changes or the total squared centre shift
    falls below ``tol`` times the mean per-feature variance. Pass centred data for float32
    precision (``kmeans`` does).
    """
    centers = centers.clone()
    k = len(centers)
    tol_abs = tol * float(x.var(0).mean()) if len(x) > 1 else 0.0
    x_sq = (x * x).sum(1, keepdim=True) if x_sq is None else x_sq
    previous = None
    for iteration in range(1, max_iter + 1):  # noqa: B007 - reported after the loop
        closest, labels = squared_distances(x, centers, x_sq).min(1)
        if previous is not None and torch.equal(labels, previous):
            break
        previous = labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        new_centers = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = (counts == 0).nonzero().squeeze(1)
        if len(empty):
            far = closest.topk(min(len(empty), len(x))).indices
            new_centers[empty[: len(far)]] = x[far]
        shift = ((new_centers - centers) ** 2).sum()
        centers = new_centers
        if shift <= tol_abs:
            break
    closest, labels = squared_distances(x, centers, x_sq).min(1)
    return KMeansResult(centers, labels, float(closest.sum()), iteration)


def kmeans(
    x: torch.Tensor,
    k: int,
    n_init: int = 10,
    seed: int = 0,
    init: torch.Tensor | None = None,
    max_iter: int = 300,
) -> KMeansResult:
    """Best of ``n_init`` k-means++ runs, or one run from ``init`` centres when given.

    Works on centred data, as scikit-learn does, so float32 distances keep their precision.
    """
    offset = x.mean(0)
    x = x - offset
    x_sq = (x * x).sum(1, keepdim=True)
    if init is not None:
        best = lloyd(x, init - offset, max_iter, x_sq=x_sq)
    else:
        generator = torch.Generator().manual_seed(seed)
        runs = (
            lloyd(x, kmeans_plus_plus(x, k, generator, x_sq), max_iter, x_sq=x_sq)
            for _ in range(n_init)
        )
        best = min(runs, key=lambda result: result.inertia)
    best.centers += offset
    return best


def cluster_means(
    x: torch.Tensor, labels: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster means of ``x`` (rows of empty clusters are zero) and counts."""
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, labels, x)
    return sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype), counts


def matching_permutation(old: torch.Tensor, new: torch.Tensor, k: int) -> np.ndarray:
    """Permutation ``perm`` with ``perm[new_id] = old_id`` minimising changed memberships.

    Liu et al. Eq. 4: the cost of mapping new cluster c to old c' is |old_c' minus new_c|;
    solved with scipy's Hungarian ``linear_sum_assignment``.
    """
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (new.cpu().numpy(), old.cpu().numpy()), 1)
    old_sizes = overlap.sum(0)
    cost = old_sizes[None, :] - overlap
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(k, dtype=np.int64)
    perm[rows] = cols
    return perm
