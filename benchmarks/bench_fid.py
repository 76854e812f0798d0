"""FID-family cost: the harness's ``fid_digits`` metric vs. calling torch-fidelity directly.

Both sides score the same generated stacked-digit images (uint8, 3x32x32: a fixed random
sample of real triples, shifted and noised so that FID is non-trivial) against the same
real images, with the same ``digits-cnn`` feature extractor, the same metrics (FID, KID,
IS, precision/recall) and the same torch-fidelity arguments. The harness side goes through
``DigitsFidelity.compute`` with a sampler that returns the images (as a run's sampler
would, in [-1, 1]); the direct side calls ``torch_fidelity.calculate_metrics``. Repeats
alternate the two sides; the values must agree exactly.

    .venv/bin/python benchmarks/bench_fid.py [--samples 10000] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
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

    def harness_side() -> dict[str, float]:
        return metric.compute(lambda n: (from_uint8(fake[:n]), torch.zeros(n)), run)

    def direct_side() -> dict[str, float]:
        register_digits_extractor()
        real = metric.reference_images(run)  # the same real subset
        return torch_fidelity.calculate_metrics(
            input1=UInt8Images(fake), input2=UInt8Images(real), fid=True, kid=True, isc=True,
            prc=True, feature_extractor=DIGITS_EXTRACTOR,
            feature_extractor_weights_path=str(classifier_path("digits", Path("data"))),
            cuda=False, batch_size=opts.batch_size, kid_subsets=opts.kid_subsets,
            kid_subset_size=min(opts.kid_subset_size, args.samples),
            isc_splits=opts.isc_splits, prc_neighborhood=opts.prc_neighborhood,
            rng_seed=SEED, save_cpu_ram=True, cache=False, verbose=False,
        )

    sides = {"harness": harness_side, "direct": direct_side}
    values = {name: side() for name, side in sides.items()}  # warm-up; trains the classifier
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name in sides if r % 2 == 0 else reversed(sides):
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    fid = values["harness"][f"fid_digits_{count_name(args.samples)}"]
    same = abs(fid - values["direct"][torch_fidelity.KEY_METRIC_FID]) < 1e-9
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratio = medians["harness"] / medians["direct"]
    results: dict[str, Any] = {
        "benchmark": "fid", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "samples": args.samples, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "seconds": times, "median_s": medians, "ratio_of_medians": ratio,
        "values": values, "same_fid": same, "environment": environment(),
        "loadavg": {"start": load_start, "end": os.getloadavg()},
    }
    print(f"bench_fid: {args.samples} generated vs {args.samples} real stacked digits, "
          f"digits-cnn features, FID+KID+IS+PRC, {torch.get_num_threads()} thread(s)")
    print(f"same FID on both sides: {same} ({fid:.4f})")
    for name, ts in times.items():
        print(f"{name:<8} median {medians[name]:7.2f} s  (min {min(ts):.2f}, max {max(ts):.2f})")
    print(f"harness/direct: {ratio:.3f}")
    if args.json is not None:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
