"""DCGAN-type image nets as Liu et al. 2020 use them for stacked MNIST and CIFAR-10.

G: concat(z, L2-normalised class embedding) -> Linear to 4x4 -> BatchNorm, ReLU -> stride-2
ConvTranspose blocks (BatchNorm, ReLU) -> conv3 to C channels -> tanh. D: stride-2 4x4 convs
with LeakyReLU(0.2) down to 2x2 -> flatten = D_f -> one logit per class. Channels double
per halving of resolution, capped at 8 x ``width``: at 32x32 and ``width=64`` this is the
layout of the authors' ``dcgan_shallow`` (G 512-256-128-64, D 64-128-256-512, D_f 2048).
That code has no BatchNorm/ReLU after G's Linear and a BatchNorm on D's first conv; here
both follow DCGAN (Radford et al.) instead. The default ``width`` 16 is for CPU runs."""

from __future__ import annotations

import math
from functools import partial
from itertools import pairwise

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.api import Backbone, DataSpec, Discriminator, Generator, Options
from harness_plugins.backbones.layers import image_size, initialize


class DCGANOptions(Options):
    width: int = Field(
        16, ge=1, le=1024,
        description="base channels (G's last block, D's first conv); Liu et al.: 64",
    )
    embed_dim: int = Field(256, ge=1, le=16_384, description="class embedding size (L2-normalised)")
    d_batchnorm: bool = Field(True, description="BatchNorm in D after every conv but the first")


def dcgan_init(net: nn.Module) -> None:
    """DCGAN init: weights N(0, 0.02), BatchNorm gains N(1, 0.02), biases 0."""
    initialize(net, partial(nn.init.normal_, std=0.02))
    for layer in net.modules():
        if isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


class DCGANGenerator(Generator):
    channels_last_sampling = True  # 50k stacked-digit samples: 1.5x faster, bit-identical
    def __init__(
        self, z_dim: int, num_classes: int, channels: int, side: int, opts: DCGANOptions
    ) -> None:
        super().__init__()
        blocks = int(math.log2(side // 4))
        widths = [opts.width * min(8, 2 ** (blocks - i)) for i in range(blocks + 1)]
        self.embedding = nn.Embedding(num_classes, opts.embed_dim)
        self.fc = nn.Linear(z_dim + opts.embed_dim, widths[0] * 16, bias=False)
        layers: list[nn.Module] = [
            nn.Unflatten(1, (widths[0], 4, 4)),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        for a, b in pairwise(widths):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        embedding = F.normalize(self.embedding(y), dim=1)
        return self.net(self.fc(torch.cat([z, embedding], 1)))


class DCGANDiscriminator(Discriminator):
    def __init__(self, num_classes: int, channels: int, side: int, opts: DCGANOptions) -> None:
        super().__init__()
        convs = int(math.log2(side // 2))
        widths = [channels] + [opts.width * min(8, 2**i) for i in range(convs)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(widths)):
            norm = opts.d_batchnorm and i > 0
            layers.append(nn.Conv2d(a, b, 4, 2, 1, bias=not norm))
            layers += [nn.BatchNorm2d(b)] if norm else []
            layers.append(nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.feature_dim = widths[-1] * 4
        self.head = nn.Linear(self.feature_dim, num_classes)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class DCGAN(Backbone):
    """DCGAN-type G / multi-output D (Liu et al. 2020, stacked MNIST and CIFAR-10)."""

    Options = DCGANOptions
    run_defaults = {"dataset": "stacked_digits"}  # offline images when no --dataset is given

    def build(
        self, spec: DataSpec, num_classes: int, z_dim: int
    ) -> tuple[DCGANGenerator, DCGANDiscriminator]:
        channels, side = image_size("dcgan", spec)
        return (
            DCGANGenerator(z_dim, num_classes, channels, side, self.options),
            DCGANDiscriminator(num_classes, channels, side, self.options),
        )
