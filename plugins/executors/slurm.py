"""Executor ``submitit``: each run of a suite is one submitit job, on Slurm or as a local process
(``pip install 'gan-harness[submitit]'``).

Where runs execute, by ``cluster``: unset is submitit's choice, Slurm where ``sbatch``/``srun``
exist and local processes elsewhere; ``slurm``: one Slurm job per run (``sbatch``, one task
with ``cpus_per_run`` CPUs, ``gpus_per_run`` GPUs, ``mem_gb``, ``time_min``, ``partition``
and any other submitit ``slurm_*`` setting through ``slurm``); ``local``: a detached process
of this machine per run (submitit's LocalExecutor: tests, machines without Slurm); ``debug``:
in a thread of the suite's own process, one run at a time, for stepping through with a
debugger (the run's output goes to its log meanwhile and it cannot be stopped mid-run).
Slurm's nodes need the same Python environment (the job runs ``sys.executable``) and the
results folder, ``out`` of the runs' configs, at the same absolute path. Submitit keeps its
pickles and the jobs' own logs in ``folder`` (default: the suite's executor log folder
``/submitit``); each run also writes its log and its run directory as with ``harness run``.

How many at once: ``--jobs N`` keeps at most N jobs submitted (the rest wait in this process);
without it a local cluster runs one job per ``cpus_per_run`` cores of this machine and Slurm
gets every job at once and queues them itself. A small thread of the suite polls the
submitted jobs (every second; every 10 s on Slurm) and resolves each job's future.

Stopping (Ctrl-C/SIGTERM in the suite): the jobs waiting here are dropped (futures
cancelled). A Slurm job is cancelled with ``scancel``: a pending one leaves the queue (its
future is cancelled), a running one gets SIGTERM and, after the cluster's KillWait (30 s by
default), SIGKILL. A local job's process gets one SIGTERM (not submitit's ``cancel``, whose
SIGINT is followed by SIGKILL a second later). In the job, SIGTERM stops the run at its next
step boundary with a checkpoint, status ``interrupted`` (before training starts, at once), and
so does submitit's timeout/preemption signal (USR2, ``time_min`` minus 90 s on Slurm): the run
is not requeued by submitit, the suite resumes it. Local jobs start with SIGINT blocked and
lead their own process group, so a Ctrl-C in the terminal reaches the suite only. A job's
future stays pending (``running()`` is False) until its outcome or its cancellation.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from harness.api import Options
from harness.errors import ConfigError, describe, one_line
from harness.jobs import Job, Outcome, run_job
from harness_plugins.executors.processes import available_cores
from harness_plugins.executors.queued import Queued, settle


class SubmititOptions(Options):
    cluster: Literal["slurm", "local", "debug"] | None = Field(
        None,
        description="where jobs run: unset picks Slurm when available, else local; 'local': "
                    "processes of this machine; 'debug': in the suite's process, one at a time",
    )
    partition: str | None = Field(
        None, min_length=1, max_length=200, description="Slurm partition (default: Slurm's)",
    )
    time_min: int = Field(
        60 * 24, ge=1, le=60 * 24 * 366, description="time limit of each run in minutes",
    )
    cpus_per_run: int = Field(
        1, ge=1, le=1024, description="CPUs of each job (cpus_per_task); also its torch threads",
    )
    gpus_per_run: int = Field(0, ge=0, le=64, description="GPUs of each job (gpus_per_node)")
    mem_gb: float | None = Field(
        None, gt=0, le=1e6, description="memory of each job in GB (default: Slurm's)",
    )
    folder: Path | None = Field(
        None, description="submitit's pickles and job logs (default: LOG_DIR/submitit)",
    )
    slurm: dict[str, Any] = Field(
        {},
        description="more Slurm settings by submitit's slurm_* names without the prefix, e.g. "
                    '{"account": "lab", "qos": "high", "additional_parameters": {...}}',
    )


class Submitit(Queued):
    """Each run is a submitit job (pip install 'gan-harness[submitit]'): a Slurm job with
    ``cpus_per_run`` CPUs (its torch threads), ``gpus_per_run`` GPUs, ``mem_gb`` and
    ``time_min`` on ``partition`` (``cluster=slurm``, the default where Slurm exists), or a
    process of this machine (``cluster=local``, the default elsewhere). ``--jobs N`` keeps at
    most N submitted (default: all on Slurm; one per ``cpus_per_run`` cores here). Stopping
    drops the jobs not started and sends SIGTERM to the running ones: they checkpoint, status
    interrupted.

    More in the module's docstring: the debug cluster, what Slurm's nodes need, timeouts,
    Ctrl-C.
    """

    Options = SubmititOptions
    extra = "submitit"

    poll_s: float = 1.0
    """Seconds between two looks at the submitted jobs (ten times that on Slurm)."""

    def __init__(self, options: SubmititOptions, jobs: int | None, log_dir: Path) -> None:
        super().__init__(options, jobs, log_dir)
        try:
            import submitit
        except ImportError:
            raise ConfigError(
                "executor 'submitit' needs submitit: pip install 'gan-harness[submitit]'"
            ) from None
        if options.cluster == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("executor 'submitit': cluster=slurm but sbatch is not on PATH "
                              "(valid: cluster=local to run the jobs on this machine)")
        self.folder = Path(options.folder or log_dir / "submitit")
        parameters: dict[str, Any] = {
            "timeout_min": options.time_min, "cpus_per_task": options.cpus_per_run,
            "gpus_per_node": options.gpus_per_run or None, "mem_gb": options.mem_gb,
            "nodes": 1, "tasks_per_node": 1, "slurm_partition": options.partition,
            **{f"slurm_{key}": value for key, value in options.slurm.items()},
        }
        try:
            self._executor = submitit.AutoExecutor(folder=self.folder, cluster=options.cluster)
            self._executor.update_parameters(**parameters)
        except (AssertionError, NameError, RuntimeError, TypeError, ValueError) as exc:
            # submitit's first line says what is wrong; the rest lists every name it knows
            first = str(exc).strip().split("\n")[0] or type(exc).__name__
            raise ConfigError(f"executor 'submitit': {one_line(first)}") from None
        except OSError as exc:
            message = f"executor 'submitit': folder {self.folder}: {describe(exc)}"
            raise ConfigError(message) from None
        self.cluster: str = self._executor.cluster
        self._uncompleted = submitit.core.utils.UncompletedJobError
        if self.cluster == "debug":
            self._limit: int | None = 1
        elif jobs is not None:
            self._limit = jobs
        elif self.cluster == "local":
            self._limit = max(1, available_cores() // options.cpus_per_run)
        else:
            self._limit = None  # Slurm queues them
        self._running: dict[Future[Outcome], Any]  # the suite's future -> submitit job
        self.start_pump("harness-submitit")

    # ------------------------------------------------------------------ the Executor API
    @property
    def slots(self) -> int:
        """``--jobs``, else what runs at once here; on Slurm without ``--jobs``, which has no
        bound of its own, the jobs submitted and not yet finished."""
        return self._limit or max(1, len(self._running))

    @property
    def threads(self) -> int:
        return self.options.cpus_per_run

    def close(self) -> None:
        """Drop the jobs not yet submitted. Local jobs run on this machine: wait for them.
        Slurm jobs keep running on the cluster after the suite ends (a later ``harness
        suite`` finds their run directories); their futures stay unresolved."""
        super().close()

    # ------------------------------------------------------------------ the pump thread
    def loop(self) -> None:
        """Owns the waiting jobs and the submitted ones: submits, polls, stops; the suite's
        calls only queue events for it."""
        closing = False
        wait = self.poll_s * (10 if self.cluster == "slurm" else 1)
        while True:
            try:
                event: tuple[Any, ...] | None = self._events.get(timeout=wait)
            except queue.Empty:
                event = None
            while event is not None:
                closing = self._handle(event) or closing
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    event = None
            if self._stopping or closing:
                self.drop_waiting()
            self._collect()
            if closing and (self.cluster == "slurm" or not self._running):
                return
            self._dispatch()

    def _handle(self, event: tuple[Any, ...]) -> bool:
        kind = event[0]
        if kind == "submit":
            self._waiting.append(event[1:])
        elif kind == "stop":
            self._stopping = True
            self.drop_waiting()
            for job in self._running.values():
                self._terminate(job)
        elif kind == "cancelled" and event[1] in self._running:
            self._terminate(self._running[event[1]])
        return kind == "close"

    def _dispatch(self) -> None:
        for job, future in self.ready(self._limit):
            try:
                with _sigint_blocked():  # a local job inherits it: Ctrl-C is for the suite
                    self._executor.update_parameters(name=f"harness:{job.key}")
                    self._running[future] = self._executor.submit(_run_in_job, job)
            except Exception as exc:  # noqa: BLE001 - e.g. sbatch refused: the future's error
                settle(future.set_exception, exc)

    def _collect(self) -> None:
        for future, job in list(self._running.items()):
            try:
                if not job.done():
                    continue
                if (self._stopping and self.cluster != "debug"  # debug: results in memory
                        and not job.paths.result_pickle.exists()):
                    # scancel'ed while pending, or killed: no outcome (and no waiting for one,
                    # as job.result() would for 15 s in case the file system lags)
                    raise self._uncompleted(f"job {job.job_id} stopped without an outcome")
                outcome = job.result()
            except self._uncompleted as exc:  # killed, cancelled, timed out: no result
                if self._stopping:  # dropped before it started, or killed: resumed later
                    future.cancel()
                else:
                    settle(future.set_exception, exc)
            except Exception as exc:  # noqa: BLE001 - the engine's error, not the run's
                settle(future.set_exception, exc)
            else:
                settle(future.set_result, outcome)
            del self._running[future]

    def _terminate(self, job: Any) -> None:
        """Ask a submitted job to stop: SIGTERM to a local job (its controller forwards it to
        the run), ``scancel`` on Slurm (SIGTERM to a running job, a pending one leaves the
        queue); nothing can stop a debug job mid-run."""
        with contextlib.suppress(Exception):  # finished meanwhile
            if self.cluster == "local":
                os.kill(int(job.job_id), signal.SIGTERM)
            else:
                job.cancel(check=False)


# ---------------------------------------------------------------------- in the job
def _run_in_job(job: Job) -> Outcome:
    """What a submitit job runs: ``run_job`` with SIGTERM (``scancel``, ``stop``) and
    submitit's timeout/preemption signal both stopping the run: at its next step boundary
    with a checkpoint while it trains (the trainer's handler), at once before. A local job
    also leaves the terminal's process group, as the ``pool`` executor's workers do."""
    if threading.current_thread() is threading.main_thread():  # not a debug job
        if os.environ.get("SUBMITIT_EXECUTOR") == "local":
            os.setpgid(0, 0)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(_preemption_signal(), _as_sigterm)
    return run_job(job)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _as_sigterm(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def _preemption_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


@contextlib.contextmanager
def _sigint_blocked() -> Any:
    """Block SIGINT in this thread meanwhile: processes started here inherit the mask, so a
    local job's controller (left in the terminal's process group by submitit) never gets the
    terminal's Ctrl-C, whose SIGINT would make it kill the run a second later."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
