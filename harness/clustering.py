"""k-means in torch (batched k-means++ seeding, bounded Lloyd) and Hungarian label matching.

``kmeans`` runs its ``n_init`` restarts as one batched computation where that pays: the
k-means++ seeding (k sequential steps, each scoring every restart's candidates in one matrix
product, so the data are read once per step for all restarts) and the first assignment
(one (n, n_init * k) product). Each restart's Lloyd iterations then skip the points that
provably keep their centre (Hamerly's bounds), so a restart stops costing anything once it
has converged and late iterations touch only a few points. Device-agnostic: everything
runs on the device that holds the features. scikit-learn is the reference it is
benchmarked against (benchmarks/bench_kmeans.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

CHUNK_BYTES = 1 << 24
"""Largest temporary block (bytes) of the row-chunked computations: distance blocks
(rows x restarts x centres) and gathered rows. Keeps memory bounded whatever n, n_init and k
are, and the blocks cache-sized."""


@dataclass
class KMeansResult:
    """One clustering: ``centers`` (k, d), ``labels`` (n,) int64, ``inertia`` (sum of squared
    distances to the nearest centre) and the Lloyd ``iterations`` of the returned run."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float
    iterations: int


class Scratch:
    """Named buffers reused across the calls of a loop.

    A fresh multi-megabyte CPU tensor is page-faulted in at every allocation, which costs
    as much as the arithmetic of a pruned Lloyd iteration; the loops here ask for their
    temporaries by name and get a view of a buffer that only grows.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], like: torch.Tensor,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """An uninitialised (``shape``) tensor on ``like``'s device, of ``dtype`` or its."""
        dtype = like.dtype if dtype is None else dtype
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if (buffer is None or buffer.numel() < size or buffer.dtype != dtype
                or buffer.device != like.device):
            buffer = self._buffers[name] = torch.empty(size, dtype=dtype, device=like.device)
        return buffer[:size].view(shape)


def squared_distances(
    x: torch.Tensor, centers: torch.Tensor, x_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, k) squared Euclidean distances, clamped at zero; ``x_sq`` caches ||x||^2 (n, 1)."""
    if x_sq is None:
        x_sq = (x * x).sum(1, keepdim=True)
    return torch.addmm(x_sq + (centers * centers).sum(1), x, centers.T, alpha=-2).clamp_min_(0)


def _row_chunk(n: int, columns: int, element_size: int) -> int:
    """Rows per chunk so that a (rows, columns) block stays under ``CHUNK_BYTES``."""
    return max(1, min(n, CHUNK_BYTES // max(1, columns * element_size)))


def _wide(device: torch.device) -> torch.dtype:
    """Accumulation dtype: float64, or float32 where the device has no float64 (mps)."""
    return torch.float32 if device.type == "mps" else torch.float64


def two_nearest(
    x: torch.Tensor,
    centers: torch.Tensor,
    x_sq: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    scratch: Scratch | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest and second-nearest of each restart's centres, for r restarts at once.

    ``x`` (n, d), ``centers`` (r, k, d), ``x_sq`` ||x||^2 (n,); ``index`` (m,) picks the rows
    to assign (all when None). Returns labels (r, m) int64 and the squared distances to the
    nearest and the second-nearest centre (r, m), clamped at zero (inf when k = 1). One
    (m, r * k) matrix product in row chunks of at most ``CHUNK_BYTES``; minima are taken over
    ||c||^2 - 2 x.c, ||x||^2 added afterwards. ``scratch`` holds the chunks between calls.
    """
    r, k, d = centers.shape
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    scratch = Scratch() if scratch is None else scratch
    m = len(x) if index is None else len(index)
    flat = centers.reshape(r * k, d)
    flat_sq = (flat * flat).sum(1)
    labels = torch.empty(r, m, dtype=torch.long, device=x.device)
    first = torch.empty(r, m, dtype=x.dtype, device=x.device)
    second = torch.empty(r, m, dtype=x.dtype, device=x.device)
    step = _row_chunk(m, max(r * k, d), x.element_size())
    for start in range(0, m, step):
        rows = slice(start, min(start + step, m))
        size = rows.stop - start
        if index is None:
            block, block_sq = x[rows], x_sq[rows]
        else:
            block = torch.index_select(x, 0, index[rows], out=scratch.get("rows", (size, d), x))
            block_sq = x_sq[index[rows]]
        scores = scratch.get("scores", (size, r * k), x)
        torch.addmm(flat_sq, block, flat.T, alpha=-2, out=scores)
        scores = scores.view(size, r, k)
        best = scratch.get("best", (size, r), x)
        nearest = scratch.get("nearest", (size, r), x, torch.long)
        torch.min(scores, 2, out=(best, nearest))
        labels[:, rows] = nearest.T
        first[:, rows] = best.add_(block_sq[:, None]).clamp_min_(0).T
        scores.scatter_(2, nearest[:, :, None], math.inf)
        torch.amin(scores, 2, out=best)
        second[:, rows] = best.add_(block_sq[:, None]).clamp_min_(0).T
    return labels, first, second


