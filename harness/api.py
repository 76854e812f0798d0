"""The component contracts every plugin implements.

Each component class carries a pydantic ``Options`` model; its fields are the component's
configuration (``--prior-opt sigma=0.5``), validated before training starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from harness.config import no_bool_numbers

if TYPE_CHECKING:
    from harness.trainer import Run


class Options(BaseModel):
    """Base of every component's options: unknown keys, NaN, infinity and a boolean for a
    number are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _no_bool_numbers = model_validator(mode="before")(classmethod(no_bool_numbers))


class Component:
    """Mixin giving a component its ``Options`` model and a validated ``options`` attribute."""

    Options: ClassVar[type[Options]] = Options


# ----------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class ModeSpec:
    """Known mixture modes of a synthetic dataset: centres and per-coordinate std."""

    centers: torch.Tensor
    std: float


@dataclass(frozen=True)
class DataSpec:
    """What a backbone and the metrics need to know about a dataset."""

    shape: tuple[int, ...]
    """Shape of one example: ``(d,)`` for flat data, ``(channels, height, width)`` for images."""
    num_classes: int | None = None
    """Number of true classes / modes, when known."""
    has_labels: bool = False
    modes: ModeSpec | None = None
    domain: str | None = None
    """What the data depicts, for domain-specific metrics: ``"digits"`` means every channel
    holds one handwritten digit (MNIST, scikit-learn digits and their stacked variants)."""

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model-range images in [-1, 1] -> uint8 in [0, 255] (the format of image datasets)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1], the range generators produce."""
    return images.float().div(127.5).sub(1)


@dataclass(frozen=True)
class DataLocation:
    """Where file-backed datasets live (``--data-root``) and whether they may download."""

    root: Path = Path("data")
    download: bool = False


class Dataset(Component, torch.utils.data.Dataset):
    """An in-memory dataset: ``x`` (N, *shape), ``y`` (N,) long tensor or None.

    Flat data stores ``x`` as float. Images store ``x`` as uint8 (N, C, H, W) so that 100k
    RGB images fit in memory; ``batch`` turns them into the float range G produces.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    spec: DataSpec
    x_heldout: torch.Tensor | None = None
    """Real examples kept out of training, in the format of ``x`` (e.g. a test split), or None."""

    def __init__(
        self, options: Options, seed: int, location: DataLocation | None = None
    ) -> None:
        self.options = options
        self.seed = seed
        self.location = location or DataLocation()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.batch(torch.tensor([index]))[0], -1 if self.y is None else int(self.y[index])

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        """Examples at ``index`` as float in the networks' range ([-1, 1] for images)."""
        x = self.x[index]
        return from_uint8(x) if x.dtype == torch.uint8 else x


# ----------------------------------------------------------------------------- priors
class Prior(Component, nn.Module):
    """Latent prior p(z|y). May own parameters; they are trained with G."""

    def __init__(self, options: Options, z_dim: int, num_classes: int) -> None:
        nn.Module.__init__(self)
        self.options = options
        self.z_dim = z_dim
        self.num_classes = num_classes

    @abstractmethod
    def sample(
        self, n: int, labels: torch.Tensor | None = None, scale: float = 1.0
    ) -> torch.Tensor:
        """Draw ``n`` latents (n, z_dim); ``scale`` < 1 shrinks the spread (truncation-like)."""


# ----------------------------------------------------------------------------- backbones
class Generator(nn.Module):
    """G(z, y) -> x. ``y`` is a (n,) long tensor of class ids in [0, num_classes)."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Discriminator(nn.Module):
    """D(x) -> (logits (n, num_classes), features D_f (n, feature_dim))."""

    feature_dim: int

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


class Backbone(Component, ABC):
    """Builds a generator and a multi-output discriminator for a dataset."""

    default_z_dim: ClassVar[int] = 128

    def __init__(self, options: Options) -> None:
        self.options = options

    @abstractmethod
    def build(
        self, spec: DataSpec, num_classes: int, z_dim: int
    ) -> tuple[Generator, Discriminator]:
        """Return fresh (G, D) for data of ``spec.shape`` and ``num_classes`` classes."""


# ----------------------------------------------------------------------------- losses
class Loss(Component, ABC):
    """An adversarial loss on the logits of the sample's own class."""

    def __init__(self, options: Options) -> None:
        self.options = options

    @abstractmethod
    def discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's loss from real and fake logits (each (n,))."""

    @abstractmethod
    def generator(self, fake: torch.Tensor) -> torch.Tensor:
        """G's loss from fake logits (n,)."""


