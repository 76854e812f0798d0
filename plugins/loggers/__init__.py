"""Built-in loggers ``tensorboard`` and ``wandb`` (``--log tensorboard,wandb``).

Each is a ``Tracker``: a lifecycle plugin that registers its logger name through
``harness_loggers`` and acts only on runs whose ``run.config.log`` names it, exactly as a
third-party logger would. It opens one ``Sink`` per run (the library's writer) when the run
starts and closes it when the run finishes, and logs:

- ``losses/<term>`` every ``--log-every`` steps (``d_loss``, ``g_loss`` and every
  component's terms, as ``log.jsonl``);
- ``labels/changed_fraction`` at each re-clustering of the conditioner (in [0, 1]);
- ``metrics/<key>`` at every evaluation (``--eval-every`` and the final one);
- ``samples``: the sample grid (or 2-D scatter plot) the ``figures`` plugin writes to
  ``samples/step_XXXXXXX.png``, logged at the step it was made (none if ``figures`` is
  blocked).

A sink is flushed after every hook that logged: a run that fails or is interrupted (no
``harness_run_finished``) keeps what it logged.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import hookimpl
from harness.loggers import Logger

if TYPE_CHECKING:
    from harness.run import Run


class Sink(ABC):
    """One run's open writer of a tracking library."""

    @abstractmethod
    def scalars(self, values: dict[str, float], step: int) -> None:
        """Log ``{tag: value}`` at training step ``step``."""

    @abstractmethod
    def image(self, path: Path, step: int) -> None:
        """Log the PNG file at ``path`` as the sample grid of ``step``."""

    @abstractmethod
    def flush(self) -> None:
        """Write what is buffered to disk (called after every hook that logged)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release the writer."""


@dataclass
class Opened:
    """A run's sink, with what decides which sample grids are new."""

    sink: Sink
    earlier: dict[str, int]
    """Grid files there when the run (re)started, by name: their modification times (ns).
    A resumed run re-does steps; a grid of an earlier attempt that is not rewritten is not
    logged again."""
    grid_step: int = -1
    """The step of the last grid logged (``figures`` writes one grid per step at most)."""


class Tracker:
    """The lifecycle plugin of logger ``name``: a ``sink`` per run that enables it."""

    def __init__(self, name: str, logger: type[Logger], sink: Callable[[Run], Sink]) -> None:
        self.__doc__ = logger.__doc__  # what `harness plugins --verbose` says of this plugin
        self.name = name
        self.logger = logger
        self.sink = sink
        self.opened: dict[Path, Opened] = {}
        """Open sinks by run directory (several runs train together with ``--seeds``)."""

    @hookimpl
    def harness_loggers(self) -> dict[str, Any]:
        return {self.name: self.logger}

    @hookimpl
    def harness_run_started(self, run: Run) -> None:
        if self.name in run.config.log and run.directory is not None:
            self.close(run.directory)  # one left by an interrupted attempt in this process
            samples = run.directory / "samples"
            earlier = {e.name: e.stat().st_mtime_ns for e in os.scandir(samples)
                       } if samples.is_dir() else {}
            self.opened[run.directory] = Opened(self.sink(run), earlier)

    @hookimpl
    def harness_labels_updated(self, run: Run, step: int, changed_fraction: float) -> None:
        if (opened := self.open_for(run)) is not None:
            opened.sink.scalars({"labels/changed_fraction": float(changed_fraction)}, step)
            opened.sink.flush()

    @hookimpl(trylast=True)  # after the figures plugin wrote the step's grid
    def harness_step_end(self, run: Run, step: int, losses: dict[str, Any]) -> None:
        if (opened := self.open_for(run)) is None:
            return
        logged = step % run.config.log_every == 0
        if logged:
            opened.sink.scalars({f"losses/{k}": float(v) for k, v in losses.items()}, step)
        if self.log_grid(run, opened, step) or logged:
            opened.sink.flush()

    @hookimpl(trylast=True)
    def harness_evaluated(self, run: Run, step: int, metrics: dict[str, float]) -> None:
        if (opened := self.open_for(run)) is not None:
            opened.sink.scalars({f"metrics/{k}": float(v) for k, v in metrics.items()}, step)
            self.log_grid(run, opened, step)
            opened.sink.flush()

    @hookimpl
    def harness_run_finished(self, run: Run, metrics: dict[str, float]) -> None:
        if run.directory is not None:
            self.close(run.directory)

    def open_for(self, run: Run) -> Opened | None:
        """The run's sink, if the run enabled this logger."""
        if self.name not in run.config.log or run.directory is None:
            return None
        return self.opened.get(run.directory)

    def log_grid(self, run: Run, opened: Opened, step: int) -> bool:
        """Log the grid ``figures`` wrote at ``step`` in this attempt, once; whether it did."""
        assert run.directory is not None
        path = run.directory / "samples" / f"step_{step:07d}.png"
        if step == opened.grid_step or not path.is_file():
            return False
        if path.stat().st_mtime_ns == opened.earlier.get(path.name):
            return False
        opened.sink.image(path, step)
        opened.grid_step = step
        return True

    def close(self, directory: Path) -> None:
        if (opened := self.opened.pop(directory, None)) is not None:
            opened.sink.close()
