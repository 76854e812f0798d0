"""FID-family cost: the harness's ``fid_digits`` metric vs. torch-fidelity, or vs. itself.

Both sides score the same generated stacked-digit images (uint8, 3x32x32: a fixed random
sample of real triples, shifted and noised so that FID is non-trivial) against the same
real images, with the same ``digits-cnn`` feature extractor, the same metrics (FID, KID,
IS, precision/recall) and the same torch-fidelity arguments. The harness side goes through
``DigitsFidelity.compute`` with a sampler that returns the images (as a run's sampler
would, in [-1, 1]). Cases (``--case``):

- ``direct``: harness (real-feature cache off) vs. ``torch_fidelity.calculate_metrics``
  called directly: the harness's overhead.
- ``cache``: a repeated evaluation with the real-feature cache off ("uncached": what every
  evaluation cost before the cache) vs. on and filled by the warm-up call ("cached": a
  run's second evaluation, or another run on the same real subset).

Repeats alternate the two sides; the values must agree exactly.

    .venv/bin/python benchmarks/bench_fid.py [--case cache] [--samples 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch_fidelity

from harness.api import DataLocation, from_uint8
from harness.results import atomic_write_json, environment
from harness_plugins.datasets.images import StackedDigits
from harness_plugins.metrics.digit_classifier import classifier_path
from harness_plugins.metrics.fidelity import (
    DIGITS_EXTRACTOR,
    DigitsFidelity,
    UInt8Images,
    count_name,
    register_digits_extractor,
    result_names,
)

SEED = 0


def fake_images(dataset: StackedDigits, n: int) -> torch.Tensor:
    """Real triples, rolled by a few pixels and noised: a stand-in for a generator's output."""
    generator = torch.Generator().manual_seed(SEED + 1)
    x = dataset.x[torch.randint(len(dataset.x), (n,), generator=generator)].float()
    x = x.roll(shifts=(2, -1), dims=(2, 3)) + 20 * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 255).round().to(torch.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["direct", "cache"], default="direct",
                        help="direct: vs. torch-fidelity; cache: real-feature cache off vs. on")
    parser.add_argument("--samples", type=int, default=10_000, help="generated (and real) images")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()

    dataset = StackedDigits(StackedDigits.Options(size=max(args.samples, 10_000)), SEED,
                            DataLocation())
    fake = fake_images(dataset, args.samples)
    metric = DigitsFidelity(DigitsFidelity.Options(samples=args.samples, source="digits"))
    run = SimpleNamespace(dataset=dataset, device=torch.device("cpu"),
                          config=SimpleNamespace(seed=SEED, data_root=Path("data")))
    opts = metric.options

    def harness_side(cache_root: Path | None) -> Callable[[], dict[str, float]]:
        def side() -> dict[str, float]:
            metric.cache_root = cache_root
            return metric.compute(lambda n: (from_uint8(fake[:n]), torch.zeros(n)), run)
        return side

    def direct_side() -> dict[str, float]:
        register_digits_extractor()
        real = metric.reference_images(run)  # the same real subset
        values = torch_fidelity.calculate_metrics(
            input1=UInt8Images(fake), input2=UInt8Images(real), fid=True, kid=True, isc=True,
            prc=True, feature_extractor=DIGITS_EXTRACTOR,
            feature_extractor_weights_path=str(classifier_path("digits", Path("data"))),
            cuda=False, batch_size=opts.batch_size, kid_subsets=opts.kid_subsets,
            kid_subset_size=min(opts.kid_subset_size, args.samples),
            isc_splits=opts.isc_splits, prc_neighborhood=opts.prc_neighborhood,
            rng_seed=SEED, save_cpu_ram=True, cache=False, verbose=False,
        )
        return result_names(values, f"digits_{count_name(args.samples)}")

    cache_dir = tempfile.TemporaryDirectory(prefix="bench-fid-cache-")
    sides = (
        {"harness": harness_side(None), "direct": direct_side} if args.case == "direct" else
        {"uncached": harness_side(None), "cached": harness_side(Path(cache_dir.name))}
    )
    # warm-up, trains the classifier if needed and fills the cache
    values = {name: side() for name, side in sides.items()}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name in sides if r % 2 == 0 else reversed(sides):
            start = time.perf_counter()
            again = sides[name]()
            times[name].append(time.perf_counter() - start)
            if again != values[name]:
                raise SystemExit(f"bench_fid: {name} values changed between calls")
    cache_dir.cleanup()
    first, second = sides
    same = values[first] == values[second]
    fid = values[first][f"fid_digits_{count_name(args.samples)}"]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = medians[first] / medians[second]
    results: dict[str, Any] = {
        "benchmark": "fid", "case": args.case, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "samples": args.samples, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": medians, "ratio_of_medians": ratio,
        "values": values, "same_values": same, "environment": environment(),
        "loadavg": {"start": load_start, "end": os.getloadavg()},
    }
    print(f"bench_fid --case {args.case}: {args.samples} generated vs {args.samples} real "
          f"stacked digits, digits-cnn features, FID+KID+IS+PRC, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"same values on both sides: {same} (FID {fid:.4f})")
    for name, ts in times.items():
        print(f"{name:<8} median {medians[name]:7.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")
    print(f"{first}/{second}: {ratio:.3f}")
    if args.json is not None:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
