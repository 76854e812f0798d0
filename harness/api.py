"""The component contracts every plugin implements.

Each component class carries a pydantic ``Options`` model; its fields are the component's
configuration (``--prior-opt sigma=0.5``), validated before training starts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from harness.config import no_bool_numbers

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.run import Run


class Options(BaseModel):
    """Base of every component's options: unknown keys, NaN, infinity and a boolean for a
    number are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _no_bool_numbers = model_validator(mode="before")(classmethod(no_bool_numbers))


class Component:
    """Mixin giving a component its ``Options`` model and a validated ``options`` attribute."""

    Options: ClassVar[type[Options]] = Options
    run_defaults: ClassVar[dict[str, Any]] = {}
    """Run settings (``RunConfig`` fields) the component's method uses when the config file
    and the flags leave them unset, e.g. slcGAN's ``{"d_steps": 2}``; a note says so."""


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

    channels_last_sampling: ClassVar[bool] = False
    """True when a channels-last copy of G gives bit-identical samples on the CPU and is
    faster there (DCGAN: oneDNN's transposed convolutions); evaluation then samples from
    one. Leave False unless both hold (ResNet / BigGAN differ in the last bits)."""

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class Discriminator(nn.Module):
    """D(x) -> (logits (n, num_classes), features D_f (n, feature_dim)).

    ``logits[:, k]`` scores x as a real example of class k; a probability vector p over the
    classes is scored by ``class_score`` as sum_k p_k logits[:, k].
    """

    feature_dim: int

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def unary(self, features: torch.Tensor) -> torch.Tensor | None:
        """The unconditional score of x from its features D_f, shape (n,), or None when D has
        none. A projection discriminator (Miyato & Koyama 2018) has one: its logits are
        ``unary + <embedding_k, D_f>``, and the unary term is BigBiGAN's image-only score."""
        return None


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
    """An adversarial loss on D's scores: each sample's score for its condition (see
    ``class_score``), or any other score such as D's unary one."""

    def __init__(self, options: Options) -> None:
        self.options = options

    @abstractmethod
    def discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """D's loss (a scalar) from real and fake scores (each (n,) float)."""

    @abstractmethod
    def generator(self, fake: torch.Tensor) -> torch.Tensor:
        """G's loss (a scalar) from fake scores (n,) float."""


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
    """What a conditioner sees when it is built, before G and D exist."""

    dataset: Dataset
    prior_name: str
    prior_options: Options
    seed: int
    device: torch.device = torch.device("cpu")
    """Where the run trains: a conditioner's own networks live here."""
    optimizer: OptimizerFactory = field(default_factory=lambda: adam)
    """Makes the optimiser of a component's own network, of the run's kind (``--optimizer``):
    ``optimizer(parameters, lr, betas)``; ``betas=None`` takes D's betas of the run."""


OptimizerFactory = Callable[
    [list[nn.Parameter], float, "tuple[float, float] | None"], torch.optim.Optimizer
]


