"""GM-GAN (Ben-Yosef & Weinshall 2018): the label is the latent mixture component."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from pydantic import Field
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from harness.api import BuildContext, Conditioner, Models, Options
from harness.errors import ConfigError, MetricError


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
        """Algorithm 2; ``MetricError`` when G's samples are non-finite."""
        m = self.options.samples_per_component
        labels = torch.arange(self.components, device=models.device).repeat_interleave(m)
        z = models.prior.sample(len(labels), labels)
        fake = torch.cat(
            [
                models.generator(zc, torch.zeros_like(yc))
                for zc, yc in zip(
                    z.split(models.batch_size), labels.split(models.batch_size), strict=True
                )
            ]
        )
        bad = int((~fake.flatten(1).isfinite().all(1)).sum())
        if bad:
            raise MetricError(f"the gmm partition (Algorithm 2): {bad} of {len(fake)} generated "
                              "samples are non-finite, so its classifier cannot be trained")
        classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=0)
        with warnings.catch_warnings():  # an unconverged classifier still gives a partition
            warnings.simplefilter("ignore", ConvergenceWarning)
            classifier.fit(fake.flatten(1).cpu().numpy(), labels.cpu().numpy())
        real = models.dataset.batch(index.cpu()).flatten(1).numpy()
        return torch.as_tensor(classifier.predict(real).astype(np.int64))
