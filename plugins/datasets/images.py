"""scikit-learn's digits as 32x32 images, alone and stacked three to an RGB image (offline)."""

from __future__ import annotations

import torch
from pydantic import Field

from harness.api import DataLocation, Dataset, DataSpec, Options
from harness_plugins.datasets.digits import load_digits_32

DIGITS_SPEC = DataSpec(shape=(1, 32, 32), num_classes=10, has_labels=True, domain="digits")
STACKED_SPEC = DataSpec(shape=(3, 32, 32), num_classes=1000, has_labels=True, domain="digits")
"""Specs of single digits and of digit triples (MNIST and scikit-learn digits alike)."""
PLACES = torch.tensor([100, 10, 1])
"""Weights turning the three channel digits (a, b, c) into the stacked label 100a + 10b + c."""


def holdout_split(
    n: int, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)``: sorted (kept, held-out) indices, ``round(n * fraction)``
    held out."""
    permutation = torch.randperm(n, generator=generator)
    held = round(n * fraction)
    return permutation[held:].sort().values, permutation[:held].sort().values


def stack_digits(
    images: torch.Tensor, labels: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``size`` RGB images whose channels are independent uniform draws from the one-channel
    ``images`` (M, 1, H, W): returns images (size, 3, H, W), labels 100a + 10b + c and the
    (size, 3) indices of the digit in each channel."""
    triples = torch.randint(len(images), (size, 3), generator=generator)
    flat = images.flatten(1).index_select(0, triples.flatten())  # 2x faster than images[triples]
    stacked = flat.view(size, 3, *images.shape[2:])
    return stacked, (labels[triples] * PLACES).sum(1), triples


class DigitsOptions(Options):
    heldout_fraction: float = Field(
        0.1, ge=0, lt=1, description="fraction of the 1797 digits kept out of training (seeded)"
    )


class Digits(Dataset):
    """scikit-learn's 1797 handwritten digits, 1x32x32, labels 0-9; a seeded held-out split."""

    Options = DigitsOptions

    def __init__(
        self, options: DigitsOptions, seed: int, location: DataLocation | None = None
    ) -> None:
        super().__init__(options, seed, location)
        images, labels = load_digits_32()
        kept, held = holdout_split(
            len(images), options.heldout_fraction, torch.Generator().manual_seed(seed)
        )
        self.x, self.y = images[kept], labels[kept]
        self.x_heldout = images[held] if len(held) else None
        self.spec = DIGITS_SPEC


class StackedDigitsOptions(DigitsOptions):
    size: int = Field(
        100_000, ge=1, le=1_000_000, description="number of training triples (stacked MNIST: 100k)"
    )
    heldout_size: int = Field(
        1000, ge=1, le=1_000_000, description="held-out triples, built only from held-out digits"
    )


class StackedDigits(Dataset):
    """Three scikit-learn digits as the R, G, B channels: 1000 modes, label 100a + 10b + c.

    Each channel is an independent uniform draw from the training digits (the same split as
    ``digits`` with this seed); ``triples`` holds their indices into those digits.
    """

    Options = StackedDigitsOptions

    def __init__(
        self, options: StackedDigitsOptions, seed: int, location: DataLocation | None = None
    ) -> None:
        super().__init__(options, seed, location)
        images, labels = load_digits_32()
        generator = torch.Generator().manual_seed(seed)
        kept, held = holdout_split(len(images), options.heldout_fraction, generator)
        self.x, self.y, self.triples = stack_digits(
            images[kept], labels[kept], options.size, generator
        )
        self.x_heldout = (
            stack_digits(images[held], labels[held], options.heldout_size, generator)[0]
            if len(held)
            else None
        )
        self.spec = STACKED_SPEC