# ----------------------------------------------------------------------------- conditioners
@dataclass
class Models:
    """What a conditioner or metric may look at: the networks, prior and data of a run."""

    generator: Generator
    discriminator: Discriminator
    prior: Prior
    dataset: Dataset
    device: torch.device
    batch_size: int = 1000

    @torch.no_grad()
    def features(self, index: torch.Tensor) -> torch.Tensor:
        """D_f of the real examples at ``index`` (D in eval mode), in batches, on ``device``."""
        was_training = self.discriminator.training
        self.discriminator.eval()
        try:
            return torch.cat(
                [
                    self.discriminator(self.dataset.batch(chunk).to(self.device))[1]
                    for chunk in index.split(self.batch_size)
                ]
            )
        finally:
            self.discriminator.train(was_training)


@dataclass(frozen=True)
class BuildContext:
    """What a conditioner sees when it is built, before any network exists."""

    dataset: Dataset
    prior_name: str
    prior_options: Options
    seed: int


class Conditioner(Component, ABC):
    """Gives the labels y: for real batches, and P(c) for fake ones.

    ``num_classes == 1`` is a plain GAN. When ``conditions_networks`` is False the labels
    only drive the prior (e.g. GM-GAN's component index) and G, D are unconditional.
    """

    conditions_networks: ClassVar[bool] = True

    def __init__(self, options: Options, context: BuildContext) -> None:
        self.options = options
        self.context = context

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of labels this source produces."""

    def setup(self, models: Models) -> None:  # noqa: B027 - optional hook
        """Initial fit before the first step (e.g. the first clustering)."""

    @abstractmethod
    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Labels of the real examples at ``index`` with D features ``features``; pure."""

    def labels_for_real(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Labels for a real training batch; may also update state (online methods)."""
        return self.assign(index, features)

    @abstractmethod
    def class_weights(self) -> torch.Tensor:
        """P(c) for sampling fake labels, shape (num_classes,), on the CPU."""

    def sample_labels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` fake labels from P(c)."""
        weights = self.class_weights()
        if len(weights) == 1:
            return torch.zeros(n, dtype=torch.long)
        return torch.multinomial(weights, n, replacement=True, generator=generator)

    def update(self, step: int, models: Models) -> float | None:
        """Refit when the schedule says so; return the fraction of changed labels, else None."""
        return None

    def partition(self, models: Models, index: torch.Tensor) -> torch.Tensor:
        """This source's partition of real examples, for scoring against true labels."""
        return self.assign(index, models.features(index))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass


# ----------------------------------------------------------------------------- metrics
Sampler = Callable[[int], tuple[torch.Tensor, torch.Tensor]]
"""``sample(n) -> (x, y)``: n generated samples (on the CPU) and their labels."""


class Metric(Component, ABC):
    """Computes named numbers about a trained run; names say the protocol.

    ``__init__`` raises ``MetricUnavailable`` when something the metric needs (pretrained
    weights, data) is missing: a requested metric then fails before training starts, and a
    default one is skipped with that message.
    """

    default: ClassVar[bool] = True
    """Whether runs without ``--metrics`` include it (False for costly, opt-in metrics)."""

    def __init__(self, options: Options) -> None:
        self.options = options

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        """Whether the metric applies to data with this spec (default: always)."""
        return True

    def check(self, dataset: Dataset) -> None:  # noqa: B027 - optional hook
        """Raise ``ConfigError`` when the options cannot work on ``dataset`` (e.g. more IS
        splits than images). Called before the run directory exists; default: no check."""

    @abstractmethod
    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        """Return ``{metric_name: value}``, every value finite.

        Generated samples may hold NaN or infinity (a collapsing G): a metric must treat them
        explicitly (e.g. count them as low quality), or raise ``MetricError`` saying why it
        cannot be computed.
        """
