"""Built-in logger: losses, re-clustering events and metrics to ``<run>/log.jsonl``.

One strict-JSON object per line (a non-finite value is written as null). When a run resumes
from step s, records after step s (steps re-done after a crash or SIGKILL) are dropped
first, so no step is logged twice. Uses only the public lifecycle hooks, as any
third-party logger would.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from harness import hookimpl
from harness.results import LOG, atomic_write_bytes, finite_or_none

if TYPE_CHECKING:
    from harness.run import Run


def _append(run: Run, record: dict[str, Any]) -> None:
    if run.directory is not None:
        line = json.dumps({"time": round(time.time(), 3), **record}, allow_nan=False)
        with open(run.directory / LOG, "a") as handle:
            handle.write(line + "\n")


def _step(line: str) -> float:
    """The step of a log line; lines that cannot be read (a torn last line) count as later."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


@hookimpl
def harness_run_started(run: Run) -> None:
    path = None if run.directory is None else run.directory / LOG
    if path is None or not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if _step(line) <= run.step]
    if len(kept) < len(lines):
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())


@hookimpl
def harness_step_end(run: Run, step: int, losses: dict[str, Any]) -> None:
    if step % run.config.log_every == 0:
        _append(run, {"step": step, **{k: finite_or_none(v) for k, v in losses.items()}})


@hookimpl
def harness_labels_updated(run: Run, step: int, changed_fraction: float) -> None:
    _append(run, {"step": step, "event": "labels_updated", "changed_fraction": changed_fraction})


@hookimpl
def harness_evaluated(run: Run, step: int, metrics: dict[str, float]) -> None:
    _append(run, {"step": step, "event": "evaluated", **metrics})
