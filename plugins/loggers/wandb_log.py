"""Logger ``wandb``: one Weights & Biases run per harness run, its files in ``<run>/wandb/``.

``pip install 'gan-harness[wandb]'``. W&B's own environment variables apply: online
logging needs ``wandb login`` (or ``WANDB_API_KEY``; without one the run fails at its start
with W&B's message, resumable once logged in); ``WANDB_MODE=offline`` logs without network,
for ``wandb sync <run>/wandb/offline-run-*`` later; ``WANDB_PROJECT`` (default
``gan-harness``) and ``WANDB_ENTITY`` say where. The W&B run is named after the run
directory and its id is derived from it, so ``harness run --resume`` continues the same W&B
run (W&B ignores the values of steps it already has, i.e. steps re-done after a crash).
The run's config is the W&B config; the console is not captured. What is logged and when:
``harness_plugins.loggers``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from harness.loggers import Logger
from harness_plugins.loggers import Sink, Tracker

if TYPE_CHECKING:
    from harness.run import Run

PROJECT = "gan-harness"
"""The W&B project when ``WANDB_PROJECT`` does not name one."""


class WandB(Logger):
    """A Weights & Biases run per harness run, files in <run>/wandb/: losses, re-clustering
    label changes, metrics and sample grids; WANDB_MODE=offline logs without network
    (pip install 'gan-harness[wandb]')."""

    requires = ("wandb",)
    extra = "wandb"


def wandb_id(directory: Path) -> str:
    """The W&B run id of a run directory: 16 hex digits of its name (W&B ids may not hold
    every character a directory name may)."""
    return hashlib.sha256(directory.name.encode()).hexdigest()[:16]


class WandbRun(Sink):
    """``wandb.init`` in the run directory (W&B makes ``wandb/`` there)."""

    def __init__(self, run: Run) -> None:
        import wandb

        assert run.directory is not None
        self.wandb = wandb
        self.run = wandb.init(
            dir=run.directory, project=os.environ.get("WANDB_PROJECT", PROJECT),
            id=wandb_id(run.directory), name=run.directory.name, resume="allow",
            config=run.config.model_dump(mode="json"), reinit="create_new",
            settings=wandb.Settings(console="off"),
        )

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def image(self, path: Path, step: int) -> None:
        self.run.log({"samples": self.wandb.Image(str(path))}, step=step)

    def flush(self) -> None:
        """Nothing to do here: W&B's own service process writes ``run-<id>.wandb``."""

    def close(self) -> None:
        self.run.finish()


plugin = Tracker("wandb", WandB, WandbRun)
"""The entry point ``wandb`` of group ``harness.plugins``."""
