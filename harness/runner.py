"""Run-directory bookkeeping around training: config.json, run.json's status, metrics.json."""

from __future__ import annotations

import sys
import time
from typing import Any

from harness import results
from harness.run import Run
from harness.trainer import Trainer


def execute(run: Run, resume: dict[str, Any] | None = None) -> dict[str, float]:
    """Train and evaluate a built run in ``run.directory``; keep run.json's status honest.

    ``resume``: a resume record (``changed`` flags, ...) to continue the run from its
    checkpoint, or from step 0 when it stopped before its first one. The caller holds the
    directory's ``RunLock``. Raises ``KeyboardInterrupt`` (status ``interrupted``),
    ``Diverged`` or any other error (status ``failed``).
    """
    assert run.directory is not None
    directory, notify = run.directory, run.pm.notify
    trainer = Trainer(run)
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
    try:
        with trainer.interruptible():
            notify("harness_run_started", run=run)
            if run.checkpoint_step is None:
                trainer.setup()
            trainer.train()
            metrics = trainer.evaluate()
            results.atomic_write_json(
                directory / results.METRICS, {**metrics, "eval_samples": run.config.eval_samples}
            )
            notify("harness_evaluated", run=run, step=run.step, metrics=metrics)
            notify("harness_run_finished", run=run, metrics=metrics)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = (f"stopped by {run.stop_signal or 'request'}" if status == "interrupted"
                 else f"{type(exc).__name__}: {exc}")
        info.update(status=status, error=error, step=run.step, timings=run.timings,
                    checkpoint_step=run.checkpoint_step)
        results.atomic_write_json(directory / results.RUN, info)
        raise
    run.timings["recluster_share"] = run.timings.get("recluster_s", 0.0) / max(
        run.timings["train_s"], 1e-9
    )
    info.update(status="finished", step=run.step, timings=run.timings, finished=now_stamp(),
                checkpoint_step=run.checkpoint_step)
    info.pop("error", None)
    info.pop("metric_errors", None)
    if run.metric_errors:
        info["metric_errors"] = run.metric_errors
    results.atomic_write_json(directory / results.RUN, info)
    return metrics


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
