"""Mode coverage of stacked digits (Liu et al. 2020, stacked MNIST protocol).

A pretrained digit classifier labels every channel of ``--eval-samples`` generated images
(official protocol: 50k); the channels' digits form a code in [0, 10**C) (channel 0 most
significant). *modes* counts the distinct codes seen; *rkl* is KL(p_gen || uniform over
10**C codes) of the code histogram, in nats (the key names of ``modes_2d``, so leaderboard
columns line up). *classifier_acc* is the classifier's held-out accuracy.

Generated images with NaN or infinity cannot be classified: the metric then fails with
``MetricError`` giving their count (no value is better than one over arbitrary pixels).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from harness.api import Dataset, DataSpec, Metric, Sampler, to_uint8
from harness.errors import MetricError
from harness_plugins.metrics.digit_classifier import (
    SourceOptions,
    classifier_path,
    classify_channels,
    load_classifier,
    require_classifier,
)

if TYPE_CHECKING:
    from harness.run import Run


def code_statistics(digits: torch.Tensor) -> dict[str, float]:
    """Modes seen and reverse KL (nats) to uniform of per-channel digits (n, C)."""
    channels = digits.shape[1]
    weights = 10 ** torch.arange(channels - 1, -1, -1)
    codes = (digits.long() * weights).sum(1)
    counts = torch.bincount(codes, minlength=10**channels).double()
    p = counts[counts > 0] / len(codes)
    return {
        "modes": float(len(p)),
        "rkl": float((p * (p.log() + channels * math.log(10))).sum()),
    }


class StackedModes(Metric):
    """modes / rkl / classifier_acc of digit combinations over ``--eval-samples`` images."""

    Options = SourceOptions
    better = {"modes": "higher", "rkl": "lower", "classifier_acc": None}  # the extractor's, not G's

    def __init__(self, options: SourceOptions) -> None:
        super().__init__(options)
        require_classifier(options.source)

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.domain == "digits"

    def check(self, dataset: Dataset) -> None:
        require_classifier(self.options.source, dataset.location.root)

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        path = classifier_path(self.options.source, run.config.data_root)
        model, accuracy = load_classifier(path)
        x = sample(run.config.eval_samples)[0]
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        if bad:
            raise MetricError(f"stacked_modes: {bad} of {len(x)} generated images are non-finite")
        images = to_uint8(x)
        digits = classify_channels(model.to(run.device), images, run.device)
        return {**code_statistics(digits), "classifier_acc": accuracy}
