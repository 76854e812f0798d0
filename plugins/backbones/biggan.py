"""BigGAN-type nets (Brock et al. 2019) with a projection D that scores every class at once.

G: hierarchical z (one chunk for the 4x4 linear, one per up-ResBlock; z is used whole when
it has fewer dimensions than chunks), a shared class embedding, BatchNorm whose gains and
biases are linear in concat(shared embedding, z chunk), optional self-attention, and a
BN-ReLU-conv3-tanh output. D: down-ResBlocks (the first one "optimized"), optional
self-attention, ReLU, global sum pooling = h = D_f, and the projection head
``logits = psi(h) + h @ E.weight.T`` (one logit per class). Up/down blocks: log2(side / 4).
Orthogonal init; spectral norm in G and D. Blocks have 4 x ``width`` channels up to 32x32
(BigGAN's CIFAR layout, where ``width`` is 64), halving per doubling of resolution above;
the default ``width`` 16 is for CPU runs.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import pairwise

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.api import Backbone, DataSpec, Discriminator, Generator, Options
from harness.errors import ConfigError
from harness_plugins.backbones.layers import (
    DBlock,
    GBlock,
    image_size,
    initialize,
    spectral_norm_all,
)

INIT_TYPES = (nn.Conv2d, nn.Linear, nn.Embedding)


class BigGANOptions(Options):
    width: int = Field(16, ge=1, le=512, description="channel multiplier ch (BigGAN CIFAR: 64)")
    shared_dim: int = Field(128, ge=1, le=16_384, description="size of G's shared class embedding")
    attention: int = Field(
        0, ge=0, description="resolution of the self-attention block in G and D (0 = none)"
    )
    g_spectral_norm: bool = Field(True, description="spectral norm on G's layers")
    d_spectral_norm: bool = Field(True, description="spectral norm on D's layers")


def channels_at(resolution: int, width: int) -> int:
    """Block channels at ``resolution``: 4 x width up to 32x32, halving per doubling above."""
    return width * min(4, max(1, 128 // resolution))


class LinearBatchNorm(nn.Module):
    """BatchNorm with gain ``1 + W_g c`` and bias ``W_b c`` for a condition vector ``c``."""

    def __init__(self, channels: int, cond_dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Linear(cond_dim, channels, bias=False)
        self.bias = nn.Linear(cond_dim, channels, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gain, bias = 1 + self.gain(cond), self.bias(cond)
        return self.bn(x) * gain[:, :, None, None] + bias[:, :, None, None]


class SelfAttention(nn.Module):
    """SAGAN self-attention as in BigGAN: 2x2 max-pooled keys/values, gain ``gamma`` from 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        key, value = max(1, channels // 8), max(1, channels // 2)
        self.theta = nn.Conv2d(channels, key, 1, bias=False)
        self.phi = nn.Conv2d(channels, key, 1, bias=False)
        self.g = nn.Conv2d(channels, value, 1, bias=False)
        self.o = nn.Conv2d(value, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        theta = self.theta(x).flatten(2)
        phi = F.max_pool2d(self.phi(x), 2).flatten(2)
        g = F.max_pool2d(self.g(x), 2).flatten(2)
        beta = torch.softmax(theta.transpose(1, 2) @ phi, -1)
        return x + self.gamma * self.o((g @ beta.transpose(1, 2)).view(n, -1, h, w))


class BigGANGenerator(Generator):
    def __init__(
        self, z_dim: int, num_classes: int, channels: int, side: int, opts: BigGANOptions
    ) -> None:
        super().__init__()
        blocks = int(math.log2(side // 4))
        resolutions = [4 * 2**i for i in range(blocks + 1)]
        widths = [channels_at(r, opts.width) for r in resolutions]
        chunk = z_dim // (blocks + 1)
        self.z_split = [z_dim - chunk * blocks] + [chunk] * blocks
        self.shared = nn.Embedding(num_classes, opts.shared_dim)
        self.fc = nn.Linear(self.z_split[0], 16 * widths[0])
        norm = partial(LinearBatchNorm, cond_dim=opts.shared_dim + chunk)
        self.blocks = nn.ModuleList(GBlock(a, b, norm) for a, b in pairwise(widths))
        self.attention_after = resolutions.index(opts.attention) - 1 if opts.attention else -1
        self.attention = SelfAttention(widths[self.attention_after + 1]) if opts.attention else None
        self.out = nn.Sequential(
            nn.BatchNorm2d(widths[-1]),
            nn.ReLU(),
            nn.Conv2d(widths[-1], channels, 3, padding=1),
            nn.Tanh(),
        )
        initialize(self, nn.init.orthogonal_, INIT_TYPES)
        if opts.g_spectral_norm:
            spectral_norm_all(self, skip=(self.shared,))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        first, *chunks = z.split(self.z_split, 1)
        shared = self.shared(y)
        h = self.fc(first).view(len(z), -1, 4, 4)
        for i, (block, chunk) in enumerate(zip(self.blocks, chunks, strict=True)):
            h = block(h, torch.cat([shared, chunk], 1))
            if i == self.attention_after and self.attention is not None:
                h = self.attention(h)
        return self.out(h)


class BigGANDiscriminator(Discriminator):
    def __init__(self, num_classes: int, channels: int, side: int, opts: BigGANOptions) -> None:
        super().__init__()
        inputs = [side // 2**i for i in range(int(math.log2(side // 4)))]
        widths = [channels] + [channels_at(r, opts.width) for r in inputs]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(pairwise(widths)):
            layers.append(DBlock(a, b, down=True, first=i == 0))
            if inputs[i] // 2 == opts.attention:
                layers.append(SelfAttention(b))
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = widths[-1]
        self.psi = nn.Linear(self.feature_dim, 1)
        self.embed = nn.Embedding(num_classes, self.feature_dim)
        initialize(self, nn.init.orthogonal_, INIT_TYPES)
        if opts.d_spectral_norm:
            spectral_norm_all(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.blocks(x)).sum((2, 3))
        return self.psi(h) + h @ self.embed.weight.T, h

    def unary(self, features: torch.Tensor) -> torch.Tensor:
        """The projection's unconditional term psi(D_f), (n,): every logit is this plus
        ``<embed_k, D_f>`` (BigBiGAN's unary score, used by slcGAN)."""
        return self.psi(features).squeeze(1)


class BigGAN(Backbone):
    """BigGAN-type G (shared embedding, hierarchical z, conditional BN) / projection D."""

    Options = BigGANOptions
    run_defaults = {"dataset": "stacked_digits"}  # offline images when no --dataset is given

    def build(
        self, spec: DataSpec, num_classes: int, z_dim: int
    ) -> tuple[BigGANGenerator, BigGANDiscriminator]:
        channels, side = image_size("biggan", spec)
        valid = [2**i for i in range(3, int(math.log2(side)))]
        if self.options.attention and self.options.attention not in valid:
            raise ConfigError(
                f"backbone 'biggan': attention={self.options.attention} is not a feature "
                f"resolution of {side}x{side} images; use 0 (none) or one of "
                f"{', '.join(map(str, valid))}"
            )
        return (
            BigGANGenerator(z_dim, num_classes, channels, side, self.options),
            BigGANDiscriminator(num_classes, channels, side, self.options),
        )
