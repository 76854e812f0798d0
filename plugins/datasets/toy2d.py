"""2-D Gaussian mixtures: Liu et al. 2020's ring of 8 and grid of 25 (after PacGAN), and the
9-Gaussian toy dataset of GM-GAN (Ben-Yosef & Weinshall 2018)."""

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
        return grid_centers(self.options.side, 2.0)


def grid_centers(side: int, spacing: float) -> torch.Tensor:
    """(side**2, 2) float32 centres of a square grid with ``spacing``, centred on the origin;
    row-major in (x, y), so label i sits at column i // side, row i % side."""
    ticks = spacing * torch.arange(side, dtype=torch.float32)
    ticks -= ticks.mean()
    xx, yy = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)


class GMGANToyOptions(MixtureOptions):
    size: int = Field(5_000, ge=1, le=10_000_000, description="number of training points")
    std: float = Field(0.05, gt=0, le=1e6, description="std of each Gaussian mode")
    spacing: float = Field(
        2.0, gt=0, le=1e6, description="distance between neighbouring centres of the 3x3 grid"
    )


class GMGANToy(Mixture2D):
    """GM-GAN's toy dataset: 9 equal-weight Gaussians in 2-D, 5,000 points by default.

    Ben-Yosef & Weinshall 2018, "Gaussian Mixture Generative Adversarial Networks for Diverse
    Datasets, and the Unsupervised Clustering of Images" (arXiv 1808.10356), the datasets
    table of its experiments (as reproduced on slide 14 of K. W. Kim's 2020 presentation of
    the paper): "Toy-Dataset: points sampled from different Gaussians in the 2-D Euclidean
    space", 9 classes, dimension 2, 5,000 training samples, no test split. The paper shows its
    quality-diversity trade-off on it with K = 9 latent Gaussians (a figure, no table).

    The paper's text that could be reached gives neither the means nor the std. The centres
    here are the most common reading of "9 Gaussians in 2-D", a 3x3 grid: {-s, 0, s}^2 with
    ``spacing`` s = 2 (the spacing of ``grid``), and std 0.05 per coordinate (as ``grid``);
    both are options. These are a reading, not the authors' stated values.

    ``x``: (size, 2) float32 of unbounded Gaussian support, in practice each coordinate in
    [-spacing - 5 std, spacing + 5 std] ([-2.25, 2.25] by default); ``y``: (size,) int64
    mode labels in [0, 9), drawn uniformly, label i at centre ``grid_centers(3, spacing)[i]``.
    Same seed, same points. ``spec.modes`` gives the 9 centres and the std to ``modes_2d``.
    """

    Options = GMGANToyOptions

    def centers(self) -> torch.Tensor:
        return grid_centers(3, self.options.spacing)
