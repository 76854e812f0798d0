"""Executors on this machine: ``local`` (one run at a time) and ``pool`` (``--jobs N`` at once).

Both run each job in a child process of a ``concurrent.futures.ProcessPoolExecutor`` (spawn
start method: the suite has already imported torch, and forking a process with torch's
threads running can deadlock). The children lead their own process groups, so a Ctrl-C in
the terminal reaches only the suite, which then sends each running child exactly one SIGTERM:
the run checkpoints at its next step boundary and ends ``interrupted``, ready to be resumed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.api import Executor, Options
from harness.jobs import Job, Outcome, run_job


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a Slurm or cgroup limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


_stopped: Any = None
"""In a worker: the pool's stop event (a ``multiprocessing.Event``)."""


def _init_worker(stopped: Any) -> None:
    """In a worker: leave the terminal's process group (Ctrl-C goes to the suite only) and
    ignore SIGINT/SIGTERM while idle (``run_job`` handles them while a run is on), so that a
    stop never kills a worker between runs, which would break the pool."""
    global _stopped
    _stopped = stopped
    os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_unless_stopped(job: Job) -> Outcome:
    """``run_job``, unless the suite stopped before this queued job reached a worker."""
    if _stopped is not None and _stopped.is_set():
        return Outcome(job.key, "interrupted", None, "not started: the suite was stopped")
    return run_job(job)


class PoolOptions(Options):
    threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch CPU threads per run; default: the cores divided among the jobs",
    )


class Pool(Executor):
    """``--jobs N`` runs at once in child processes of this machine (default N: one per
    core), each with its share of the cores as torch threads (cores // N, at least 1) so that
    jobs do not fight over cores."""

    Options = PoolOptions

    def __init__(self, options: PoolOptions, jobs: int | None, log_dir: Path) -> None:
        super().__init__(options, jobs or available_cores(), log_dir)
        context = multiprocessing.get_context("spawn")
        self.stopped = context.Event()
        self.pool = ProcessPoolExecutor(max_workers=self.slots, mp_context=context,
                                        initializer=_init_worker, initargs=(self.stopped,))

    @property
    def threads(self) -> int:
        return self.options.threads or max(1, available_cores() // self.slots)

    def submit(self, job: Job) -> Future[Outcome]:
        return self.pool.submit(_run_unless_stopped, job)

    def stop(self) -> None:
        """Signal-safe (the suite calls it from its signal handler): no pool locks taken.
        Queued jobs see the stop event and end without starting; running ones get SIGTERM."""
        self.stopped.set()
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError, TypeError):  # gone, or never started
                os.kill(child.pid, signal.SIGTERM)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class Local(Pool):
    """One run at a time on this machine, with all of its cores (``--jobs`` must be 1)."""

    max_jobs = 1

    def __init__(self, options: PoolOptions, jobs: int | None, log_dir: Path) -> None:
        super().__init__(options, 1, log_dir)
