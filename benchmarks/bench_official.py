"""Single-seed 2-D step: the harness vs. the official Self-Conditioned GAN code vs. a bare loop.

Three sides train on the 2-D ring with batch 100, in one process, in interleaved blocks:

- **harness**: ``Trainer.train`` built as ``harness run --dataset ring --cond kmeans_d
  --backbone mlp`` builds it (``harness_trainer`` / ``train_harness`` of ``bench_train.py``).
- **official**: the 2-D experiment of Liu et al., "Diverse Image Generation via
  Self-Conditioned GANs" (CVPR 2020), github.com/stevliu/self-conditioned-gan, ``2d_mix/``,
  given by ``--official PATH`` (optional; the harness does not depend on it). Its files are
  imported, never edited or copied: ``2d_mix/train.py`` parses its arguments at import time
  and runs its loop inside ``main()``, so its loop is reproduced here by calling its own
  functions and classes with its defaults (``--clusterer selfcondgan --data_type ring``):
  ``config.get_models('standard', 'conditional', 50, 200)``, ``get_optimizers`` (Adam 1e-4,
  betas (0.8, 0.999)), ``gan_training.train.Trainer(gan_type='standard', reg_type='none')``,
  ``clusterer_dict['selfcondgan']`` on 10000 cluster points with its first ``recluster``,
  ``get_dataset`` (100000 ring points, shuffled ``DataLoader``, batch 100). Each iteration is
  its loop's body: next batch, ``zdist.sample``, ``clusterer.get_labels`` (frozen-D features,
  ``KMeans.predict``, id mapping), ``trainer.discriminator_trainstep``,
  ``trainer.generator_trainstep``. Left out of the timing, as on the harness side: the
  re-clustering every 5000 iterations, and the plots, snapshot and evaluation every 1000.
  To run it on CPU, ``torch.Tensor.cuda`` returns the tensor itself while the official code
  runs (it calls ``.cuda()`` in ``get_labels``); and since ``sklearn.utils.linear_assignment_``
  no longer exists, it is stubbed by ``scipy.optimize.linear_sum_assignment`` (used only by
  its re-clustering's Hungarian matching, never timed here).
- **bare**: ``BareLoop`` of ``bench_train.py``, the harness step's math on plain tensors.

After ``--warmup`` untimed steps per side, each round times one block of ``--block`` steps per
side, the order cycling through every permutation of the sides. Reported: median ms/step per
side, paired-median ratios official/harness (the harness's speed-up in iterations/s) and
harness/bare, each net's parameter count, and the official iteration's phases.

    .venv/bin/python benchmarks/bench_official.py --official /path/to/self-conditioned-gan \
        [--threads 1] [--rounds 12] [--block 25] [--warmup 25] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import os
import random
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from bench_train import (
    SEED,
    BareLoop,
    harness_trainer,
    max_loss_difference,
    ms_per_step,
    train_harness,
)
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

from harness.results import atomic_write_json, environment

# The official 2-D script's defaults (2d_mix/train.py) for ``--data_type ring``.
OFFICIAL = {"variance": 0.0001, "modes": 8, "clusters": 50, "z_dim": 2, "d_act_dim": 200,
            "npts": 100_000, "batch_size": 100, "cluster_points": 10_000}
OFFICIAL_FILES = ("2d_mix/config.py", "2d_mix/inputs.py", "2d_mix/models/cluster.py",
                  "clusterers/selfcondgan.py", "gan_training/train.py")
PHASES = ("data", "labels", "d_step", "g_step")
PHASE_STEPS = 100  # official iterations timed part by part, after the rounds


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit code 2."""
    print(f"bench_official: {message}", file=sys.stderr)
    sys.exit(2)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer; valid: >= 1")
    return value


