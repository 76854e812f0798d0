"""One run of a suite as an executor sees it: a ``Job`` in, an ``Outcome`` out.

``run_job`` is what every executor calls in its worker (a child process, a Ray task, a Slurm
job): it trains one ``RunConfig`` into a new run directory under ``Job.out``, or resumes the
run directory ``Job.resume``, exactly as ``harness run`` does. Both types are plain, picklable
data, so a job crosses process and machine boundaries; the run directory it leaves behind is
the only result the suite's leaderboard reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.signals import on_stop_signals, raise_interrupt

Status = Literal["finished", "failed", "interrupted"]


@dataclass(frozen=True)
class Job:
    """One run to execute.

    ``config``: the run's ``RunConfig`` as JSON (``model_dump(mode="json")``), with ``out``
    the results folder shared by the suite's runs. ``resume``: an existing run directory to
    continue from its last checkpoint instead of starting a new one. ``log``: file that
    receives the run's stdout and stderr (appended), or None to keep them. ``env``:
    environment variables to set in the worker (e.g. ``HARNESS_INCEPTION_WEIGHTS``).
    """

    key: str
    """The job's name in the suite, e.g. ``ring/kmeans_d/s3``; for progress and messages."""
    config: dict[str, Any]
    resume: str | None = None
    log: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    together: tuple[tuple[str, dict[str, Any]], ...] = ()
    """Further new runs of the same composition, other seeds, as (key, config): trained
    together with ``config`` as one vectorised group (``harness run --seeds``); each gets
    its own run directory and outcome. Empty for a job of one run."""

    def run_keys(self) -> list[str]:
        """The keys of the job's runs: its own, then those trained together with it."""
        return [self.key, *(key for key, _ in self.together)]


@dataclass(frozen=True)
class Outcome:
    """What became of a job: its status, run directory (None if it failed before making
    one), a one-line error for failed and interrupted runs, and its wall time in seconds."""

    key: str
    status: Status
    run_dir: str | None
    error: str | None = None
    seconds: float = 0.0
    members: tuple[Outcome, ...] = ()
    """A job of several runs (``Job.together``): one outcome per run, in ``Job.run_keys`` order;
    this outcome then summarises them (the worst status)."""

    def runs(self) -> tuple[Outcome, ...]:
        """The outcome of every run of the job."""
        return self.members or (self,)


def run_job(job: Job) -> Outcome:
    """Train ``job`` to the end in this process; never raises for a failed run.

    A ``KeyboardInterrupt`` (SIGINT/SIGTERM reaching the worker) checkpoints the run and
    gives status ``interrupted``; any other error gives ``failed`` with one line saying why
    (the traceback goes to the job's log and, once the run has a directory, to its
    ``traceback.txt``, as with ``harness run``).
    """
    start = time.perf_counter()
    os.environ.update(job.env)
    if job.together:
        with _output_to(job.log), on_stop_signals(raise_interrupt):
            return _train_together(job, start)
    with _output_to(job.log), on_stop_signals(raise_interrupt):
        directory: Path | None = None
        try:
            directory = _train(job)
            status, error = "finished", None
        except KeyboardInterrupt as exc:
            status, error = "interrupted", "stopped by a signal; the suite resumes it"
            directory = getattr(exc, "run_dir", None)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the job's outcome
            from harness.errors import HarnessError, one_line

            status, error = "failed", one_line(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, HarnessError):
                traceback.print_exc()
            directory = directory or getattr(exc, "run_dir", None)
        print(f"job {job.key}: {status}" + (f": {error}" if error else ""), file=sys.stderr)
    return Outcome(job.key, status, str(directory) if directory else None, error,
                   time.perf_counter() - start)


def _train(job: Job) -> Path:
    from harness import results, runner
    from harness.build import build_run
    from harness.config import make_config
    from harness.errors import HarnessError
    from harness.manager import get_plugin_manager
    from harness.seeds import locked_directory

    config = make_config(job.config)
    run = build_run(config, get_plugin_manager())
    resume = None if job.resume is None else {"changed": {}, "by": "harness suite"}
    if job.resume is None:
        results.check_output_dir(config.out)
        directory = locked_directory(run, None)  # removed again if the run never starts
    else:
        run.directory = Path(job.resume)
        directory = results.RunLock(run.directory)
    with directory:
        assert run.directory is not None
        if resume is not None and results.run_status(run.directory) == "finished":
            return run.directory  # finished by another process since it was planned
        try:
            runner.execute(run, resume)
        except BaseException as exc:
            if results.run_status(run.directory) is not None:  # else its directory goes
                exc.run_dir = run.directory  # type: ignore[attr-defined]
                if not isinstance(exc, KeyboardInterrupt | HarnessError):
                    (run.directory / results.TRACEBACK).write_text(traceback.format_exc())
            raise
    return run.directory


def _train_together(job: Job, start: float) -> Outcome:
    """The job's runs as one vectorised group (``harness.seeds.train_group``); one outcome
    per run from its ``run.json``. A failure before any run directory exists fails them all."""
    from harness import results, seeds
    from harness.config import make_config
    from harness.errors import one_line
    from harness.manager import get_plugin_manager

    configs = [make_config(c) for c in (job.config, *(c for _, c in job.together))]
    try:
        results.check_output_dir(configs[0].out)
        paths, _ = seeds.train_group(configs, get_plugin_manager(), vectorise="yes")
    except KeyboardInterrupt:  # before any run started (the group's runs being built)
        members = tuple(_outcome_of_run(key, None) for key in job.run_keys())
    except Exception as exc:  # noqa: BLE001 - every failure becomes the job's outcome
        error = one_line(f"{type(exc).__name__}: {exc}")
        members = tuple(Outcome(key, "failed", None, error) for key in job.run_keys())
    else:
        by_seed = {results.read_json(path / results.CONFIG)["config"]["seed"]: path
                   for path in paths}
        members = tuple(_outcome_of_run(key, by_seed.get(config.seed))
                        for key, config in zip(job.run_keys(), configs, strict=True))
    seconds = time.perf_counter() - start
    members = tuple(dataclasses.replace(m, seconds=seconds) for m in members)
    for member in members:
        print(f"job {member.key}: {member.status}"
              + (f": {member.error}" if member.error else ""), file=sys.stderr)
    worst = max(members, key=lambda m: ("finished", "interrupted", "failed").index(m.status))
    return Outcome(job.key, worst.status, worst.run_dir, worst.error, seconds, members)


def _outcome_of_run(key: str, directory: Path | None) -> Outcome:
    """A trained run's outcome, from the status its ``run.json`` records (None: a signal
    stopped the group before the run started; it has no directory)."""
    from harness import results

    if directory is None:
        return Outcome(key, "interrupted", None,
                       "stopped by a signal before it started; the suite starts it again")
    info = results.read_json(directory / results.RUN)
    status = info.get("status")
    if status == "finished":
        return Outcome(key, "finished", str(directory))
    if status == "interrupted":
        return Outcome(key, "interrupted", str(directory),
                       "stopped by a signal; the suite resumes it")
    return Outcome(key, "failed", str(directory), info.get("error") or f"status {status}")


@contextlib.contextmanager
def _output_to(log: str | None) -> Any:
    """Send this process's stdout and stderr (file descriptors 1 and 2 too, so that native
    code and child processes follow) to ``log``, appending; restore them after."""
    if log is None:
        yield
        return
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a", buffering=1) as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            with contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
