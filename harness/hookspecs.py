"""Hook specifications of the ``harness`` pluggy project.

Registration hooks return ``{name: component}``, where a component is a class or a lazy
``"module:Class"`` string. Lifecycle hooks observe a run; they never decide the algorithm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from harness.run import Run

hookspec = pluggy.HookspecMarker("harness")

FAMILIES = (
    "priors", "conditioners", "backbones", "datasets", "metrics", "losses", "regularizers",
    "augmentations", "executors",
)


@hookspec
def harness_priors() -> dict[str, Any]:
    """Latent priors p(z|y), subclasses of ``harness.api.Prior``."""


@hookspec
def harness_conditioners() -> dict[str, Any]:
    """Conditioning sources giving labels y, subclasses of ``harness.api.Conditioner``."""


@hookspec
def harness_backbones() -> dict[str, Any]:
    """GAN architectures building (G, D), subclasses of ``harness.api.Backbone``."""


@hookspec
def harness_datasets() -> dict[str, Any]:
    """Training data, subclasses of ``harness.api.Dataset``."""


@hookspec
def harness_metrics() -> dict[str, Any]:
    """Evaluation metrics, subclasses of ``harness.api.Metric``."""


@hookspec
def harness_losses() -> dict[str, Any]:
    """Adversarial losses, subclasses of ``harness.api.Loss``."""


@hookspec
def harness_regularizers() -> dict[str, Any]:
    """Loss terms such as gradient penalties (``--reg``), subclasses of
    ``harness.api.Regularizer``."""


@hookspec
def harness_augmentations() -> dict[str, Any]:
    """Augmentations of D's inputs (``--augment``), subclasses of ``harness.api.Augmentation``."""


@hookspec
def harness_executors() -> dict[str, Any]:
    """Where a suite's runs execute (``harness suite --executor``), subclasses of
    ``harness.api.Executor``."""


@hookspec
def harness_run_started(run: Run) -> None:
    """A run's components are built and its directory exists; training is about to start."""


@hookspec
def harness_step_end(run: Run, step: int, losses: dict[str, Any]) -> None:
    """One training step finished; ``losses`` maps names to detached scalar tensors."""


@hookspec
def harness_labels_updated(run: Run, step: int, changed_fraction: float) -> None:
    """The conditioner re-partitioned the data (e.g. k-means re-clustering)."""


@hookspec
def harness_evaluated(run: Run, step: int, metrics: dict[str, float]) -> None:
    """Metrics were computed at ``step`` (every ``--eval-every`` steps and at the end)."""


@hookspec
def harness_run_finished(run: Run, metrics: dict[str, float]) -> None:
    """Evaluation finished and metrics were written."""
