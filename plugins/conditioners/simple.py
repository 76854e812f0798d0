"""Label sources that ignore D: none (plain GAN), random labels, ground-truth labels."""

from __future__ import annotations

import torch
from pydantic import Field

from harness.api import BuildContext, Conditioner, Options, PairedFakesOptions
from harness.errors import ConfigError


class Unconditional(Conditioner):
    """One class for everything: a plain, unconditional GAN."""

    num_classes = 1

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(index), dtype=torch.long, device=features.device)

    def class_weights(self) -> torch.Tensor:
        return torch.ones(1)


class RandomOptions(PairedFakesOptions):
    k: int = Field(50, ge=1, le=1_000_000, description="number of random classes")


class RandomLabels(Conditioner):
    """k uniform random labels, drawn once per training example (a control for kmeans_d)."""

    Options = RandomOptions

    def __init__(self, options: RandomOptions, context: BuildContext) -> None:
        super().__init__(options, context)
        generator = torch.Generator().manual_seed(context.seed + 1)
        self.labels = torch.randint(options.k, (len(context.dataset),), generator=generator)

    @property
    def num_classes(self) -> int:
        return self.options.k

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.labels[index.cpu()].to(features.device)

    def class_weights(self) -> torch.Tensor:
        return torch.full((self.options.k,), 1.0 / self.options.k)


class GroundTruth(Conditioner):
    """The dataset's true labels (the class-conditional upper bound)."""

    Options = PairedFakesOptions

    def __init__(self, options: Options, context: BuildContext) -> None:
        super().__init__(options, context)
        dataset = context.dataset
        if dataset.y is None:
            raise ConfigError(
                "--cond ground_truth needs a dataset with labels; this dataset has none "
                "(valid: a labelled dataset, or another conditioner)"
            )
        self.labels = dataset.y
        self.counts = torch.bincount(dataset.y, minlength=dataset.spec.num_classes or 0)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.labels[index.cpu()].to(features.device)

    def class_weights(self) -> torch.Tensor:
        return self.counts.double() / self.counts.sum()