@contextlib.contextmanager
def cuda_is_cpu() -> Iterator[None]:
    """``Tensor.cuda()`` returns the tensor itself (the official code calls it)."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def import_official(root: Path) -> types.SimpleNamespace:
    """The official modules, imported from ``root`` as its script does (by ``sys.path``).

    Exits (code 2, one line) when ``root`` is not the official code or an import fails.
    """
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        fail(f"--official {root}: no {missing[0]} there; valid: a checkout of "
             "github.com/stevliu/self-conditioned-gan")
    try:
        import sklearn.utils.linear_assignment_  # noqa: F401  (removed in scikit-learn 0.23)
    except ImportError:
        from scipy.optimize import linear_sum_assignment

        def linear_assignment(cost: np.ndarray) -> np.ndarray:
            """The removed function's result: an (n, 2) array of matched (row, column)."""
            return np.stack(linear_sum_assignment(cost), 1)

        stub = types.ModuleType("sklearn.utils.linear_assignment_")
        stub.linear_assignment = linear_assignment  # type: ignore[attr-defined]
        sys.modules[stub.__name__] = stub
    # 2d_mix/train.py runs from 2d_mix/ with ../ and ../gan_training/models on its path
    for folder in (root, root / "2d_mix", root / "gan_training" / "models"):
        sys.path.insert(0, str(folder))
    names = ("config", "inputs", "clusterers", "gan_training.train")
    try:
        modules = {name: importlib.import_module(name) for name in names}
    except ImportError as exc:
        fail(f"--official {root}: importing its code failed: {exc}")
    for name, module in modules.items():
        if not Path(module.__file__ or "").resolve().is_relative_to(root.resolve()):
            fail(f"--official {root}: module {name!r} came from {module.__file__}, "
                 "not from the official code; valid: run without another such module on the path")
    return types.SimpleNamespace(
        config=modules["config"], inputs=modules["inputs"],
        clusterer_dict=modules["clusterers"].clusterer_dict,
        Trainer=modules["gan_training.train"].Trainer,
    )