def _assigned_distances(
    x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, scratch: Scratch
) -> torch.Tensor:
    """(n,) squared distances of ``x`` (n, d) to their own centres ``centers[labels]``,
    computed directly (no cancellation) in row chunks."""
    n, d = x.shape
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    step = _row_chunk(n, d, x.element_size())
    for start in range(0, n, step):
        rows = slice(start, start + step)
        own = scratch.get("rows", (len(labels[rows]), d), x)
        torch.index_select(centers, 0, labels[rows], out=own)
        torch.sum(own.sub_(x[rows]).square_(), 1, out=out[rows])
    return out


def _tolerance(x: torch.Tensor, x_sq: torch.Tensor, tol: float) -> float:
    """``tol`` times the mean per-feature variance of ``x`` (n, d), from ||x||^2 ``x_sq``."""
    n, d = x.shape
    if n < 2:
        return 0.0
    spread = float(x_sq.sum(dtype=_wide(x.device))) - n * float(x.mean(0).square().sum())
    return tol * max(spread, 0.0) / (d * (n - 1))


def restart_generators(seed: int, n_init: int) -> list[torch.Generator]:
    """One CPU generator per restart, seeded from (seed, restart): restart i draws the same
    numbers whatever ``n_init`` is, so batched restarts equal restarts run one by one."""
    states = [np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]
              for i in range(n_init)]
    return [torch.Generator().manual_seed(int(state) >> 1) for state in states]


