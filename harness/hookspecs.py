"""Hook specifications of the ``harness`` pluggy project.

Registration hooks take no arguments and return ``{name: component}``, where a component is
a subclass of the family's base class or a lazy ``"module:Class"`` string naming one.
Lifecycle hooks observe a run; they never decide the algorithm. pluggy passes arguments by
name: an implementation may take any subset of a hook's arguments, but no other name.
docs/plugins.md gives every signature (tests/test_docs.py checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from harness.run import Run

hookspec = pluggy.HookspecMarker("harness")

FAMILIES = (
    "priors", "conditioners", "backbones", "datasets", "metrics", "losses", "regularizers",
    "augmentations", "executors", "loggers",
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
def harness_loggers() -> dict[str, Any]:
    """Names ``--log`` accepts (``run.config.log``), subclasses of ``harness.loggers.Logger``;
    the registering plugin's lifecycle hooks do the logging for runs that name them."""


@hookspec
def harness_run_started(run: Run) -> None:
    """A run's components are built and its directory exists; training is about to start
    (also when a run resumes: ``run.step`` is then the checkpoint's step)."""


@hookspec
def harness_step_end(run: Run, step: int, losses: dict[str, Any]) -> None:
    """One training step finished: ``step`` (1 to ``run.config.steps``) is the step just
    done; ``losses`` maps names (``d_loss``, ``g_loss``, every component's terms) to detached
    0-d tensors on the run's device."""


@hookspec
def harness_labels_updated(run: Run, step: int, changed_fraction: float) -> None:
    """The conditioner re-partitioned the data (e.g. k-means re-clustering) at ``step``;
    ``changed_fraction`` in [0, 1] is the fraction of labels that changed."""


@hookspec
def harness_evaluated(run: Run, step: int, metrics: dict[str, float]) -> None:
    """Metrics were computed at ``step`` (every ``--eval-every`` steps and at the end);
    ``metrics`` maps keys to finite floats (a metric that failed is left out)."""


@hookspec
def harness_run_finished(run: Run, metrics: dict[str, float]) -> None:
    """The run finished: the final ``metrics`` were written to ``metrics.json``. Not called
    when a run fails or is interrupted."""