class OfficialLoop:
    """The official ``2d_mix/train.py`` loop on the ring, built and stepped as its ``main()``."""

    def __init__(self, code: types.SimpleNamespace) -> None:
        o, cfg, device = OFFICIAL, code.config, torch.device("cpu")
        get_data = code.inputs.get_data_ring
        np.random.seed(SEED)  # its data come from numpy's and random's global generators
        random.seed(SEED)
        torch.manual_seed(SEED)
        self.batch = o["batch_size"]
        self.zdist = torch.distributions.Normal(torch.zeros(o["z_dim"], device=device),
                                                torch.ones(o["z_dim"], device=device))
        x_cluster, _ = cfg.get_test(get_data=get_data, batch_size=o["cluster_points"],
                                    variance=o["variance"], k_value=o["modes"], device=device)
        self.loader = cfg.get_dataset(get_data=get_data, batch_size=self.batch, npts=o["npts"],
                                      variance=o["variance"], k_value=o["modes"])
        self.g, self.d = cfg.get_models("standard", "conditional", o["clusters"], o["d_act_dim"],
                                        device)
        g_opt, d_opt = cfg.get_optimizers(self.g, self.d)
        with contextlib.redirect_stdout(io.StringIO()), cuda_is_cpu():  # its progress prints
            self.trainer = code.Trainer(self.g, self.d, g_opt, d_opt, gan_type="standard",
                                        reg_type="none", reg_param=0)
            self.clusterer = code.clusterer_dict["selfcondgan"](
                discriminator=self.d, k_value=o["clusters"], x_cluster=x_cluster)
            self.clusterer.recluster(discriminator=self.d)
        self.batches = self.epochs()
        self.it = 0
        self.losses = (float("nan"), float("nan"))

    def epochs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``for epoch in range(nepochs): for x_real, y in train_loader:``, without end."""
        while True:
            yield from self.loader

    def step(self) -> None:
        """One iteration of its loop (re-clustering, plots and evaluation left out)."""
        x_real, y = next(self.batches)
        z = self.zdist.sample((self.batch,))
        x_real, y = x_real.to("cpu"), y.to("cpu")
        y = self.clusterer.get_labels(x_real, y)
        dloss, _ = self.trainer.discriminator_trainstep(x_real, y, z)
        gloss = self.trainer.generator_trainstep(y, z)
        self.losses = (dloss, gloss)
        self.it += 1

    def train(self, steps: int) -> None:
        with cuda_is_cpu():
            for _ in range(steps):
                self.step()

    def phases(self, steps: int) -> dict[str, float]:
        """Median ms per iteration of each part of ``step`` over ``steps`` iterations."""
        times: dict[str, list[float]] = {name: [] for name in PHASES}
        with cuda_is_cpu():
            for _ in range(steps):
                t0 = time.perf_counter()
                x_real, y = next(self.batches)
                z = self.zdist.sample((self.batch,))
                t1 = time.perf_counter()
                y = self.clusterer.get_labels(x_real, y)
                t2 = time.perf_counter()
                self.trainer.discriminator_trainstep(x_real, y, z)
                t3 = time.perf_counter()
                self.trainer.generator_trainstep(y, z)
                t4 = time.perf_counter()
                for name, (a, b) in zip(PHASES, itertools.pairwise((t0, t1, t2, t3, t4)),
                                        strict=True):
                    times[name].append(1000 * (b - a))
        return {name: statistics.median(ts) for name, ts in times.items()}


def net_sizes(g: nn.Module, d: nn.Module) -> dict[str, Any]:
    """Parameter counts of G and D and the sorted list of their parameter shapes."""
    return {"g": sum(p.numel() for p in g.parameters()),
            "d": sum(p.numel() for p in d.parameters()),
            "shapes": sorted(tuple(p.shape) for net in (g, d) for p in net.parameters())}


def paired(times: dict[str, list[float]], a: str, b: str) -> dict[str, Any]:
    ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
    return {"paired_median": statistics.median(ratios), "paired": ratios,
            "of_medians": statistics.median(times[a]) / statistics.median(times[b])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=None,
                        help="a checkout of github.com/stevliu/self-conditioned-gan "
                             "(without it: harness vs. bare only)")
    parser.add_argument("--rounds", type=positive, default=12,
                        help="timed blocks per side (12: each order of 3 sides twice)")
    parser.add_argument("--block", type=positive, default=25, help="steps per block")
    parser.add_argument("--warmup", type=positive, default=25, help="untimed steps per side first")
    parser.add_argument("--threads", type=positive, default=None,
                        help="torch, OpenMP and BLAS threads (default: as found)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    code = None if args.official is None else import_official(args.official)
    limits = (contextlib.nullcontext() if args.threads is None
              else threadpool_limits(limits=args.threads))  # sklearn's OpenMP as well
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # its DataLoader, on CPU
    load_start = os.getloadavg()

    with limits:
        torch.manual_seed(SEED)
        trainer = harness_trainer("mlp")
        bare = BareLoop(trainer.run)
        difference = max_loss_difference(trainer, bare)
        sides: dict[str, Callable[[int], None]] = {
            "harness": lambda steps: train_harness(trainer, steps)}
        sizes = {"harness": net_sizes(trainer.run.generator, trainer.run.discriminator)}
        official = None
        if code is not None:
            official = OfficialLoop(code)
            sides["official"] = official.train
            sizes["official"] = net_sizes(official.g, official.d)
        sides["bare"] = bare.train
        for train in sides.values():
            train(args.warmup)
        orders = itertools.cycle(itertools.permutations(sides))
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name in next(orders):
                times[name].append(ms_per_step(sides[name], args.block))
        phases = None if official is None else official.phases(PHASE_STEPS)
        threads = torch.get_num_threads()  # leaving ``limits`` restores the libraries' own
        pools = threadpool_info()

    medians = {name: statistics.median(ts) for name, ts in times.items()}
    ratios = {"harness/bare": paired(times, "harness", "bare")}
    if official is not None:
        ratios["official/harness"] = paired(times, "official", "harness")
    results: dict[str, Any] = {
        "benchmark": "official", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "official": None if args.official is None else str(args.official.resolve()),
        "official_settings": OFFICIAL, "threads": threads,
        "batch_size": trainer.run.config.batch_size, "rounds": args.rounds,
        "block": args.block, "warmup": args.warmup, "net_sizes": sizes,
        "ms_per_step": times, "median_ms_per_step": medians, "ratios": ratios,
        "official_phases_ms": phases, "max_loss_difference_harness_bare": difference,
        "official_losses": None if official is None else official.losses,
        "threadpools": pools, "environment": environment(),
        "loadavg": {"start": load_start, "end": os.getloadavg()},
    }

    print(f"bench_official: ring, batch {results['batch_size']}, torch {torch.__version__}, "
          f"{results['threads']} thread(s), {args.rounds} rounds x {args.block} steps per side")
    print(f"{'nets':<9} {'G params':>9} {'D params':>9}")
    for name, size in sizes.items():
        print(f"{name:<9} {size['g']:>9} {size['d']:>9}")
    if official is None:
        print("official: skipped (no --official PATH)")
    else:
        same = sizes["official"]["shapes"] == sizes["harness"]["shapes"]
        print(f"same parameter shapes, harness and official: {same}")
    print(f"same math, harness and bare: max |loss difference| over 3 lock-step steps = "
          f"{difference:.2e}")
    print(f"{'side':<9} {'median':>8} {'min':>8} {'max':>8}  ms/step  {'it/s':>7}")
    for name, ts in times.items():
        print(f"{name:<9} {medians[name]:8.3f} {min(ts):8.3f} {max(ts):8.3f}  "
              f"        {1000 / medians[name]:7.1f}")
    for label, r in ratios.items():
        print(f"{label}: paired median {r['paired_median']:.3f} (rounds "
              f"{min(r['paired']):.3f}..{max(r['paired']):.3f}), ratio of medians "
              f"{r['of_medians']:.3f}")
    if phases is not None:
        print("official iteration, median ms: " + ", ".join(
            f"{name} {ms:.3f}" for name, ms in phases.items()))
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
