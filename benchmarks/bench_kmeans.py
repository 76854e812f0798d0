"""Re-clustering time: ``harness.clustering.kmeans`` vs. scikit-learn's ``KMeans``.

Two data sets of discriminator-feature shape (n x d, k clusters):

* ``dfeat``: features D_f of a randomly initialised ``MLPDiscriminator`` (d = its width) on
  ring data, what ``kmeans_d`` clusters at its first clustering;
* ``blobs``: k overlapping isotropic Gaussian blobs (a harder, Lloyd-heavy case).

Two cases per data set, same k, max_iter and tol on both sides:

* ``cold``: k-means++ seeding, best of n_init = 10 (the first clustering);
* ``warm``: one Lloyd run (n_init = 1) from given centres: the means, in drifted data, of a
  previous partition (Eq. 3 re-clustering). Drift: D's weights perturbed by 10 % of their
  std (``dfeat``) or Gaussian noise of 10 % of the blob std added to the points (``blobs``).

Inertia is recomputed in float64 from each side's centres. Each measurement is repeated
(seed = repeat index) with the two sides interleaved; medians are reported.

    .venv/bin/python benchmarks/bench_kmeans.py [--large] [--data dfeat|blobs|both]
        [--repeats 3] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from threadpoolctl import threadpool_info, threadpool_limits

from harness.clustering import cluster_means, kmeans, squared_distances
from harness.results import atomic_write_json, environment
from harness_plugins.backbones.mlp import MLPDiscriminator, MLPOptions
from harness_plugins.datasets.toy2d import Ring, RingOptions

SIZES = {"default": (10_000, 200, 50), "large": (25_000, 512, 100)}
"""(n, d, k): the 2-D protocol's clustering (d = maxout width 200), and ``--large``."""
N_INIT = 10
MAX_ITER = 300
TOL = 1e-4
DRIFT = 0.1
BLOB_STD = 1.0

Fit = Callable[[int], tuple[torch.Tensor, int]]
"""``fit(seed) -> (centres, Lloyd iterations of the returned run)``."""