def kmeans_plus_plus(
    x: torch.Tensor, k: int, generators: list[torch.Generator], x_sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Greedy k-means++ seeding of r = ``len(generators)`` restarts at once: (r, k, d).

    Arthur & Vassilvitskii (2007), greedy as in scikit-learn: each new centre is the best of
    2 + log k candidates drawn with probability proportional to D(x)^2 (smallest resulting
    potential). Sampling inverts the cumulative D^2 (float64) with the restart's uniform
    draws, made on the CPU so the seeds do not depend on the device's random generator.
    ``x`` (n, d), ``x_sq`` ||x||^2 (n,). A restart with no potential left (fewer distinct
    points than k) draws uniformly. Restarts are scored in blocks whose (trials, n)
    distance arrays fit ``CHUNK_BYTES`` (at least one restart per block).
    """
    n = len(x)
    r = len(generators)
    trials = 2 + int(math.log(k))
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    device = x.device
    wide = _wide(device)
    scratch = Scratch()
    first = torch.cat([torch.randint(n, (1,), generator=g) for g in generators]).to(device)
    uniform = torch.stack(
        [torch.rand(k - 1, trials, generator=g, dtype=torch.float64) for g in generators]
    ).to(device, wide)  # (r, k - 1, trials)
    chosen = torch.empty(r, k, dtype=torch.long, device=device)
    chosen[:, 0] = first
    closest = squared_distances(x, x[first], x_sq[:, None]).T.contiguous()  # (r, n)
    per_block = max(1, CHUNK_BYTES // (trials * n * x.element_size()))
    for step in range(1, k):
        cumulative = torch.cumsum(closest, 1, dtype=wide, out=scratch.get("cum", (r, n), x, wide))
        total = cumulative[:, -1:]
        draws = uniform[:, step - 1]
        pick = torch.searchsorted(cumulative, draws * total, right=True).clamp_(max=n - 1)
        flat = total.squeeze(1) <= 0  # no potential left: any point
        pick[flat] = (draws[flat] * n).long().clamp_(max=n - 1)
        for block in range(0, r, per_block):
            b = slice(block, block + per_block)
            candidates = pick[b].reshape(-1)
            points = x[candidates]
            reached = scratch.get("reached", (len(candidates), n), x)
            torch.addmm(x_sq, points, x.T, alpha=-2, out=reached)
            reached = reached.add_(x_sq[candidates, None]).clamp_min_(0).view(-1, trials, n)
            torch.minimum(reached, closest[b, None], out=reached)
            best = reached.sum(2).argmin(1)
            rows = torch.arange(len(best), device=device) * trials + best
            torch.index_select(reached.view(-1, n), 0, rows, out=closest[b])
            chosen[b, step] = pick[b].gather(1, best[:, None]).squeeze(1)
    return x[chosen]


def lloyd(
    x: torch.Tensor,
    centers: torch.Tensor,
    max_iter: int = 300,
    tol: float = 1e-4,
    x_sq: torch.Tensor | None = None,
    nearest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> KMeansResult:
    """Lloyd iterations from ``centers`` (k, d), skipping the points that provably keep
    their centre (Hamerly 2010, "Making k-means even faster"): plain Lloyd's iterates, up
    to float32 rounding of near-ties.

    Each point keeps an upper bound on the distance to its centre and a lower bound on the
    distance to every other; when the centres move, the upper bound grows by its centre's
    move and the lower bound shrinks by the largest other move. Only points whose upper
    bound exceeds both their lower bound and half the distance from their centre to the
    nearest other centre are reassigned (one matrix product over those points), and the
    cluster sums (float64) are updated by the points that changed cluster.

    Stops, as scikit-learn's Lloyd does, when no label changes or the total squared centre
    shift falls below ``tol`` times the mean per-feature variance. An empty cluster takes
    the worst-fit point. ``x`` (n, d), ``x_sq`` ||x||^2 (n,); ``nearest`` the first
    assignment (labels, squared distances to the nearest and the second-nearest centre, as
    ``two_nearest`` gives for one restart) when already computed. Pass centred data for
    float32 precision (``kmeans`` does).
    """
    k, d = centers.shape
    n = len(x)
    x_sq = (x * x).sum(1) if x_sq is None else x_sq
    tol_abs = _tolerance(x, x_sq, tol)
    scratch = Scratch()
    if nearest is None:
        nearest = tuple(t[0] for t in two_nearest(x, centers[None], x_sq, scratch=scratch))
    labels, upper, lower = (t.clone() for t in nearest)
    upper, lower = upper.sqrt_(), lower.sqrt_()
    wide = _wide(x.device)
    counts = torch.bincount(labels, minlength=k)
    sums = torch.zeros_like(centers).index_add_(0, labels, x).to(wide)
    iteration = 0
    while True:
        iteration += 1
        new = (sums / counts.clamp_min(1).unsqueeze(1)).to(x.dtype)
        empty = (counts == 0).nonzero().squeeze(1)
        if len(empty):  # the worst-fit points become the empty clusters' centres
            misfit = _assigned_distances(x, centers, labels, scratch)
            far = misfit.topk(min(len(empty), n)).indices
            new[empty[: len(far)]] = x[far]
        delta = (new - centers).norm(dim=1)
        shift = float(delta.square().sum())
        centers = new
        stop = shift <= tol_abs or iteration >= max_iter
        if k > 1:  # bounds follow the moves: own centre's for upper, the largest other's
            top = delta.topk(2)
            upper += delta[labels]
            lower -= torch.where(labels == top.indices[0], top.values[1], top.values[0])
            apart = squared_distances(centers, centers).fill_diagonal_(math.inf)
            bound = torch.maximum(lower, apart.amin(1).sqrt_().mul_(0.5)[labels])
            check = (upper > bound).nonzero().squeeze(1)
        else:
            check = labels[:0]
        if 2 * len(check) > n:  # most points: all of them, without gathering rows
            check = torch.arange(n, device=x.device)
            got, first, second = two_nearest(x, centers[None], x_sq, scratch=scratch)
        else:
            got, first, second = two_nearest(x, centers[None], x_sq, check, scratch)
        got, first, second = got[0], first[0], second[0]
        upper[check], lower[check] = first.sqrt_(), second.sqrt_()
        moved = (got != labels[check]).nonzero().squeeze(1)
        if len(moved):
            points, old, to = check[moved], labels[check[moved]], got[moved]
            labels[points] = to
            moving = x.index_select(0, points).to(wide)
            sums.index_add_(0, to, moving).index_add_(0, old, moving, alpha=-1)
            counts += torch.bincount(to, minlength=k) - torch.bincount(old, minlength=k)
        if stop:
            break
        if not len(moved):  # the next iteration's assignment changes nothing
            iteration += 1
            break
    inertia = float(_assigned_distances(x, centers, labels, scratch).sum(dtype=wide))
    return KMeansResult(centers, labels, inertia, iteration)


def kmeans(
    x: torch.Tensor,
    k: int,
    n_init: int = 10,
    seed: int = 0,
    init: torch.Tensor | None = None,
    max_iter: int = 300,
) -> KMeansResult:
    """Best of ``n_init`` k-means++ runs, or one run from ``init`` centres (k, d) when given.

    ``x`` (n, d) float on any device. The restarts' seeding and first assignment run
    batched (``kmeans_plus_plus``, ``two_nearest``), then each restart's Lloyd iterations
    (``lloyd``); restart i depends only on (``seed``, i), and the lowest inertia wins; of
    the restarts that found the winner's partition, the first (``first_of_best``). Works on
    centred data, as scikit-learn does, so float32 distances keep their precision.
    """
    offset = x.mean(0)
    x = x - offset
    x_sq = (x * x).sum(1)
    if init is not None:
        best = lloyd(x, init - offset, max_iter, x_sq=x_sq)
    else:
        seeds = kmeans_plus_plus(x, k, restart_generators(seed, n_init), x_sq)
        nearest = two_nearest(x, seeds, x_sq)
        best = first_of_best([
            lloyd(x, seeds[i], max_iter, x_sq=x_sq, nearest=tuple(t[i] for t in nearest))
            for i in range(n_init)
        ])
    best.centers = best.centers + offset
    return best


def first_of_best(runs: list[KMeansResult]) -> KMeansResult:
    """The first of ``runs`` whose partition is the lowest-inertia one's.

    Restarts that find one partition (under their own cluster ids) differ in inertia only
    by float rounding, so which of them is lowest depends on the CPU's kernels; the ids,
    and with them a conditioner's labels, would differ between machines.
    """
    lowest = min(runs, key=lambda result: result.inertia)
    return next(run for run in runs if same_partition(run.labels, lowest.labels))


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether labels ``a`` and ``b`` (n,) group the points alike, whatever their ids."""
    pairs = torch.unique(a * (int(b.max()) + 1) + b).numel()
    return pairs == torch.unique(a).numel() == torch.unique(b).numel()


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
