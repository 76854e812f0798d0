"""Blocks shared by the image backbones: shape check, init, spectral norm, residual blocks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from harness.api import DataSpec
from harness.errors import ConfigError

SIDES = (16, 32, 64, 128)
"""Image sides every image backbone supports: 4x4 base grid doubled 2 to 5 times."""

Norm = Callable[[int], nn.Module]
"""Builds a normalisation for ``channels`` whose forward is ``(x, cond) -> x``."""


def image_size(backbone: str, spec: DataSpec) -> tuple[int, int]:
    """``(channels, side)`` of square power-of-two images, else a one-line ``ConfigError``."""
    shape = tuple(spec.shape)
    if spec.is_image and shape[1] == shape[2] and shape[1] in SIDES and shape[0] >= 1:
        return shape[0], shape[1]
    sides = ", ".join(map(str, SIDES[:-1])) + f" or {SIDES[-1]}"
    hint = "" if spec.is_image else " (for flat data use: mlp)"
    raise ConfigError(
        f"backbone {backbone!r} needs square images of side {sides} (C, H, W); "
        f"dataset shape is {shape}{hint}"
    )


def initialize(
    module: nn.Module,
    init: Callable[[torch.Tensor], object],
    types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear),
) -> None:
    """Apply ``init`` to the weights of every layer of ``types`` in ``module``; zero biases."""
    for layer in module.modules():
        if isinstance(layer, types):
            init(layer.weight)
            if getattr(layer, "bias", None) is not None:
                nn.init.zeros_(layer.bias)


def spectral_norm_all(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """Put spectral norm on every conv, linear and embedding weight in ``module``.

    Call after ``initialize``: the power iteration starts from the weight it finds.
    """
    types = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)
    for layer in list(module.modules()):
        if isinstance(layer, types) and not any(layer is s for s in skip):
            spectral_norm(layer)


class BatchNorm(nn.BatchNorm2d):
    """Plain BatchNorm2d with the ``(x, cond)`` interface of conditional norms."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class GBlock(nn.Module):
    """Up-ResBlock: norm-ReLU-up-conv3-norm-ReLU-conv3 + up-conv1 shortcut (SNGAN, BigGAN)."""

    def __init__(self, in_ch: int, out_ch: int, norm: Norm) -> None:
        super().__init__()
        self.norm1, self.norm2 = norm(in_ch), norm(out_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, cond)), scale_factor=2.0)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), cond)))
        return h + F.interpolate(self.shortcut(x), scale_factor=2.0)  # = conv1(up(x)), 4x cheaper


class DBlock(nn.Module):
    """ResBlock of D: [ReLU]-conv3-ReLU-conv3-[avgpool] + [avgpool]-[conv1] shortcut.

    ``first`` is the "optimized" input block (no leading ReLU). The shortcut conv exists when
    shapes change; pooling before it equals pooling after it (both are linear), and is cheaper.
    """

    def __init__(self, in_ch: int, out_ch: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if down or in_ch != out_ch else nn.Identity()

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        return self.pool(h) + self.shortcut(self.pool(x))
