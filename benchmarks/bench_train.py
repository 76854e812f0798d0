"""Training-loop overhead: the harness's ``Trainer.train`` vs. a bare PyTorch loop.

Both sides train the same networks, started from the same weights, on the same data with the
same batch, Adam settings, non-saturating loss and label lookup: ``--backbone mlp`` on the
2-D ring (batch 100), or ``--backbone dcgan`` on stacked digits (3x32x32, batch 64, reported
also as images/s). The harness side is built exactly as ``harness run`` builds it (plugins,
hooks, conditioner; no run directory, no progress bar); the bare side is a plain loop over
tensors with copies of the same G and D. A few lock-step steps first check that both compute
the same losses; then blocks of steps alternate between the two sides and the per-block
ms/step are compared.

    .venv/bin/python benchmarks/bench_train.py [--backbone dcgan] [--rounds 20] [--block 25]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.build import build_run
from harness.config import make_config
from harness.manager import get_plugin_manager
from harness.results import atomic_write_json, environment
from harness.run import Run
from harness.trainer import Trainer

LR = 1e-4
BETAS = (0.8, 0.999)
SEED = 0
CHECK_STEPS = 3
COMMON = {
    "prior": "gaussian", "cond": "kmeans_d", "loss": "bce", "seed": SEED, "steps": 1,
    "lr_g": LR, "lr_d": LR, "betas": BETAS, "progress": False,
    "metrics": ["cluster_agreement"],  # built (a run needs one), never computed here
    "cond_options": {"subset": 2000, "n_init": 1, "recluster_every": 0},
}
CONFIGS = {
    "mlp": {**COMMON, "backbone": "mlp", "dataset": "ring", "batch_size": 100},
    "dcgan": {**COMMON, "backbone": "dcgan", "dataset": "stacked_digits", "batch_size": 64,
              "dataset_options": {"size": 10_000}, "cond_options": {**COMMON["cond_options"],
                                                                    "k": 10}},
}


class BareLoop:
    """``Trainer.step``'s math on plain tensors: no plugins, hooks, conditioner or config."""

    def __init__(self, run: Run) -> None:
        self.batch = run.config.batch_size
        self.z_dim = run.resolved["z_dim"]
        self.g = copy.deepcopy(run.generator)  # same classes and initial weights; the same
        # optimiser implementation as the harness (fused: harness.step.optimizer_factory)
        self.d = copy.deepcopy(run.discriminator)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=LR, betas=BETAS, fused=True)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=LR, betas=BETAS, fused=True)
        self.data = run.dataset.x.clone()  # uint8 for images, float for 2-D points
        self.labels = run.conditioner.labels.clone()  # fixed label of every real example
        self.weights = run.conditioner.class_weights().clone()  # P(c) for fake labels
        self.data_rng = torch.Generator().manual_seed(SEED + 4)  # as Trainer's
        self.label_rng = torch.Generator().manual_seed(SEED + 5)

    def fake(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.batch
        labels = torch.multinomial(self.weights, n, replacement=True, generator=self.label_rng)
        return self.g(torch.randn(n, self.z_dim), labels), labels

    def real(self, index: torch.Tensor) -> torch.Tensor:
        x = self.data[index]
        return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x

    def step(self) -> dict[str, torch.Tensor]:
        index = torch.randint(len(self.data), (self.batch,), generator=self.data_rng)
        real_logits, _ = self.d(self.real(index))
        with torch.no_grad():
            fake, fake_labels = self.fake()
        fake_logits, _ = self.d(fake)
        real_own = real_logits.gather(1, self.labels[index][:, None]).squeeze(1)
        fake_own = fake_logits.gather(1, fake_labels[:, None]).squeeze(1)
        d_loss = F.softplus(-real_own).mean() + F.softplus(fake_own).mean()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        fake, fake_labels = self.fake()
        self.d.requires_grad_(False)  # G's step needs D's input gradients only
        logits, _ = self.d(fake)
        self.d.requires_grad_(True)
        g_loss = F.softplus(-logits.gather(1, fake_labels[:, None]).squeeze(1)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    def train(self, steps: int) -> None:
        self.g.train()
        self.d.train()
        for _ in range(steps):
            self.step()


def harness_trainer(backbone: str) -> Trainer:
    """A Trainer built as ``harness run`` builds it, with its conditioner set up."""
    run = build_run(make_config(CONFIGS[backbone]), get_plugin_manager())
    trainer = Trainer(run)
    trainer.setup()
    return trainer


def train_harness(trainer: Trainer, steps: int) -> None:
    """``steps`` more steps of the real loop (``Trainer.train`` continues from ``run.step``)."""
    trainer.run.config.steps = trainer.run.step + steps
    trainer.train()


def max_loss_difference(trainer: Trainer, bare: BareLoop) -> float:
    """Largest |loss difference| over lock-step steps from the same state and seeds."""
    worst = 0.0
    for i in range(CHECK_STEPS):
        torch.manual_seed(1000 + i)
        ours = trainer.step()
        torch.manual_seed(1000 + i)
        theirs = bare.step()
        worst = max(worst, *(abs(float(ours[k] - theirs[k])) for k in ours))
    return worst


def ms_per_step(train: Callable[[int], None], steps: int) -> float:
    start = time.perf_counter()
    train(steps)
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=sorted(CONFIGS), default="mlp",
                        help="mlp on the 2-D ring, or dcgan on stacked digits")
    parser.add_argument("--rounds", type=int, default=20, help="alternating blocks per side")
    parser.add_argument("--block", type=int, default=25, help="steps per block")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps per side first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    load_start = os.getloadavg()

    trainer = harness_trainer(args.backbone)
    batch = trainer.run.config.batch_size
    bare = BareLoop(trainer.run)
    difference = max_loss_difference(trainer, bare)
    sides: dict[str, Callable[[int], None]] = {
        "harness": lambda steps: train_harness(trainer, steps), "bare": bare.train,
    }
    for train in sides.values():
        train(args.warmup)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in sides if r % 2 == 0 else reversed(sides):  # alternate who goes first
            times[name].append(ms_per_step(sides[name], args.block))

    paired = [h / b for h, b in zip(times["harness"], times["bare"], strict=True)]
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    results: dict[str, Any] = {
        "benchmark": "train", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backbone": args.backbone, "threads": torch.get_num_threads(), "batch_size": batch,
        "images_per_s": {name: 1000 * batch / ms for name, ms in medians.items()},
        "rounds": args.rounds,
        "block": args.block, "warmup": args.warmup, "ms_per_step": times,
        "median_ms_per_step": medians, "ratio_paired_median": statistics.median(paired),
        "ratio_paired": paired, "ratio_of_medians": medians["harness"] / medians["bare"],
        "max_loss_difference": difference, "environment": environment(),
        "loadavg": {"start": load_start, "end": os.getloadavg()},
    }

    print(f"bench_train: {args.backbone}, torch {torch.__version__}, {results['threads']} "
          f"thread(s), batch {batch}, {args.rounds} rounds x {args.block} steps per side")
    print(f"same math: max |loss difference| over {CHECK_STEPS} lock-step steps = {difference:.2e}")
    print(f"{'side':<8} {'median':>8} {'min':>8} {'max':>8}  ms/step  {'samples/s':>9}")
    for name, ts in times.items():
        print(f"{name:<8} {medians[name]:8.3f} {min(ts):8.3f} {max(ts):8.3f}  "
              f"        {results['images_per_s'][name]:9.1f}")
    print(f"harness/bare: paired median {results['ratio_paired_median']:.3f} "
          f"(rounds {min(paired):.3f}..{max(paired):.3f}), "
          f"ratio of medians {results['ratio_of_medians']:.3f}")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    if args.json is not None:
        atomic_write_json(args.json, results)


if __name__ == "__main__":
    main()
