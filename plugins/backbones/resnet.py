"""SNGAN-style ResNet (Miyato et al. 2018, CIFAR-10 layout) with a multi-output D.

G: Linear z -> 4x4 -> up-ResBlocks (BatchNorm, class-conditional when num_classes > 1,
ReLU, nearest upsampling, learnable 1x1 shortcut) -> BN-ReLU-conv3-tanh. D: optimized
first block (down), down-ResBlocks to 8x8, two plain ResBlocks, ReLU, global sum pooling =
D_f -> one logit per class; spectral norm on every D layer (``spectral_norm``). SNGAN uses
256 (G) / 128 (D) channels; the default ``width`` 64 for both is for CPU runs (about 2.5 s
per training step at batch 64 on one thread; ``width`` 32 about 0.9 s).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.api import Backbone, DataSpec, Discriminator, Generator, Options
from harness_plugins.backbones.layers import (
    BatchNorm,
    DBlock,
    GBlock,
    image_size,
    initialize,
    spectral_norm_all,
)


class ResNetOptions(Options):
    width: int = Field(
        64, ge=1, le=1024, description="channels of every block in G and D (SNGAN: 256/128)"
    )
    spectral_norm: bool = Field(True, description="spectral norm on every layer of D")


class ClassBatchNorm(nn.Module):
    """BatchNorm with a per-class gain (init 1) and bias (init 0)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class ResNetGenerator(Generator):
    def __init__(self, z_dim: int, num_classes: int, channels: int, side: int, width: int) -> None:
        super().__init__()
        self.width = width
        self.fc = nn.Linear(z_dim, 16 * width)
        norm = partial(ClassBatchNorm, num_classes=num_classes) if num_classes > 1 else BatchNorm
        self.blocks = nn.ModuleList(
            GBlock(width, width, norm) for _ in range(int(math.log2(side // 4)))
        )
        self.out = nn.Sequential(
            nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, padding=1), nn.Tanh()
        )
        initialize(self, nn.init.xavier_uniform_)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.width, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return self.out(h)


class ResNetDiscriminator(Discriminator):
    def __init__(
        self, num_classes: int, channels: int, side: int, width: int, spectral_norm: bool
    ) -> None:
        super().__init__()
        downs = int(math.log2(side // 8))
        self.blocks = nn.Sequential(
            DBlock(channels, width, down=True, first=True),
            *(DBlock(width, width, down=True) for _ in range(downs - 1)),
            DBlock(width, width, down=False),
            DBlock(width, width, down=False),
        )
        self.head = nn.Linear(width, num_classes)
        self.feature_dim = width
        initialize(self, nn.init.xavier_uniform_)
        if spectral_norm:
            spectral_norm_all(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.relu(self.blocks(x)).sum((2, 3))
        return self.head(features), features


class ResNet(Backbone):
    """SNGAN-style ResNet G / spectrally normalised multi-output D."""

    Options = ResNetOptions
    run_defaults = {"dataset": "stacked_digits"}  # offline images when no --dataset is given

    def build(
        self, spec: DataSpec, num_classes: int, z_dim: int
    ) -> tuple[ResNetGenerator, ResNetDiscriminator]:
        channels, side = image_size("resnet", spec)
        opts = self.options
        return (
            ResNetGenerator(z_dim, num_classes, channels, side, opts.width),
            ResNetDiscriminator(num_classes, channels, side, opts.width, opts.spectral_norm),
        )
