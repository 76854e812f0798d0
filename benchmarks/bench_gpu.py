"""GPU throughput: images/s per backbone, 2-D seeds/s, and Table 1's projected wall time.

Three measurements, each of runs built as ``harness run`` builds them (``make_config`` ->
``build_run`` -> ``Trainer`` / ``harness.replicas.Replicas``) on ``--device``:

1. **images/s** of one run per image backbone (dcgan, resnet, biggan at width 64, their
   paper width) on ``stacked_digits`` (3x32x32) at batch 64 and 256, conditioner
   ``kmeans_d`` (k = 10 on a small subset, every real example labelled before timing, no
   re-clustering): ``Trainer.train`` itself, so hooks, the per-step host read of the losses
   and ``conditioner.update`` are included. images/s = batch / (s/step).
2. **2-D seeds/s**: the ring with ``kmeans_d`` and ``mlp`` (batch 100, as
   ``bench_seeds.py``), one run by ``Trainer.train`` and groups of N seeds trained together
   (``Replicas``: one vectorised G and D update for all N), in seed-steps/s.
3. **Table 1 projection** (Liu et al. 2020, suite ``liu2020-table1``, profile ``paper``):
   per dataset (ring, grid) and method (none, random, kmeans_d, online_kmeans) one group of
   ``--group`` seeds (10: all of a cell's seeds) built from the suite's own settings
   (100k-point data, k = 50, kmeans_d's 10k-point subset and re-clustering every 5000);
   measured: build, first clustering, ms/step of the group, one re-clustering, one
   checkpoint of the group and one seed's final evaluation (50k samples). Projected: each
   cell's groups one after another in one process on one device, every cost counted as
   often as 100k steps incur it; the script prints these assumptions with the result.

Timing: the device is synchronised (``torch.cuda.synchronize``) before a clock starts and
at the end of every timed block; nothing inside a block waits for the device beyond what
the training loop itself does (its loss read, the conditioners' label look-ups). Every
case first runs untimed warm-up steps (CUDA kernels, cuDNN's algorithm choice), then
blocks of steps for ``--case-s`` seconds; reported: the median ms/step of the blocks. The
whole script keeps to ``--budget-s`` (per-case time shrinks as it runs out; cases with no
time left are skipped and listed). With ``--json PATH`` the results so far are written
after every case.

    .venv/bin/python benchmarks/bench_gpu.py [--device cuda] [--budget-s 240] [--json gpu.json]
    .venv/bin/python benchmarks/bench_gpu.py --quick        # tiny CPU smoke run, ~40 s
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from bench_seeds import CONFIG as SEEDS_CONFIG
from bench_train import train_harness

from harness.build import build_run
from harness.config import make_config
from harness.manager import PluginManager, get_plugin_manager
from harness.replicas import Replicas, blocker, rng_state
from harness.results import atomic_write_json, environment
from harness.step import total
from harness.suites import get_suite
from harness.trainer import Trainer

IMAGE_BACKBONES = ("dcgan", "resnet", "biggan")
SUITE, PROFILE = "liu2020-table1", "paper"
TABLE1_ROWS = ("none", "random", "kmeans_d", "online_kmeans")  # the paper's four methods
TABLE1_SEEDS = 10
MAX_WARMUP_STEPS, MAX_TIMED_STEPS = 500, 4000  # together below kmeans_d's re-clustering
# period (5000 steps), so no re-clustering falls inside a measurement

Advance = Callable[[int], None]
"""Runs that many more training steps."""


class Settings:
    """What is measured: full size on a GPU, or tiny (``--quick``) for a CPU smoke run."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.width = 4 if quick else 64
        self.image_batches = (8, 16) if quick else (64, 256)
        self.image_size = 256 if quick else 10_000
        self.image_cond = ({"k": 4, "subset": 128, "n_init": 1, "recluster_every": 0} if quick
                           else {"k": 10, "subset": 1000, "n_init": 1, "recluster_every": 0})
        self.seeds = (1, 2) if quick else (1, 10, 50)
        self.group = 2 if quick else TABLE1_SEEDS
        self.warmup_s, self.min_warmup = (0.0, 1) if quick else (1.0, 5)
        self.block_s = 0.05 if quick else 0.25

    def shrink(self, values: dict[str, Any]) -> dict[str, Any]:
        """A Table 1 run's settings, with smaller data, clustering and evaluation under
        ``--quick`` (as they are otherwise)."""
        if not self.quick:
            return values
        values = {**values, "eval_samples": 1000,
                  "dataset_options": {**values.get("dataset_options", {}), "size": 2000}}
        if values["cond"] in ("kmeans_d", "online_kmeans"):
            values["cond_options"] = {**values.get("cond_options", {}), "subset": 500,
                                      "n_init": 1}
        return values


