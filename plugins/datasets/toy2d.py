"""2-D Gaussian mixtures of Liu et al. 2020 (after PacGAN): ring of 8 and grid of 25."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from harness.api import DataLocation, Dataset, DataSpec, ModeSpec, Options


class MixtureOptions(Options):
    size: int = Field(100_000, ge=1, le=10_000_000, description="number of training points")
    std: float = Field(0.01, gt=0, le=1e6, description="std of each Gaussian mode")


class Mixture2D(Dataset):
    """Equal-weight 2-D Gaussian mixture with mode labels; points drawn once per seed."""

    Options = MixtureOptions

    def __init__(
        self, options: MixtureOptions, seed: int, location: DataLocation | None = None
    ) -> None:
        super().__init__(options, seed, location)
        centers = self.centers()
        generator = torch.Generator().manual_seed(seed)
        self.y = torch.randint(len(centers), (options.size,), generator=generator)
        noise = torch.randn(options.size, 2, generator=generator) * options.std
        self.x = centers[self.y] + noise
        self.spec = DataSpec(
            shape=(2,),
            num_classes=len(centers),
            has_labels=True,
            modes=ModeSpec(centers=centers, std=options.std),
        )

    def centers(self) -> torch.Tensor:  # pragma: no cover - abstract in spirit
        raise NotImplementedError


class RingOptions(MixtureOptions):
    modes: int = Field(8, ge=1, le=10_000, description="number of Gaussians on the circle")
    radius: float = Field(2.0, gt=0, le=1e6, description="radius of the circle")


class Ring(Mixture2D):
    """Ring: Gaussians evenly spaced on a circle (default 8, radius 2, std 0.01)."""

    Options = RingOptions

    def centers(self) -> torch.Tensor:
        angles = torch.arange(self.options.modes, dtype=torch.float32) * (
            2 * math.pi / self.options.modes
        )
        return self.options.radius * torch.stack([angles.cos(), angles.sin()], 1)


class GridOptions(MixtureOptions):
    std: float = Field(0.05, gt=0, le=1e6, description="std of each Gaussian mode")
    side: int = Field(5, ge=1, le=100, description="modes per side; centres at spacing 2, centred")


class Grid(Mixture2D):
    """Grid: side x side Gaussians at {-4, -2, 0, 2, 4}^2 by default (25 modes, std 0.05)."""

    Options = GridOptions

    def centers(self) -> torch.Tensor:
        ticks = 2.0 * torch.arange(self.options.side, dtype=torch.float32)
        ticks -= ticks.mean()
        xx, yy = torch.meshgrid(ticks, ticks, indexing="ij")
        return torch.stack([xx.flatten(), yy.flatten()], 1)
