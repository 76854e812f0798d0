"""Gaussian-mixture latent prior of GM-GAN (Ben-Yosef & Weinshall 2018)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from harness.api import Options, Prior


class GaussianMixtureOptions(Options):
    num_components: int = Field(
        10, ge=1, le=100_000, description="K, number of equal-weight Gaussians"
    )
    c: float = Field(1.0, gt=0, description="means drawn once from U[-c, c]^d")
    sigma: float = Field(0.1, gt=0, description="initial covariance sigma * I")
    learned: bool = Field(False, description="dynamic GM-GAN: learn means and A_k with G")


class GaussianMixture(Prior):
    """z ~ sum_k (1/K) N(mu_k, A_k A_k^T), A_k = sqrt(sigma) I unless ``learned``.

    A label picks its component when the conditioner has exactly K classes (the ``gmm``
    conditioner, or one Gaussian per class); otherwise components are drawn uniformly.
    Sampling with ``scale`` < 1 shrinks every component (quality-diversity trade-off).
    """

    Options = GaussianMixtureOptions

    def __init__(self, options: GaussianMixtureOptions, z_dim: int, num_classes: int) -> None:
        super().__init__(options, z_dim, num_classes)
        k, c = options.num_components, options.c
        means = (torch.rand(k, z_dim) * 2 - 1) * c
        scales = torch.eye(z_dim).repeat(k, 1, 1) * options.sigma**0.5
        if options.learned:
            self.means = nn.Parameter(means)
            self.scales = nn.Parameter(scales)
        else:
            self.register_buffer("means", means)
            self.register_buffer("scales", scales)

    @property
    def num_components(self) -> int:
        return self.options.num_components

    def components_for(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        if labels is not None and self.num_classes == self.num_components:
            return labels.to(self.means.device)
        return torch.randint(self.num_components, (n,), device=self.means.device)

    def sample(
        self, n: int, labels: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        k = self.components_for(n, labels)
        eps = torch.randn(n, self.z_dim, 1, device=self.means.device)
        return self.means[k] + scale * (self.scales[k] @ eps).squeeze(2)