class Budget:
    """The overall time cap: how many seconds each remaining case may time its steps."""

    def __init__(self, seconds: float, case_s: float, cases: int) -> None:
        self.deadline = time.perf_counter() + seconds
        self.case_s = case_s
        self.cases_left = cases
        self.skipped: list[str] = []

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def next_case(self, name: str) -> float | None:
        """Timed seconds for the case ``name`` (building and warm-up come on top, counted
        as as much again); None, and the case listed as skipped, when no time is left."""
        share = self.remaining() / max(self.cases_left, 1) / 2
        self.cases_left -= 1
        if share < min(self.case_s, 0.2):
            self.skipped.append(name)
            return None
        return min(self.case_s, share)


class Clock:
    """Wall time with the device synchronised at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def timed(self, into: dict[str, float], key: str) -> Iterator[None]:
        """``into[key]`` = seconds the block took, device work included."""
        self.sync()
        start = time.perf_counter()
        yield
        self.sync()
        into[key] = time.perf_counter() - start


def measure(advance: Advance, clock: Clock, settings: Settings, seconds: float
            ) -> dict[str, Any]:
    """ms/step of ``advance``: untimed warm-up (``min_warmup`` steps and ``warmup_s``, at
    most ``MAX_WARMUP_STEPS``), then blocks of about ``block_s`` each, synchronised at both
    ends, for ``seconds`` (at least three blocks, at most ``MAX_TIMED_STEPS`` steps)."""
    clock.sync()
    start, warmup = time.perf_counter(), 0
    while warmup < settings.min_warmup or (time.perf_counter() - start < settings.warmup_s
                                           and warmup < MAX_WARMUP_STEPS):
        advance(1)
        warmup += 1
    clock.sync()
    per_step = (time.perf_counter() - start) / warmup
    block = max(1, min(round(settings.block_s / per_step), MAX_TIMED_STEPS // 3))
    blocks: list[float] = []
    start = time.perf_counter()
    while len(blocks) < 3 or (time.perf_counter() - start < seconds
                              and (len(blocks) + 1) * block <= MAX_TIMED_STEPS):
        clock.sync()
        begin = time.perf_counter()
        advance(block)
        clock.sync()
        blocks.append(1000 * (time.perf_counter() - begin) / block)
    return {"ms_per_step": statistics.median(blocks), "blocks_ms_per_step": blocks,
            "block": block, "timed_steps": block * len(blocks), "warmup_steps": warmup}


def trainer_for(values: dict[str, Any], pm: PluginManager, clock: Clock,
                times: dict[str, float]) -> Trainer:
    """A run built from ``values`` with its conditioner set up; build and setup seconds go
    to ``times``."""
    with clock.timed(times, "build_s"):
        run = build_run(make_config(values), pm)
    trainer = Trainer(run)
    with clock.timed(times, "setup_s"):
        trainer.setup()
    return trainer


def build_group(configs: list[dict[str, Any]], pm: PluginManager, clock: Clock,
                times: dict[str, float]) -> tuple[Replicas, str | None]:
    """The runs of ``configs`` (one per seed) set up as one ``Replicas`` group, and why the
    composition cannot be vectorised (None when it can; then the group is stacked)."""
    runs, states = [], []
    with clock.timed(times, "build_s"):
        for values in configs:
            runs.append(build_run(make_config(values), pm))
            states.append(rng_state(runs[-1].device))
    replicas = Replicas(runs, states)
    with clock.timed(times, "setup_s"):
        replicas.setup()
    reason = blocker(runs[0])
    if reason is None:
        for run in runs:
            run.generator.train()
            run.discriminator.train()
        replicas.stack()
    return replicas, reason


def group_advance(replicas: Replicas) -> Advance:
    """Steps of the group as ``Replicas.train``'s loop body takes them (vectorised step,
    divergence check, EMA, each replica's ``conditioner.update`` and step-end hooks),
    without checkpoints, progress or evaluation."""
    def advance(steps: int) -> None:
        for _ in range(steps):
            losses = replicas.step()
            finite = torch.stack([total(values) for values in losses]).isfinite().tolist()
            if not all(finite):
                raise RuntimeError("a replica diverged while being timed")
            step = replicas.live[0].run.step + 1
            replicas.update_ema(step)
            for replica, values in zip(replicas.live, losses, strict=True):
                run = replica.run
                run.step = step
                with replicas.rng(replica):
                    changed = run.conditioner.update(step, run.models)
                if changed is not None:
                    run.pm.notify("harness_labels_updated", run=run, step=step,
                                  changed_fraction=changed)
                run.pm.notify("harness_step_end", run=run, step=step, losses=values)

    return advance


def free(clock: Clock) -> None:
    """Return cached device memory between cases (objects must be dropped first)."""
    if clock.cuda:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------- the three parts
def bench_images(pm: PluginManager, clock: Clock, settings: Settings, budget: Budget,
                 common: dict[str, Any], report: Callable[[], None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    print(f"\nimages/s: stacked_digits 3x32x32 ({settings.image_size} triples), kmeans_d "
          f"k={settings.image_cond['k']} (labels precomputed, no re-clustering), bce, "
          "Trainer.train")
    print(f"{'backbone':<9}{'width':>6}{'batch':>7}{'ms/step':>10}{'images/s':>11}"
          f"{'steps':>7}{'build s':>9}")
    for backbone in IMAGE_BACKBONES:
        for batch in settings.image_batches:
            name = f"images/{backbone}/b{batch}"
            seconds = budget.next_case(name)
            if seconds is None:
                continue
            values = {**common, "backbone": backbone, "dataset": "stacked_digits",
                      "batch_size": batch, "cond": "kmeans_d", "metrics": ["cluster_agreement"],
                      "cond_options": settings.image_cond,
                      "dataset_options": {"size": settings.image_size},
                      "backbone_options": {"width": settings.width}}
            times: dict[str, float] = {}
            trainer = trainer_for(values, pm, clock, times)
            trainer.run.conditioner.labels  # noqa: B018  (labels every example now, untimed)
            result = measure(lambda n, t=trainer: train_harness(t, n), clock, settings,
                             seconds)
            row = {"backbone": backbone, "width": settings.width, "batch": batch, **times,
                   **result, "images_per_s": 1000 * batch / result["ms_per_step"]}
            rows.append(row)
            print(f"{backbone:<9}{settings.width:>6}{batch:>7}{row['ms_per_step']:>10.2f}"
                  f"{row['images_per_s']:>11.0f}{row['timed_steps']:>7}"
                  f"{times['build_s'] + times['setup_s']:>9.2f}")
            del trainer
            free(clock)
            report()
    return rows


def bench_seed_groups(pm: PluginManager, clock: Clock, settings: Settings, budget: Budget,
                common: dict[str, Any], report: Callable[[], None]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    base = {**SEEDS_CONFIG, **common}
    print("\n2-D seeds/s: ring, kmeans_d (subset 2000, n_init 1, no re-clustering), mlp, "
          "batch 100")
    print(f"{'seeds':<9}{'ms/step':>10}{'seed-steps/s':>14}{'vs single':>11}{'steps':>7}"
          f"{'setup s':>9}")
    single_ms = None
    seconds = budget.next_case("seeds/single")
    if seconds is not None:
        times: dict[str, float] = {}
        trainer = trainer_for({**base, "seed": 0}, pm, clock, times)
        result = measure(lambda n: train_harness(trainer, n), clock, settings, seconds)
        single_ms = result["ms_per_step"]
        rows.append({"n": 1, "mode": "single", **times, **result,
                     "seed_steps_per_s": 1000 / single_ms})
        print(f"{'1 single':<9}{single_ms:>10.2f}{1000 / single_ms:>14.0f}{'1.00x':>11}"
              f"{result['timed_steps']:>7}{times['setup_s']:>9.2f}")
        del trainer
        report()
    for n in settings.seeds:
        seconds = budget.next_case(f"seeds/group{n}")
        if seconds is None:
            continue
        times = {}
        replicas, reason = build_group([{**base, "seed": s} for s in range(n)], pm, clock,
                                       times)
        if reason is not None:  # the default composition is vectorised; never expected
            raise RuntimeError(f"ring/kmeans_d/mlp cannot be vectorised: {reason}")
        result = measure(group_advance(replicas), clock, settings, seconds)
        ms = result["ms_per_step"]
        speedup = n * single_ms / ms if single_ms else math.nan
        rows.append({"n": n, "mode": "group", **times, **result,
                     "seed_steps_per_s": 1000 * n / ms,
                     "vs_single": speedup if single_ms else None})
        print(f"{n:<9}{ms:>10.2f}{1000 * n / ms:>14.0f}{speedup:>10.2f}x"
              f"{result['timed_steps']:>7}{times['setup_s']:>9.2f}")
        del replicas
        free(clock)
        report()
    return rows


def bench_table1(pm: PluginManager, clock: Clock, settings: Settings, budget: Budget,
                 common: dict[str, Any], report: Callable[[], None]) -> dict[str, Any]:
    suite = get_suite(SUITE)
    n = settings.group
    groups = math.ceil(TABLE1_SEEDS / n)
    cells: list[dict[str, Any]] = []
    print(f"\nTable 1 projection: suite {SUITE}, profile {PROFILE!r}, {TABLE1_SEEDS} seeds "
          f"per cell as {groups} group(s) of {n}")
    print(f"{'dataset':<8}{'method':<14}{'ms/step':>9}{'seed-st/s':>10}{'build+setup':>12}"
          f"{'recluster':>10}{'ckpt':>7}{'eval':>7}{'cell h':>8}")
    for dataset in suite.datasets:
        for row in TABLE1_ROWS:
            seconds = budget.next_case(f"table1/{dataset}/{row}")
            if seconds is None:
                continue
            configs = [settings.shrink({**suite.config_values(PROFILE, dataset, row, seed),
                                        **common}) for seed in range(n)]
            times: dict[str, float] = {}
            replicas, reason = build_group(configs, pm, clock, times)
            first = replicas.replicas[0]
            cfg = first.run.config
            if reason is None:
                result = measure(group_advance(replicas), clock, settings, seconds)
                group_ms = result["ms_per_step"]
            else:  # trained one seed after another, as harness run --seeds does
                result = measure(lambda k, t=first.trainer: train_harness(t, k), clock,
                                 settings, seconds)
                group_ms = n * result["ms_per_step"]
            with tempfile.TemporaryDirectory() as tmp:
                for i, replica in enumerate(replicas.replicas):
                    replica.run.directory = Path(tmp) / f"seed{i}"
                    replica.run.directory.mkdir()
                with clock.timed(times, "checkpoint_s"):
                    if reason is None:
                        replicas.checkpoint()
                    else:  # not stacked: each seed's own checkpoint
                        for replica in replicas.replicas:
                            replica.trainer.checkpoint()
            every = getattr(first.run.conditioner.options, "recluster_every", 0)
            if every:
                with replicas.rng(first), clock.timed(times, "recluster_s"):
                    first.run.conditioner.update(every, first.run.models)
            with clock.timed(times, "eval_s"):
                metrics = replicas.evaluate(first)
            steps = cfg.steps
            counts = {"steps": steps, "reclusters": steps // every if every else 0,
                      "checkpoints": steps // cfg.checkpoint_every}
            per_group = (times["build_s"] + times["setup_s"] + steps * group_ms / 1000
                         + counts["reclusters"] * n * times.get("recluster_s", 0.0)
                         + counts["checkpoints"] * times["checkpoint_s"]
                         + n * times["eval_s"])
            cell = {"dataset": dataset, "method": row, "group": n, "groups": groups,
                    "vectorised": reason is None, "not_vectorised_because": reason,
                    "group_ms_per_step": group_ms, "seed_steps_per_s": 1000 * n / group_ms,
                    **times, **counts, **result, "eval_samples": cfg.eval_samples,
                    "metrics": metrics, "projected_s": groups * per_group}
            cells.append(cell)
            print(f"{dataset:<8}{row:<14}{group_ms:>9.2f}{cell['seed_steps_per_s']:>10.0f}"
                  f"{times['build_s'] + times['setup_s']:>12.2f}"
                  f"{times.get('recluster_s', 0.0):>10.3f}{times['checkpoint_s']:>7.3f}"
                  f"{times['eval_s']:>7.2f}{cell['projected_s'] / 3600:>8.2f}"
                  + ("" if reason is None else f"  (one seed after another: {reason})"))
            del replicas, first
            free(clock)
            report()
    measured = len(cells)
    wanted = len(suite.datasets) * len(TABLE1_ROWS)
    total_s = sum(c["projected_s"] for c in cells)
    if measured and measured < wanted:  # cells skipped for time: their mean stands in
        total_s *= wanted / measured
    assumptions = [
        f"{len(suite.datasets)} datasets x {len(TABLE1_ROWS)} methods x {TABLE1_SEEDS} seeds "
        f"x {cells[0]['steps'] if cells else '?'} steps, batch 100, mlp; each cell's seeds "
        f"as {groups} vectorised group(s) of {n}, groups one after another in one process "
        "on one device",
        "ms/step measured over a few seconds right after the first clustering (kmeans_d: "
        "while the frozen D still labels examples a batch first meets, as for most of "
        "each 5000-step period)",
        "per seed: one re-clustering's time x steps/recluster_every (kmeans_d), one final "
        "evaluation (eval_samples as the profile, default metrics); per group: build and "
        "first clustering, one checkpoint's time x steps/checkpoint_every",
        "not counted: log and sample-grid writing, the final leaderboard",
    ]
    if measured < wanted:
        assumptions.append(f"only {measured} of {wanted} cells measured; the total scales "
                           "their sum by the cells missing")
    if settings.quick:
        assumptions.append("--quick: smaller data, clustering and evaluation than the "
                           "paper's; a smoke run, not a projection")
    if cells:
        print(f"projected Table 1 wall time: {total_s / 3600:.2f} h ({total_s / 60:.0f} min)"
              f" on this device")
    for line in assumptions:
        print(f"  assumes: {line}")
    return {"cells": cells, "projected_total_s": total_s if cells else None,
            "assumptions": assumptions}


# ---------------------------------------------------------------------- command line
class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, exit code 2 (instead of the usage text first)."""
        print(f"{self.prog}: {message}", file=sys.stderr)
        sys.exit(2)