def dfeat_data(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """D_f of ring data under a random maxout D, and under the same D with drifted weights."""
    x = Ring(RingOptions(size=n), seed).x
    torch.manual_seed(seed)
    disc = MLPDiscriminator(x.shape[1], 1, MLPOptions(d_width=d)).eval()
    with torch.no_grad():
        before = disc(x)[1]
        for p in disc.body.parameters():
            p.add_(DRIFT * p.std() * torch.randn_like(p))
        return before, disc(x)[1]


def blobs_data(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k Gaussian blobs with centres in [-1, 1]^d (overlapping), and the points with noise."""
    x, _ = make_blobs(n, d, centers=k, cluster_std=BLOB_STD, center_box=(-1, 1),
                      random_state=seed)
    before = torch.from_numpy(x.astype(np.float32))
    generator = torch.Generator().manual_seed(seed)
    return before, before + DRIFT * BLOB_STD * torch.randn(before.shape, generator=generator)


def inertia(x: torch.Tensor, centers: torch.Tensor) -> float:
    """Sum of squared distances to the nearest centre, in float64."""
    return float(squared_distances(x.double(), centers.double()).min(1).values.sum())


def fits(x: torch.Tensor, k: int, init: torch.Tensor | None) -> dict[str, Fit]:
    """Both implementations, cold (``init`` None: k-means++, n_init) or warm (from ``init``)."""
    array = x.numpy()

    def ours(seed: int) -> tuple[torch.Tensor, int]:
        result = kmeans(x, k, N_INIT, seed, init=init, max_iter=MAX_ITER)
        return result.centers, result.iterations

    def sklearn(seed: int) -> tuple[torch.Tensor, int]:
        start = "k-means++" if init is None else init.numpy()
        n_init = N_INIT if init is None else 1
        model = KMeans(k, init=start, n_init=n_init, max_iter=MAX_ITER, tol=TOL,
                       random_state=seed).fit(array)
        return torch.from_numpy(model.cluster_centers_), int(model.n_iter_)

    return {"ours": ours, "sklearn": sklearn}


def measure(x: torch.Tensor, sides: dict[str, Fit], repeats: int) -> dict[str, Any]:
    """Interleaved repeats of every side: seconds and inertia lists, medians and ratios."""
    runs: dict[str, dict[str, list[float]]] = {
        s: {"seconds": [], "inertia": [], "iterations": []} for s in sides
    }
    names = list(sides)
    for seed in range(repeats):
        for name in names if seed % 2 == 0 else reversed(names):
            start = time.perf_counter()
            centers, iterations = sides[name](seed)
            runs[name]["seconds"].append(time.perf_counter() - start)
            runs[name]["inertia"].append(inertia(x, centers))
            runs[name]["iterations"].append(iterations)
    medians = {s: {m: statistics.median(v) for m, v in r.items()} for s, r in runs.items()}
    return {
        "runs": runs, "median": medians,
        "time_ratio": medians["ours"]["seconds"] / medians["sklearn"]["seconds"],
        "inertia_ratio": statistics.median(
            o / s for o, s in zip(runs["ours"]["inertia"], runs["sklearn"]["inertia"], strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="n, d, k = 25000, 512, 100")
    parser.add_argument("--data", choices=["dfeat", "blobs", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats per case")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both sides (torch, BLAS, OpenMP); default: as found")
    args = parser.parse_args()
    for option, value in (("--repeats", args.repeats), ("--threads", args.threads)):
        if value is not None and value < 1:
            print(f"bench_kmeans: invalid {option} {value}; valid: an integer >= 1",
                  file=sys.stderr)
            raise SystemExit(2)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)  # scikit-learn's OpenMP and every BLAS
    n, d, k = SIZES["large" if args.large else "default"]
    kinds = ["dfeat", "blobs"] if args.data == "both" else [args.data]
    load_start = os.getloadavg()

    results: dict[str, Any] = {
        "benchmark": "kmeans", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "n": n, "d": d, "k": k, "n_init": N_INIT, "max_iter": MAX_ITER, "tol": TOL,
        "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "threadpool_info": threadpool_info(), "cases": {}, "environment": environment(),
    }
    pools = sorted({pool["num_threads"] for pool in results["threadpool_info"]})
    print(f"bench_kmeans: n={n} d={d} k={k}, n_init={N_INIT} (cold) / 1 (warm), "
          f"{args.repeats} repeats, torch {torch.get_num_threads()} thread(s), "
          f"BLAS/OpenMP {'/'.join(map(str, pools))} thread(s), "
          f"OPENBLAS_CORETYPE={results['OPENBLAS_CORETYPE']}")
    print(f"{'case':<12} {'ours s':>8} {'sk s':>8} {'t ratio':>8} "
          f"{'ours inertia':>13} {'sk inertia':>13} {'i ratio':>8} {'iters':>9}")
    for kind in kinds:
        x, drifted = dfeat_data(n, d, 0) if kind == "dfeat" else blobs_data(n, d, k, 0)
        previous = kmeans(x, k, n_init=1, seed=0, max_iter=MAX_ITER).labels
        for case, data, init in [
            ("cold", x, None), ("warm", drifted, cluster_means(drifted, previous, k)[0]),
        ]:
            result = measure(data, fits(data, k, init), args.repeats)
            results["cases"][f"{kind}/{case}"] = result
            ours, sk = result["median"]["ours"], result["median"]["sklearn"]
            print(f"{kind + '/' + case:<12} {ours['seconds']:8.3f} {sk['seconds']:8.3f} "
                  f"{result['time_ratio']:8.3f} {ours['inertia']:13.6g} {sk['inertia']:13.6g} "
                  f"{result['inertia_ratio']:8.4f} {ours['iterations']:>4g}/{sk['iterations']:<4g}")
    results["loadavg"] = {"start": load_start, "end": os.getloadavg()}
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
