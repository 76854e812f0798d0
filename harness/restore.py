"""Load a trained run back from its directory, for commands that analyse it (``harness
cluster``, ``harness tradeoff``).

This is the one module that imports the training internals (``build_run`` and
``check_eval_memory`` of ``harness.build``, ``Run``, ``Trainer``): when they move, only the
imports below change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import results
from harness.build import build_run, check_eval_memory
from harness.config import make_config
from harness.errors import HarnessError, one_line
from harness.manager import get_plugin_manager
from harness.run import Run
from harness.trainer import Trainer

__all__ = ["Run", "check_eval_memory", "load_run", "locked_run", "read_status"]


def read_saved_config(run_dir: Path, what: str) -> dict[str, Any]:
    """The ``config`` object of the run's ``config.json``; ``HarnessError`` (one line) when
    ``run_dir`` is no run directory."""
    if not run_dir.is_dir():
        kind = "a file, not a run directory" if run_dir.exists() else "no such run directory"
        raise HarnessError(f"{what} {run_dir}: {kind} (valid: a folder made by harness run, "
                           "e.g. results/<run-id>)")
    try:
        saved = results.read_json(run_dir / results.CONFIG)
    except FileNotFoundError:
        raise HarnessError(f"{what} {run_dir}: no {results.CONFIG}; not a run directory (valid: "
                           "a folder made by harness run, e.g. results/<run-id>)") from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{what} {run_dir}: cannot read {results.CONFIG}: "
                           f"{one_line(exc)}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise HarnessError(f"{what} {run_dir}: {results.CONFIG} holds no run config")
    return saved["config"]


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` (status, steps), or ``{}`` when it is missing or unreadable."""
    try:
        info = results.read_json(run_dir / results.RUN)
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def load_run(
    run_dir: Path, what: str = "harness", overrides: dict[str, Any] | None = None
) -> Run:
    """The run of ``run_dir`` rebuilt from its ``config.json`` with the weights of its last
    checkpoint (G, D, the EMA copy, the prior, the conditioner's state).

    ``overrides``: settings that do not change results (``device``, ``data_root``,
    ``threads``). Works for finished, interrupted and failed runs alike, as long as a
    checkpoint exists. Raises ``HarnessError`` (one line, prefixed with ``what`` and the
    directory) when the folder is no run, has no checkpoint or another run's checkpoint.
    """
    run_dir = Path(run_dir)
    values = {**read_saved_config(run_dir, what), "progress": False, "log": [],
              **(overrides or {})}  # an analysis neither shows progress nor logs
    config = make_config(values)
    checkpoint = run_dir / results.CHECKPOINT
    if not checkpoint.is_file():
        status = read_status(run_dir).get("status", "unknown")
        raise HarnessError(f"{what} {run_dir}: no checkpoint ({results.CHECKPOINT}; run status "
                           f"{status}): the run stopped before its first checkpoint (valid: a "
                           "run that trained to a checkpoint; resume it with harness run "
                           f"--resume {run_dir})")
    run = build_run(config, get_plugin_manager())
    run.directory = run_dir  # before identity(): it names the run
    trainer = Trainer(run)  # makes the EMA copy of G when the run has one
    try:
        state = results.load_checkpoint(checkpoint, run.identity(), run.device)
        trainer.load_state_dict(state)
    except results.CheckpointError as exc:
        raise HarnessError(f"{what} {run_dir}: {one_line(exc)}") from None
    return run


@contextlib.contextmanager
def locked_run(
    run_dir: Path, what: str = "harness", overrides: dict[str, Any] | None = None
) -> Iterator[Run]:
    """``load_run`` while holding the run's lock, so no ``harness run --resume`` trains it
    while it is analysed. A folder that is no run is refused before the lock file is made."""
    read_saved_config(Path(run_dir), what)
    with results.RunLock(Path(run_dir)):
        yield load_run(Path(run_dir), what, overrides)