def positive(text: str) -> float:
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def device_line(device: torch.device) -> str:
    if device.type != "cuda":
        return f"cpu, {torch.get_num_threads()} thread(s)"
    props = torch.cuda.get_device_properties(device)
    return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, capability "
            f"{props.major}.{props.minor}), CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}")


def main() -> None:
    parser = Parser(prog="bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="default: cuda (cpu with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke run of every code path, not a measurement")
    parser.add_argument("--budget-s", type=positive, default=240.0,
                        help="overall time cap in seconds (default 240)")
    parser.add_argument("--case-s", type=positive, default=None,
                        help="timed seconds per case (default 3, 0.3 with --quick)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own; 1 with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads is not None:
        if threads < 1:
            parser.error(f"argument --threads: {threads} is not a positive number of threads")
        torch.set_num_threads(threads)
    device = torch.device(args.device or ("cpu" if args.quick else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"bench_gpu: --device cuda: no CUDA device is available (torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda}); valid: --device "
              "cpu, or --quick for a CPU smoke run", file=sys.stderr)
        sys.exit(2)
    settings = Settings(args.quick)
    case_s = args.case_s or (0.3 if args.quick else 3.0)
    cases = (len(IMAGE_BACKBONES) * len(settings.image_batches) + 1 + len(settings.seeds)
             + 2 * len(TABLE1_ROWS))
    budget = Budget(args.budget_s, case_s, cases)
    clock = Clock(device)
    pm = get_plugin_manager()
    common = {"device": device.type, "progress": False}
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_start = os.getloadavg()
    results: dict[str, Any] = {
        "benchmark": "gpu", "date": started, "device": device_line(device),
        "quick": args.quick, "budget_s": args.budget_s, "case_s": case_s,
        "environment": environment(), "loadavg_start": load_start,
        "images": [], "seeds": [], "table1": None, "skipped": budget.skipped,
    }

    def report() -> None:
        if args.json is not None:
            atomic_write_json(args.json, results)

    print(f"bench_gpu: {device_line(device)}; torch {torch.__version__}; budget "
          f"{args.budget_s:.0f} s, {case_s:g} s timed per case"
          + ("; --quick (tiny sizes: a smoke run)" if args.quick else ""))
    results["images"] = bench_images(pm, clock, settings, budget, common, report)
    results["seeds"] = bench_seed_groups(pm, clock, settings, budget, common, report)
    results["table1"] = bench_table1(pm, clock, settings, budget, common, report)
    elapsed = args.budget_s - budget.remaining()
    results["elapsed_s"] = elapsed
    results["loadavg_end"] = os.getloadavg()
    if budget.skipped:
        print(f"skipped for time: {', '.join(budget.skipped)}")
    print(f"done in {elapsed:.0f} s; load average (1 min) at start {load_start[0]:.2f}, "
          f"at end {os.getloadavg()[0]:.2f}")
    report()


if __name__ == "__main__":
    main()
