"""Seeds per second: N seeds trained together (``harness run --seeds``) vs one at a time.

For each N of ``--seeds`` the script builds N runs of one composition (default: the 2-D
ring, ``kmeans_d``, ``mlp``, batch 100, as ``harness run`` builds them), sets up their
conditioners, and times in one process, alternating block by block:

- **single**: ``TrainingStep`` of one of the runs (what each of N sequential runs does per
  step), ms/step; N sequential runs cost N times that;
- **together**: one step of the ``harness.replicas.Replicas`` group (every replica's
  real batch, labels, z, one vectorised D and G update, EMA), ms/step for all N.

Reported per N: median ms/step of each side and the throughput ratio
``N * single / together`` (how many times more seed-steps per second than running the N
seeds one after another). Both sides leave out the per-step bookkeeping of the loop
(hooks, progress, checkpoints), which costs the same per seed on both.

    .venv/bin/python benchmarks/bench_seeds.py [--seeds 1,2,5,10,20] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from harness.build import build_run
from harness.cli import int_arg
from harness.config import make_config
from harness.errors import HarnessError
from harness.manager import get_plugin_manager
from harness.replicas import Replicas, rng_state
from harness.results import atomic_write_json, environment
from harness.seeds import parse_seeds
from harness.trainer import Trainer

CONFIG = {"prior": "gaussian", "cond": "kmeans_d", "backbone": "mlp", "dataset": "ring",
          "batch_size": 100, "steps": 1, "progress": False, "metrics": ["cluster_agreement"],
          "cond_options": {"subset": 2000, "n_init": 1, "recluster_every": 0}}


def group(n: int, pm: Any) -> Replicas:
    """N runs (seeds 0..N-1) set up and stacked, ready to step."""
    runs, states = [], []
    for seed in range(n):
        runs.append(build_run(make_config({**CONFIG, "seed": seed}), pm))
        states.append(rng_state(runs[-1].device))
    replicas = Replicas(runs, states)
    replicas.setup()
    for run in runs:
        run.generator.train()
        run.discriminator.train()
    replicas.stack()
    return replicas


def group_sizes(text: str) -> list[int]:
    """``--seeds``: distinct group sizes N >= 1, written as ``harness run --seeds`` is."""
    try:
        sizes = parse_seeds(text)
    except HarnessError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--seeds", "group sizes")) from None
    if 0 in sizes:
        raise argparse.ArgumentTypeError(f"{text!r}: group size 0 (valid: sizes >= 1)")
    return sizes


def ms_per_step(step: Any, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=group_sizes, default=[1, 2, 5, 10, 20],
                        help="group sizes N to measure, e.g. 1,2,5,10,20")
    parser.add_argument("--rounds", type=int_arg(1, 10_000), default=10,
                        help="alternating blocks per side")
    parser.add_argument("--block", type=int_arg(1, 100_000), default=10, help="steps per block")
    parser.add_argument("--warmup", type=int_arg(0, 100_000), default=5,
                        help="untimed steps per side first")
    parser.add_argument("--threads", type=int_arg(1, 1024), default=None,
                        help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pm = get_plugin_manager()
    load_start = os.getloadavg()
    single_run = build_run(make_config({**CONFIG, "seed": 0}), pm)
    single = Trainer(single_run)
    single.setup()
    single_run.generator.train()
    single_run.discriminator.train()
    rows: list[dict[str, Any]] = []
    print(f"bench_seeds: ring/kmeans_d/mlp, batch 100, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), {args.rounds} rounds x {args.block} steps")
    print(f"{'N':>3} {'single ms':>10} {'together ms':>12} {'ms/seed':>8} {'throughput':>11}")
    for n in args.seeds:
        replicas = group(n, pm)
        sides = {"single": single.step, "together": replicas.step}
        for step in sides.values():
            ms_per_step(step, args.warmup)
        times: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in sides if r % 2 == 0 else reversed(sides):
                times[name].append(ms_per_step(sides[name], args.block))
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        ratio = n * medians["single"] / medians["together"]
        rows.append({"n": n, "ms_per_step": times, "median_ms_per_step": medians,
                     "throughput_ratio": ratio})
        print(f"{n:>3} {medians['single']:10.2f} {medians['together']:12.2f} "
              f"{medians['together'] / n:8.2f} {ratio:10.2f}x")
        del replicas
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        atomic_write_json(args.json, {
            "benchmark": "seeds", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "threads": torch.get_num_threads(), "rounds": args.rounds, "block": args.block,
            "rows": rows, "environment": environment(),
            "loadavg": {"start": load_start, "end": os.getloadavg()},
        })


if __name__ == "__main__":
    main()
