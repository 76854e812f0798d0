"""GM-GAN (Ben-Yosef & Weinshall 2018): the label is the latent mixture component."""

from __future__ import annotations

import torch
from pydantic import Field

from harness.analysis import mixture_partition
from harness.api import BuildContext, Conditioner, Models, Options
from harness.errors import ConfigError


class MixtureOptions(Options):
    samples_per_component: int = Field(
        1000, ge=1, le=100_000,
        description="M, generated samples per Gaussian to fit the real-data classifier",
    )


class MixtureComponent(Conditioner):
    """Fake labels are uniform component ids fed to the mixture prior; G and D stay
    unconditional. Real data is partitioned by Algorithm 2: a classifier trained on
    generated samples labelled by their Gaussian, applied to real examples."""

    Options = MixtureOptions
    conditions_networks = False

    def __init__(self, options: MixtureOptions, context: BuildContext) -> None:
        super().__init__(options, context)
        components = getattr(context.prior_options, "num_components", None)
        if components is None:
            raise ConfigError(
                f"--cond gmm needs a mixture prior, got --prior {context.prior_name} "
                "(valid: a prior with a num_components option, e.g. gmm)"
            )
        self.components: int = components

    @property
    def num_classes(self) -> int:
        return self.components

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(index), dtype=torch.long, device=features.device)

    def class_weights(self) -> torch.Tensor:
        return torch.full((self.components,), 1.0 / self.components)

    @torch.no_grad()
    def partition(self, models: Models, index: torch.Tensor) -> torch.Tensor:
        """Algorithm 2 (``harness.analysis``); ``MetricError`` when G's samples are non-finite."""
        predicted = mixture_partition(
            models.prior,
            lambda z, components: models.generator(z, torch.zeros_like(components)),
            self.components,
            self.options.samples_per_component,
            models.dataset.batch(index.cpu()),
            models.batch_size,
            models.device,
        )
        return torch.as_tensor(predicted)