def adam(
    parameters: list[nn.Parameter], lr: float, betas: tuple[float, float] | None = None
) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` (betas default (0.9, 0.999)): the factory outside a run."""
    return torch.optim.Adam(parameters, lr=lr, betas=betas or (0.9, 0.999))


# ----------------------------------------------------------------------------- training step
def class_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's score for its condition, (n,).

    ``logits`` (n, K) float. ``labels``: (n,) long class ids in [0, K), giving the logit of
    the sample's own class (the masked multi-output D of Liu et al. 2020); or (n, K) float
    probability vectors p, giving sum_k p_k logit_k, which for a projection D is its score
    for the soft condition p (slcGAN, Noroozi 2020 §3.2). Equal on one-hot vectors.
    """
    if labels.is_floating_point():
        return (logits * labels).sum(1)
    return logits.gather(1, labels[:, None]).squeeze(1)


@dataclass
class Scored:
    """One batch as the discriminator scored it."""

    x: torch.Tensor
    """The batch (n, *shape) before augmentation: real data, or G's samples."""
    labels: torch.Tensor
    """The condition D saw, as the networks see it: (n,) long ids or (n, K) probabilities."""
    logits: torch.Tensor
    """D's logits (n, K) on the augmented batch."""
    features: torch.Tensor
    """D_f (n, feature_dim) on the augmented batch."""
    discriminator: Discriminator = field(repr=False)
    index: torch.Tensor | None = None
    """Dataset indices (n,) of real examples (CPU, long); None for generated ones."""

    @property
    def score(self) -> torch.Tensor:
        """Each sample's score for its condition, (n,) (``class_score``)."""
        return class_score(self.logits, self.labels)

    def unary(self) -> torch.Tensor | None:
        """D's unconditional score (n,) (``Discriminator.unary``), or None when D has none."""
        return self.discriminator.unary(self.features)


class Step(Protocol):
    """What the training step offers the components that add terms to it (``StepTerms``)."""

    run: Run

    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch ``(index (n,) CPU long, x (n, *shape) on the device)``, drawn from
        the run's data stream."""

    def fake_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of the trained G with gradients, and their labels: y ~ P(c),
        z ~ p(z|y), from the run's label and latent streams."""

    def discriminate(
        self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> Scored:
        """D on the augmented ``x`` (``--augment``), scored for the condition ``labels``."""


class StepTerms:
    """Loss terms a component adds to the training step, and the update of its own networks.

    Every iteration updates D (``d_steps`` times), then G, then each component's own
    networks (``train_own``); the adversarial ``Loss`` gives the base terms of D's and G's
    losses and each component may add its own. Terms are scalar tensors with gradients;
    the trainer adds them to the loss of the network being updated and logs each (detached)
    under its key, so keys must be distinct across components (prefix them: ``d_r1``).
    Every hook is optional; the defaults add nothing.
    """

    needs_real_grad: ClassVar[bool] = False
    """Whether real batches must require gradients (a gradient penalty on reals, e.g. R1):
    ``Scored.x`` of real batches then has ``requires_grad``."""

    def d_terms(self, real: Scored, fake: Scored, step: Step) -> dict[str, torch.Tensor]:
        """Terms added to D's loss for one real and one (detached) fake batch."""
        return {}

    def g_terms(self, fake: Scored, step: Step) -> dict[str, torch.Tensor]:
        """Terms added to G's loss for G's batch (``fake.x`` carries G's gradients)."""
        return {}

    def train_own(self, step: Step) -> dict[str, torch.Tensor]:
        """Update the component's own networks once per iteration, after G; return the
        detached losses to log."""
        return {}


# ----------------------------------------------------------------------------- regularizers
class Regularizer(Component, StepTerms):
    """Adds terms to D's and/or G's loss (``--reg``), e.g. a gradient penalty."""

    def __init__(self, options: Options, spec: DataSpec) -> None:
        self.options = options
        self.spec = spec


class Augmentation(Component, StepTerms):
    """Transforms every input of D, real and fake alike, in the D and G steps (``--augment``).

    Must be differentiable (G's gradients flow through it), draw its randomness from the
    global torch RNG on the batch's device, and keep the batch's shape, dtype and device.
    """

    def __init__(self, options: Options, spec: DataSpec) -> None:
        self.options = options
        self.spec = spec

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented batch, (n, *shape) float, same device."""


class PairedFakesOptions(Options):
    """Options of a conditioner whose fakes may take the real batch's labels."""

    fake_labels: Literal["real_batch", "prior"] = Field(
        "real_batch", description="labels of the fakes scored beside a real batch: its own "
        "labels (the official Self-Conditioned GAN code) or y ~ P(c) drawn afresh")


class Conditioner(Component, StepTerms, ABC):
    """Gives the labels y: for real batches, and P(c) for fake ones.

    ``num_classes == 1`` is a plain GAN. When ``conditions_networks`` is False the labels
    only drive the prior (e.g. GM-GAN's component index) and G, D are unconditional. A
    conditioner may own networks and add loss terms to the step (``StepTerms``), as slcGAN's
    clustering network does; its ``state_dict`` must then hold them and their optimisers.
    """

    conditions_networks: ClassVar[bool] = True

    def __init__(self, options: Options, context: BuildContext) -> None:
        self.options = options
        self.context = context

    @property
    @abstractmethod
    def num_classes(self) -> int:
        """Number of labels this source produces."""

    def bind(self, models: Models) -> None:  # noqa: B027 - optional hook
        """Called once when the run is built, after G and D exist and before ``setup`` or
        ``load_state_dict``. The networks are the run's own (a resumed run's hold the
        checkpoint's weights once it is loaded): a conditioner that must rebuild something
        shaped like them from its state (``kmeans_d``'s frozen copy of D) may keep ``models``."""

    def setup(self, models: Models) -> None:  # noqa: B027 - optional hook
        """Initial fit before the first step (e.g. the first clustering)."""

    @abstractmethod
    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Labels of the real examples at ``index`` with D features ``features``; pure."""

    def labels_for_real(
        self, index: torch.Tensor, features: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """The condition of a real training batch: (n,) long labels, or (n, num_classes)
        float probability vectors (rows summing to 1), on ``features``' device, without
        gradients. ``index`` (n,) dataset indices, ``features`` D_f (detached), ``x`` the
        batch (not augmented). May update state (online methods)."""
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

    def fake_labels(self, real: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Labels of the n fakes scored beside a real batch whose condition is ``real`` (n,)
        long or (n, num_classes) float: y ~ P(c) (``sample_labels``), or, with the option
        ``fake_labels = "real_batch"`` (``PairedFakesOptions``) and hard labels, the real
        batch's own (n,) labels, as Liu et al.'s official code does in D's step and G's
        (stevliu/self-conditioned-gan, 2d_mix/train.py: G(z, y) with the real batch's y):
        the same P(c) in expectation, with every class's reals and fakes in one batch."""
        if getattr(self.options, "fake_labels", "prior") == "real_batch" and real.dim() == 1:
            return real
        return self.sample_labels(len(real), generator)

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
    better: ClassVar[dict[str, Literal["higher", "lower"] | None]] = {}
    """Which way each of its keys improves, as ``fnmatch`` patterns of the keys it returns,
    first match wins: e.g. ``{"*_std": None, "fid_*": "lower", "is_*": "higher"}``. A key
    that matches none, or a None pattern (a spread such as ``kid_*_std``), has no direction."""

    def __init__(self, options: Options) -> None:
        self.options = options

    @classmethod
    def direction(cls, key: str) -> Literal["higher", "lower"] | None:
        """``"higher"`` or ``"lower"`` if that is better for ``key``, else None."""
        return next((way for pattern, way in cls.better.items() if fnmatch(key, pattern)), None)

    def resolved(self) -> dict[str, Any]:
        """The options as recorded in ``config.json``: what defines the numbers, as JSON.
        Override to record a file by its content (a hash) rather than its local path, so
        that runs on machines with different caches still aggregate."""
        return self.options.model_dump(mode="json")

    def keys(self, config: RunConfig) -> set[str] | None:
        """The keys ``compute`` will return for a run with ``config``, when the metric knows
        them before computing (the FID family: ``fid_digits_500`` for 500 samples); None, the
        default, when it does not. ``--best-metric`` is checked against them before the run
        directory exists."""
        return None

    @classmethod
    def option_defaults(cls, config: RunConfig) -> dict[str, Any]:
        """Options the metric derives from the run's settings where ``--metric-opt`` gives
        none, e.g. the FID family's ``samples = min(10000, config.eval_samples)``; recorded
        in ``config.json`` like every resolved option. Default: none."""
        return {}

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


# ----------------------------------------------------------------------------- executors
class Executor(Component, ABC):
    """Where the runs of a suite execute: child processes, a Ray cluster, Slurm, ...

    The suite hands ``submit`` one ``harness.jobs.Job`` at a time and waits on the returned
    ``concurrent.futures.Future``, whose result is the ``harness.jobs.Outcome`` of
    ``harness.jobs.run_job(job)`` run wherever the executor runs it. The job's run
    directory (under the results folder in ``Job.config["out"]``, which must be reachable
    from the workers) is the only thing passed back: an executor never writes results.

    ``jobs`` is ``--jobs``: how many runs may train at once (None: the executor's choice).
    ``threads`` is how many CPU threads each run should use; the suite writes it into every
    job's config. ``log_dir`` is a folder for the executor's own files (e.g. Slurm logs).
    """

    extra: ClassVar[str | None] = None
    """The pip extra that installs the engine (``ray`` for ``gan-harness[ray]``), if any."""
    max_jobs: ClassVar[int | None] = None
    """The most runs it can run at once, if bounded (``local``: 1); ``--jobs`` is checked
    against it before anything runs."""

    def __init__(self, options: Options, jobs: int | None, log_dir: Path) -> None:
        self.options = options
        self.jobs = jobs
        self.log_dir = log_dir

    @property
    def slots(self) -> int:
        """How many jobs run at once (the progress display's "running" bound)."""
        return self.jobs or 1

    @property
    def threads(self) -> int | None:
        """CPU threads per run (None: torch's default)."""
        return None

    @abstractmethod
    def submit(self, job: Any) -> Any:
        """Start ``job`` (a ``harness.jobs.Job``); return a ``concurrent.futures.Future`` of
        its ``Outcome``. An error of the engine itself (not of the run) may be the future's
        exception."""

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Ask every running job to stop at its next step boundary (checkpointing, status
        ``interrupted``) and drop the jobs not yet started. Called once on Ctrl-C/SIGTERM."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine (processes, connections). Called once, always."""
