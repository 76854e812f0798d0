"""Built-in logger: losses, re-clustering events and metrics to ``<run>/log.jsonl``.

It uses only the public lifecycle hooks, as any third-party logger would.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from harness import hookimpl
from harness.results import LOG

if TYPE_CHECKING:
    from harness.trainer import Run


def _append(run: Run, record: dict[str, Any]) -> None:
    if run.directory is not None:
        with open(run.directory / LOG, "a") as handle:
            handle.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


@hookimpl
def harness_step_end(run: Run, step: int, losses: dict[str, Any]) -> None:
    if step % run.config.log_every == 0:
        _append(run, {"step": step, **{k: float(v) for k, v in losses.items()}})


@hookimpl
def harness_labels_updated(run: Run, step: int, changed_fraction: float) -> None:
    _append(run, {"step": step, "event": "labels_updated", "changed_fraction": changed_fraction})


@hookimpl
def harness_evaluated(run: Run, step: int, metrics: dict[str, float]) -> None:
    _append(run, {"step": step, "event": "evaluated", **metrics})
