"""Run-directory bookkeeping around training: config.json, run.json's status, metrics.json."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness import results
from harness.build import best_metric_direction
from harness.replicas import Replicas, rng_state
from harness.run import Run
from harness.trainer import BestCheckpoint, Trainer


def execute(run: Run, resume: dict[str, Any] | None = None) -> dict[str, float]:
    """Train and evaluate a built run in ``run.directory``; keep run.json's status honest.

    ``resume``: a resume record (``changed`` flags, ...) to continue the run from its
    checkpoint, or from step 0 when it stopped before its first one. The caller holds the
    directory's ``RunLock``. Raises ``KeyboardInterrupt`` (status ``interrupted``),
    ``Diverged`` or any other error (status ``failed``).
    """
    trainer = Trainer(run)
    info: dict[str, Any] | None = None
    try:
        info = start(run, trainer, resume)
        with trainer.interruptible():
            run.pm.notify("harness_run_started", run=run)
            if run.checkpoint_step is None:
                trainer.setup()
            trainer.train()
            metrics = trainer.evaluate()
            evaluated(run, metrics)
    except BaseException as exc:
        if info is not None:  # else nothing was written: a signal came before
            stopped(run, info, exc)
        raise
    assert info is not None
    finished(run, info)
    return metrics


def execute_replicas(
    runs: list[Run], rng_states: list[tuple[torch.Tensor, Any]],
    resumes: list[dict[str, Any] | None],
) -> dict[Path, BaseException | None]:
    """Train runs that differ only in seed together (``harness.replicas``), each in its own
    directory with its own run.json, as ``execute`` would one by one.

    Returns each run directory's failure (``Diverged``), None when it finished. Raises
    ``KeyboardInterrupt`` (every started, unfinished run ``interrupted``; a run not yet
    started has no run.json) or any other error (every started, unfinished run ``failed``).
    """
    replicas = Replicas(runs, rng_states)
    infos: list[dict[str, Any]] = []  # of the runs started so far
    done: set[int] = set()
    try:
        for replica, resume in zip(replicas.replicas, resumes, strict=True):
            infos.append(start(replica.run, replica.trainer, resume))
            if replica.run.checkpoint_step is not None:  # the checkpoint set the global RNG
                replica.rng_state, replica.cuda_state = rng_state(replica.run.device)
        with replicas.interruptible():
            for run in runs:
                run.pm.notify("harness_run_started", run=run)
            replicas.setup()
            with replicas.replicas[0].trainer.progress() as advance:
                replicas.train(advance)
            for i, replica in enumerate(replicas.replicas):
                if replica.failure is None:
                    evaluated(replica.run, replicas.evaluate(replica))
                    finished(replica.run, infos[i])
                else:
                    stopped(replica.run, infos[i], replica.failure)
                done.add(i)
    except BaseException as exc:
        for i, (replica, info) in enumerate(zip(replicas.replicas, infos, strict=False)):  # started
            if i not in done:
                stopped(replica.run, info, replica.failure or exc)
        raise
    return {r.run.directory: r.failure for r in replicas.replicas}  # type: ignore[misc]


def keep_best(run: Run, trainer: Trainer, info: dict[str, Any]) -> None:
    """Give ``trainer`` its ``BestCheckpoint`` (``--best-metric``): a resumed run continues
    from the record in run.json (``best_checkpoint``) when it is of the same metric and
    best.pt exists; every new best is recorded in run.json at once."""
    direction = best_metric_direction(run)
    if direction is None:
        return
    assert run.directory is not None and run.config.best_metric is not None
    directory = run.directory
    previous = info.get("best_checkpoint")
    if not (isinstance(previous, dict) and previous.get("metric") == run.config.best_metric
            and (directory / results.BEST_CHECKPOINT).is_file()):
        previous = None
        info.pop("best_checkpoint", None)

    def record(best: dict[str, Any]) -> None:
        info["best_checkpoint"] = best
        results.atomic_write_json(directory / results.RUN, info)

    trainer.best = BestCheckpoint(run.config.best_metric, direction, previous, record)


def start(run: Run, trainer: Trainer, resume: dict[str, Any] | None) -> dict[str, Any]:
    """Load the checkpoint of a resumed run; write config.json and run.json (``running``).
    Returns run.json's record."""
    assert run.directory is not None
    directory = run.directory
    now = now_stamp()
    if resume is not None:
        checkpoint = directory / results.CHECKPOINT
        if checkpoint.exists():
            trainer.load_state_dict(results.load_checkpoint(checkpoint, run.identity(), run.device))
        info = results.read_json(directory / results.RUN)
        record = {"time": now, "from_step": run.step, "command": sys.argv, **resume}
        info.update(status="running", resumes=[*info.get("resumes", []), record])
    else:
        info = {"run_id": directory.name, "seed": run.config.seed, "status": "running",
                "started": now, "environment": results.environment()}
    print(f"run directory: {directory}", file=sys.stderr)
    results.atomic_write_json(
        directory / results.CONFIG,
        {"config": run.config.model_dump(mode="json"), "resolved": run.resolved},
    )
    results.atomic_write_json(directory / results.RUN, info)
    keep_best(run, trainer, info)
    return info


def evaluated(run: Run, metrics: dict[str, float]) -> None:
    """Write the final evaluation's metrics.json and tell the lifecycle hooks."""
    assert run.directory is not None
    results.atomic_write_json(
        run.directory / results.METRICS, {**metrics, "eval_samples": run.config.eval_samples}
    )
    run.pm.notify("harness_evaluated", run=run, step=run.step, metrics=metrics)
    run.pm.notify("harness_run_finished", run=run, metrics=metrics)


def stopped(run: Run, info: dict[str, Any], exc: BaseException) -> None:
    """run.json of a run that stopped before finishing: ``interrupted`` or ``failed``."""
    assert run.directory is not None
    status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    error = (f"stopped by {run.stop_signal or 'request'}" if status == "interrupted"
             else f"{type(exc).__name__}: {exc}")
    info.update(status=status, error=error, step=run.step, timings=run.timings,
                checkpoint_step=run.checkpoint_step)
    results.atomic_write_json(run.directory / results.RUN, info)


def finished(run: Run, info: dict[str, Any]) -> None:
    """run.json of a finished run: its timings, re-clustering's share of training time."""
    assert run.directory is not None
    run.timings["recluster_share"] = run.timings.get("recluster_s", 0.0) / max(
        run.timings["train_s"], 1e-9
    )
    info.update(status="finished", step=run.step, timings=run.timings, finished=now_stamp(),
                checkpoint_step=run.checkpoint_step)
    info.pop("error", None)
    info.pop("metric_errors", None)
    if run.metric_errors:
        info["metric_errors"] = run.metric_errors
    results.atomic_write_json(run.directory / results.RUN, info)


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
