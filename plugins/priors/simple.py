"""Label-independent priors: standard Gaussian and uniform."""

from __future__ import annotations

import torch
from pydantic import Field

from harness.api import Options, Prior


class Gaussian(Prior):
    """Standard normal N(0, I), whatever the label."""

    def __init__(self, options: Options, z_dim: int, num_classes: int) -> None:
        super().__init__(options, z_dim, num_classes)
        self.register_buffer("anchor", torch.zeros(()), persistent=False)  # tracks .to(device)

    def _device(self) -> torch.device:
        return self.anchor.device

    def sample(
        self, n: int, labels: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        return scale * torch.randn(n, self.z_dim, device=self._device())


class UniformOptions(Options):
    bound: float = Field(1.0, gt=0, description="z ~ U[-bound, bound]^d")


class Uniform(Gaussian):
    """Uniform on [-bound, bound]^d, whatever the label."""

    Options = UniformOptions

    def sample(
        self, n: int, labels: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        u = torch.rand(n, self.z_dim, device=self._device()) * 2 - 1
        return scale * self.options.bound * u
