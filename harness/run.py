"""A built run: its config, components, networks and directory (``Run``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.api import (
    Augmentation,
    Backbone,
    Conditioner,
    Dataset,
    Discriminator,
    Generator,
    Loss,
    Metric,
    Models,
    Prior,
    Regularizer,
    StepTerms,
)
from harness.config import COMPONENT_FIELDS, RunConfig
from harness.manager import PluginManager

EVAL_BATCH = 10_000
"""Samples per forward pass of the evaluation generator."""
EVAL_LATENT_SEED, EVAL_LABEL_SEED = 10_000, 10_001
"""An evaluation draws z from the global RNG seeded with ``seed + EVAL_LATENT_SEED`` and the
labels from the step's label generator seeded with ``seed + EVAL_LABEL_SEED``
(``Trainer.evaluate``; ``harness sample`` draws alike)."""


@dataclass
class Run:
    """A fully built composition: components, networks and its directory."""

    config: RunConfig
    pm: PluginManager
    dataset: Dataset
    prior: Prior
    conditioner: Conditioner
    backbone: Backbone
    loss: Loss
    regularizer: Regularizer
    augmentation: Augmentation
    metrics: dict[str, Metric]
    generator: Generator
    discriminator: Discriminator
    device: torch.device
    resolved: dict[str, Any]
    ema_generator: Generator | None = None
    """Exponential moving average of G's weights (``--ema-decay``), used for evaluation."""
    directory: Path | None = None
    step: int = 0
    stop_requested: bool = False
    checkpoint_step: int | None = None
    """Step of the newest checkpoint in the run directory (None before the first)."""
    stop_signal: str | None = None
    """The signal that stopped the run (SIGINT for Ctrl-C, SIGTERM for kill / schedulers)."""
    timings: dict[str, float] = field(default_factory=dict)
    metric_errors: dict[str, str] = field(default_factory=dict)
    """Why a metric of the last evaluation has no value (``MetricError`` or non-finite)."""

    @property
    def eval_generator(self) -> Generator:
        """The generator samples and metrics use: the EMA copy when there is one."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Global torch RNG (CPU and the run's CUDA device) seeded with ``seed`` inside the
        block and restored after it: observers and metrics draw without perturbing training."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """Samples of ``eval_generator`` in eval mode for ``labels``, z drawn with ``seed``.

        Leaves the global RNG and the networks' training mode as they were, so observers
        (sample grids) do not perturb training.
        """
        generator = self.eval_generator
        was_training = generator.training
        with self.seeded(seed):
            generator.eval()
            try:
                labels = labels.to(self.device)
                z = self.prior.sample(len(labels), labels)
                return generator(z, self.net_labels(labels)).cpu()
            finally:
                generator.train(was_training)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records to be recognised as this run's (see ``load_checkpoint``)."""
        cfg = self.config
        return {
            "trajectory": cfg.trajectory_hash(),
            "seed": cfg.seed,
            "composition": {fld: getattr(cfg, fld) for fld in COMPONENT_FIELDS},
            "step": self.step,
            "run_id": self.directory.name if self.directory else None,
        }

    @property
    def models(self) -> Models:
        return Models(self.generator, self.discriminator, self.prior, self.dataset, self.device)

    @property
    def step_terms(self) -> list[StepTerms]:
        """The components that add terms to the training step, in the order they are called."""
        return [self.conditioner, self.regularizer, self.augmentation]

    def net_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels as the networks see them (all zeros when the conditioner only drives z)."""
        return labels if self.conditioner.conditions_networks else torch.zeros_like(labels)



def run_name(config: RunConfig) -> str:
    """The run directory's name: composition, seed and identity hash."""
    parts = (config.prior, config.cond, config.backbone, config.dataset, f"s{config.seed}")
    return "-".join((*parts, config.short_hash()))
