"""``harness eval``: evaluate a saved checkpoint of a run with any applicable metrics.

The run is rebuilt from its ``config.json`` with the chosen checkpoint's weights
(``harness.restore.load_run``) and the metrics computed as the run's own evaluation computes
them (``Trainer.evaluate``: the same fixed evaluation seeds, so the run's own metrics on its
last checkpoint give its ``metrics.json`` values). Each evaluation is one new file in
``<run>/evaluations/`` (``EVALUATIONS``), never replacing a file: ``metrics.json`` stays
the run's original evaluation, and the leaderboard (``read_evaluations``) decides which to
show.

Safe while the run trains: no lock is taken, the checkpoint file is read once (checkpoints
are replaced by rename, so a reader sees a whole file), and nothing the training process
writes is touched. ``log.jsonl`` gets no record: the training process appends to it and
rewrites it when it resumes, which could drop a line written meanwhile.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import results
from harness.config import parse_metric_options
from harness.errors import HarnessError
from harness.manager import metric_option_owners


def overrides(
    saved: dict[str, Any], metrics: list[str] | None, metric_opts: list[str],
    eval_samples: int | None,
) -> dict[str, Any]:
    """The settings an evaluation changes in the run's ``saved`` config: ``metrics`` (None:
    the run's own), the metric options (the run's for the metrics kept, then ``--metric-opt
    METRIC.KEY=VALUE`` pairs) and ``eval_samples`` (None: the run's; options derived from it,
    such as the FID family's ``samples``, follow it). ``HarnessError`` for a malformed pair."""
    values: dict[str, Any] = {}
    options = {m: dict(o) for m, o in (saved.get("metric_options") or {}).items()}
    if metrics is not None:
        values["metrics"] = metrics
        options = {m: o for m, o in options.items() if m in metrics}
    for metric, given in parse_metric_options(metric_opts, metric_option_owners).items():
        options.setdefault(metric, {}).update(given)
    values["metric_options"] = options
    if eval_samples is not None:
        values["eval_samples"] = eval_samples
    return values


def evaluate(run_dir: Path, checkpoint: str, settings: dict[str, Any],
             what: str = "harness eval") -> dict[str, Any]:
    """Evaluate ``checkpoint`` (``"last"``, ``"best"`` or a saved step) of the run in
    ``run_dir`` with the run's config changed by ``settings`` (``overrides``, plus
    ``device``, ``data_root``, ``threads``); returns the record ``write`` saves.

    Raises ``HarnessError`` (one line) before any computation for a folder that is no run, a
    checkpoint that was not saved, an ``evaluations/`` that cannot be written, an unknown
    metric, one that does not apply to the run's dataset, or bad options; ``MetricCrashed``
    when a metric's ``compute`` raises.
    """
    from harness.restore import load_run, resolve_checkpoint
    from harness.trainer import Trainer

    status = results.run_status(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint, what)
    folder = run_dir / results.EVALUATIONS
    reason = (f"{folder} is a link to nothing" if folder.is_symlink() and not folder.exists()
              else results.unwritable_reason(folder))
    if reason is not None:
        raise HarnessError(f"{what} {run_dir}: cannot save an evaluation: {reason} (valid: "
                           f"a run directory whose {results.EVALUATIONS}/ is a writable folder "
                           "or absent)")
    run = load_run(run_dir, what, settings, checkpoint)
    started = time.perf_counter()
    values = Trainer(run).evaluate()
    return {
        "checkpoint": checkpoint,
        "file": str(path.relative_to(run_dir)),
        "step": run.step,
        "metrics": values,
        "metric_errors": run.metric_errors,
        "eval_samples": run.config.eval_samples,
        "resolved_metrics": run.resolved.get("metrics", {}),
        "run_status": status,
        "eval_s": time.perf_counter() - started,
        "time": datetime.now().astimezone().isoformat(timespec="microseconds"),
        "environment": results.environment(),
    }


def write(run_dir: Path, record: dict[str, Any]) -> Path:
    """Save an evaluation ``record`` as a new file in ``<run>/evaluations/``:
    ``<time>-last-step<N>.json``, ``<time>-best-step<N>.json`` or ``<time>-step<N>.json`` (a
    step asked for by number); atomic, a name never reused."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    named = f"{record['checkpoint']}-" if record["checkpoint"] in ("last", "best") else ""
    return results.write_new_json(Path(run_dir) / results.EVALUATIONS,
                                  f"{stamp}-{named}step{record['step']}", record)


EVALUATION_FILE = re.compile(r"[0-9]{8}-[0-9]{6}-(last-|best-)?step[0-9]+(-[0-9]+)?\.json")


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``harness eval`` records, oldest first (by their time, then file name).
    Files that are unreadable or not such records are left out."""
    folder = Path(run_dir) / results.EVALUATIONS
    try:
        names = sorted(p.name for p in folder.iterdir() if EVALUATION_FILE.fullmatch(p.name))
    except OSError:
        return []
    found = []
    for name in names:
        try:
            record = results.read_json(folder / name)
        except (OSError, ValueError, RecursionError):
            continue
        if (isinstance(record, dict) and isinstance(record.get("metrics"), dict)
                and isinstance(record.get("step"), int)):
            found.append(record)
    return sorted(found, key=evaluated_at)


def evaluated_at(record: dict[str, Any]) -> float:
    """A record's ``time`` as a POSIX timestamp (-infinity when absent or invalid)."""
    try:
        return datetime.fromisoformat(record["time"]).timestamp()
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return -math.inf


def format_record(record: dict[str, Any], run_dir: Path) -> str:
    """The evaluation as printed: what was evaluated, then one line per metric value."""
    head = (f"{run_dir.name}: checkpoint {record['checkpoint']} (step {record['step']}, "
            f"{record['file']}), {record['eval_samples']} samples")
    width = max((len(k) for k in record["metrics"]), default=0)
    lines = [f"  {key:<{width}}  {value:.6g}" for key, value in record["metrics"].items()]
    return "\n".join([head, *lines])
