"""The 2-D toy architecture of Liu et al. 2020 (after PacGAN): MLP G, maxout D."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.api import Backbone, DataSpec, Discriminator, Generator, Options


class MLPOptions(Options):
    g_width: int = Field(400, ge=1, description="G hidden width")
    g_layers: int = Field(4, ge=1, description="G hidden layers [Linear, BatchNorm, ReLU]")
    embed_dim: int = Field(32, ge=1, description="class embedding size (L2-normalised)")
    d_width: int = Field(200, ge=1, description="D maxout width")
    d_layers: int = Field(3, ge=1, description="D maxout layers")
    pieces: int = Field(5, ge=1, description="maxout pieces")


class Maxout(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, pieces: int) -> None:
        super().__init__()
        self.out_dim, self.pieces = out_dim, pieces
        self.linear = nn.Linear(in_dim, out_dim * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(-1, self.out_dim, self.pieces).amax(2)


class MLPGenerator(Generator):
    """concat(z, L2-normalised embedding(y)) -> layers x [Linear, BN, ReLU] -> Linear."""

    def __init__(self, z_dim: int, num_classes: int, out_dim: int, opts: MLPOptions) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, opts.embed_dim)
        layers: list[nn.Module] = []
        width = z_dim + opts.embed_dim
        for _ in range(opts.g_layers):
            layers += [nn.Linear(width, opts.g_width), nn.BatchNorm1d(opts.g_width), nn.ReLU()]
            width = opts.g_width
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        embedding = F.normalize(self.embedding(y), dim=1)
        return self.net(torch.cat([z, embedding], 1))


class MLPDiscriminator(Discriminator):
    """layers x Maxout -> one logit per class; D_f is the last maxout output."""

    def __init__(self, in_dim: int, num_classes: int, opts: MLPOptions) -> None:
        super().__init__()
        dims = [in_dim] + [opts.d_width] * opts.d_layers
        self.body = nn.Sequential(*(Maxout(a, b, opts.pieces) for a, b in pairwise(dims)))
        self.head = nn.Linear(opts.d_width, num_classes)
        self.feature_dim = opts.d_width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


class MLP(Backbone):
    """Small MLP G / maxout D for flat data such as the 2-D ring and grid."""

    Options = MLPOptions
    default_z_dim = 2

    def build(
        self, spec: DataSpec, num_classes: int, z_dim: int
    ) -> tuple[MLPGenerator, MLPDiscriminator]:
        data_dim = math.prod(spec.shape)
        return (
            MLPGenerator(z_dim, num_classes, data_dim, self.options),
            MLPDiscriminator(data_dim, num_classes, self.options),
        )
