"""The 2-D toy architecture of Liu et al. 2020 (after PacGAN): MLP G, maxout D.

Any example shape works: G's output is reshaped to it (with tanh for images, whose range is
[-1, 1]) and D flattens its input, so the same nets make a classic MLP GAN on images.
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.api import Backbone, DataSpec, Discriminator, Generator, Options


class MLPOptions(Options):
    g_width: int = Field(400, ge=1, le=16_384, description="G hidden width")
    g_layers: int = Field(
        4, ge=1, le=64, description="G hidden layers [Linear, BatchNorm, ReLU]"
    )
    embed_dim: int = Field(32, ge=1, le=16_384, description="class embedding size (L2-normalised)")
    d_width: int = Field(200, ge=1, le=16_384, description="D maxout width")
    d_layers: int = Field(3, ge=1, le=64, description="D maxout layers")
    pieces: int = Field(5, ge=1, le=64, description="maxout pieces")


class Maxout(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, pieces: int) -> None:
        super().__init__()
        self.out_dim, self.pieces = out_dim, pieces
        self.linear = nn.Linear(in_dim, out_dim * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max, not amax: the same values, and its backward scatters to the arg-max instead of
        # masking every piece (they differ only on exact ties, where amax splits the gradient)
        return self.linear(x).view(-1, self.out_dim, self.pieces).max(2).values


class MLPGenerator(Generator):
    """concat(z, L2-normalised embedding(y)) -> layers x [Linear, BN, ReLU] -> Linear,
    reshaped to ``out_shape`` (tanh first for images)."""

    def __init__(
        self, z_dim: int, num_classes: int, out_shape: tuple[int, ...], opts: MLPOptions
    ) -> None:
        super().__init__()
        self.out_shape = out_shape
        self.image = len(out_shape) == 3
        self.embedding = nn.Embedding(num_classes, opts.embed_dim)
        layers: list[nn.Module] = []
        width = z_dim + opts.embed_dim
        for _ in range(opts.g_layers):
            layers += [nn.Linear(width, opts.g_width), nn.BatchNorm1d(opts.g_width), nn.ReLU()]
            width = opts.g_width
        layers.append(nn.Linear(width, math.prod(out_shape)))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        embedding = F.normalize(self.embedding(y), dim=1)
        x = self.net(torch.cat([z, embedding], 1))
        return (x.tanh() if self.image else x).view(-1, *self.out_shape)


class MLPDiscriminator(Discriminator):
    """flatten -> layers x Maxout -> one logit per class; D_f is the last maxout output."""

    def __init__(self, in_dim: int, num_classes: int, opts: MLPOptions) -> None:
        super().__init__()
        dims = [in_dim] + [opts.d_width] * opts.d_layers
        self.body = nn.Sequential(*(Maxout(a, b, opts.pieces) for a, b in pairwise(dims)))
        self.head = nn.Linear(opts.d_width, num_classes)
        self.feature_dim = opts.d_width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x.flatten(1))
        return self.head(features), features


class MLP(Backbone):
    """Small MLP G / maxout D for flat data such as the 2-D ring and grid."""

    Options = MLPOptions
    default_z_dim = 2

    def build(
        self, spec: DataSpec, num_classes: int, z_dim: int
    ) -> tuple[MLPGenerator, MLPDiscriminator]:
        return (
            MLPGenerator(z_dim, num_classes, tuple(spec.shape), self.options),
            MLPDiscriminator(math.prod(spec.shape), num_classes, self.options),
        )
