"""Augmentations applied to every input of D, real and fake (``--augment``)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from harness.api import Augmentation, DataSpec, Options
from harness.errors import ConfigError

Policy = Literal["color", "translation", "cutout"]


class Identity(Augmentation):
    """D sees its inputs as they are (the default)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class DiffAugmentOptions(Options):
    policy: list[Policy] = Field(
        ["color", "translation", "cutout"], min_length=1,
        description="transformations, applied in this order",
    )
    translation: float = Field(
        0.125, ge=0, le=1, description="largest shift, as a fraction of the image side"
    )
    cutout: float = Field(
        0.5, gt=0, lt=1, description="side of the cut-out square / image side (below 1)"
    )


class DiffAugment(Augmentation):
    """Differentiable Augmentation (Zhao et al., NeurIPS 2020, §3 and Fig. 4): the same
    random, differentiable transformations of D's real and fake inputs in D's and G's
    updates, so D cannot overfit the few real images and G still receives gradients.

    Per example, drawn from the global torch RNG on the batch's device:
    ``color``: brightness + U[-0.5, 0.5], saturation x U[0, 2] around the channel mean,
    contrast x U[0.5, 1.5] around the image mean; ``translation``: an integer shift of up to
    ``translation`` x side in each direction, zero padding; ``cutout``: a square of
    ``cutout`` x side, centred anywhere in the image, set to 0. Images in [-1, 1] as G makes
    them; the output may leave that range, as in the paper. Raises ``ConfigError`` for data
    that are not images.
    """

    Options = DiffAugmentOptions

    def __init__(self, options: DiffAugmentOptions, spec: DataSpec) -> None:
        super().__init__(options, spec)
        if not spec.is_image:
            raise ConfigError(
                f"augment 'diffaug' needs images, the dataset's examples have shape "
                f"{tuple(spec.shape)} (valid: an image dataset, or --augment none)"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.options.policy:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def color(x: torch.Tensor) -> torch.Tensor:
        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype) * (high - low) + low

        x = x + uniform(-0.5, 0.5)
        mean = x.mean(1, keepdim=True)
        x = (x - mean) * uniform(0.0, 2.0) + mean
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) * uniform(0.5, 1.5) + mean

    def translation(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        ratio = self.options.translation
        most_y, most_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
        dy = torch.randint(-most_y, most_y + 1, (n, 1, 1), device=x.device)
        dx = torch.randint(-most_x, most_x + 1, (n, 1, 1), device=x.device)
        rows = torch.arange(h, device=x.device)[None, :, None] - dy  # source row per output pixel
        cols = torch.arange(w, device=x.device)[None, None, :] - dx
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)  # (n, h, w)
        batch = torch.arange(n, device=x.device)[:, None, None]
        moved = x[batch, :, rows.clamp(0, h - 1), cols.clamp(0, w - 1)]  # (n, h, w, c)
        return moved.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)

    def cutout(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        size_y, size_x = int(h * self.options.cutout + 0.5), int(w * self.options.cutout + 0.5)
        top = torch.randint(0, h, (n, 1, 1), device=x.device) - size_y // 2
        left = torch.randint(0, w, (n, 1, 1), device=x.device) - size_x // 2
        rows = torch.arange(h, device=x.device)[None, :, None] - top
        cols = torch.arange(w, device=x.device)[None, None, :] - left
        cut = (rows >= 0) & (rows < size_y) & (cols >= 0) & (cols < size_x)
        return x * (~cut)[:, None].to(x.dtype)
