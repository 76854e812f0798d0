"""Executor ``ray``: each run of a suite is one Ray task (``pip install 'gan-harness[ray]'``).

Where runs execute: with ``address`` unset, on a local Ray that the executor starts on this
machine for the suite and stops at its end (``num_cpus`` caps its CPUs); with ``address``, on
the workers of a running cluster (``auto``: the cluster this machine joined with ``ray start``;
``ray://HOST:10001``: a remote one through Ray Client). A cluster's nodes need gan-harness
(and any plugin package the runs use) installed and the results folder, ``out`` of the runs'
configs, at the same absolute path: the runs write their directories there, nothing comes
back through Ray but each run's small ``Outcome``. A Ray that this process already started
(``ray.init`` before the suite) is used as it is and left running.

Each task reserves ``cpus_per_run`` CPUs (also the run's torch threads) and ``gpus_per_run``
GPUs, and is never retried (``max_retries=0``): a failed run is an outcome, not a Ray error.
With ``--jobs N`` at most N tasks are handed to Ray at once and the rest wait in this process;
without it every task goes to Ray at once and Ray's scheduler runs as many as the cluster's
resources allow (``slots`` reports the cluster's CPUs // ``cpus_per_run``, fewer if GPUs bind).

Stopping (Ctrl-C/SIGTERM in the suite): the jobs still waiting here and the tasks Ray has not
started are dropped, their futures cancelled; each running task is cancelled with
``ray.cancel(force=False)``, which interrupts its worker's main thread like a SIGINT: the run
checkpoints at its next step boundary and ends ``interrupted``. Ray's workers lead their own
process groups, so a Ctrl-C in the terminal reaches the suite only, not the runs.
``ray.init`` replaces the process's SIGTERM handler (exit at once); the executor puts the
previous one back. A job's future stays pending (``running()`` is False) until its outcome or
its cancellation, as a not-started job's does in a process pool.

Ray's output stays off the terminal: no dashboard, workers' output not forwarded
(``log_to_driver=False``; each run writes its own log), Ray's logger at WARNING, and its
warning that a new local Ray uses token authentication (Ray's default; the token is
``~/.ray/auth_token``) silenced. It works offline.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from harness.api import Options
from harness.errors import ConfigError, HarnessError, describe
from harness.jobs import Outcome, run_job
from harness_plugins.executors.queued import Queued, settle


class RayOptions(Options):
    address: str | None = Field(
        None, min_length=1, max_length=1000,
        description="Ray cluster to run on: unset starts a local Ray on this machine for the "
                    "suite; 'auto' joins the cluster this machine belongs to; "
                    "'ray://HOST:10001' connects through Ray Client",
    )
    cpus_per_run: int = Field(
        1, ge=1, le=1024, description="CPUs Ray reserves for each run; also its torch threads",
    )
    gpus_per_run: float = Field(
        0, ge=0, le=64, description="GPUs Ray reserves for each run (fractions share a GPU)",
    )
    num_cpus: int | None = Field(
        None, ge=1, le=65_536,
        description="CPUs of the local Ray (only with address unset); default: all cores",
    )

    @model_validator(mode="after")
    def _local_only(self) -> RayOptions:
        if self.num_cpus is not None and self.address is not None:
            raise ValueError("num_cpus sizes the local Ray that an unset address starts; "
                             "a running cluster has its own")
        return self


class Ray(Queued):
    """Each run is a Ray task (pip install 'gan-harness[ray]'): on a local Ray started for the
    suite on this machine, or on the running cluster at ``address``; a task reserves
    ``cpus_per_run`` CPUs (its torch threads) and ``gpus_per_run`` GPUs. ``--jobs N`` hands at
    most N tasks to Ray at once (default: all; Ray runs what the cluster holds). Stopping drops
    the tasks not started and interrupts the running ones: they checkpoint, status interrupted.

    More in the module's docstring: what the cluster's nodes need, Ray's output, Ctrl-C.
    """

    Options = RayOptions
    extra = "ray"

    def __init__(self, options: RayOptions, jobs: int | None, log_dir: Path) -> None:
        super().__init__(options, jobs, log_dir)
        try:
            import ray
        except ImportError:
            raise ConfigError("executor 'ray' needs Ray: pip install 'gan-harness[ray]'") from None
        self._ray = ray
        self._owned = not ray.is_initialized()
        if self._owned:
            self._start()
        try:
            self._capacity = self._check_resources()
            self._task = ray.remote(
                num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run, max_retries=0,
            )(run_job)
        except BaseException:
            self._shutdown()
            raise
        self._running: dict[Any, Future[Outcome]]  # ObjectRef -> the suite's future
        self.start_pump("harness-ray")

    # ------------------------------------------------------------------ the Executor API
    @property
    def slots(self) -> int:
        return self.jobs or self._capacity

    @property
    def threads(self) -> int:
        return self.options.cpus_per_run

    def close(self) -> None:
        """Drop the jobs not yet handed to Ray, wait for the running tasks (shutting Ray down
        would kill them mid-step), then shut down the Ray connection this executor opened."""
        super().close()
        self._shutdown()

    # ------------------------------------------------------------------ starting Ray
    def _start(self) -> None:
        ray, options = self._ray, self.options
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if options.address is None:
            # "local": a new Ray even if RAY_ADDRESS names a running one
            kwargs.update(address="local", include_dashboard=False, num_cpus=options.num_cpus)
            where = "start a local Ray"
        else:
            kwargs["address"] = options.address
            where = f"connect to the Ray cluster at {options.address}"
            check_reachable(options.address)
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            with _quiet(_TOKEN_LOGGER):
                ray.init(**kwargs)
        except Exception as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            raise HarnessError(f"executor 'ray' could not {where}: {describe(exc)}") from exc
        finally:
            # ray.init replaces the process's SIGTERM handler with one that exits at once; the
            # suite's own (stop the runs, let them checkpoint) must stay in charge
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def _check_resources(self) -> int:
        """How many runs the cluster holds at once; a local Ray that cannot hold one is an
        error (a remote cluster may still grow, through its autoscaler)."""
        options = self.options
        resources = self._ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        capacity = int(cpus // options.cpus_per_run)
        if options.gpus_per_run:
            capacity = min(capacity, int(gpus // options.gpus_per_run))
        if capacity < 1 and self._owned and options.address is None:
            raise ConfigError(
                f"executor 'ray': a run needs {options.cpus_per_run} CPUs and "
                f"{options.gpus_per_run:g} GPUs but the local Ray has {cpus:g} CPUs and "
                f"{gpus:g} GPUs (valid: cpus_per_run <= num_cpus, gpus_per_run <= the GPUs)"
            )
        return max(1, capacity)

    def _shutdown(self) -> None:
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()

    # ------------------------------------------------------------------ the pump thread
    def loop(self) -> None:
        """Owns the queue of waiting jobs and the running tasks: every submission, finished
        task, stop and cancellation arrives here as an event, so no Ray call runs in Ray's
        own callback threads and no lock is needed."""
        closing = False
        while not (closing and not self._running):
            event = self._events.get()
            kind = event[0]
            if kind == "submit":
                self._waiting.append(event[1:])
            elif kind == "finished":
                self._finished(*event[1:])
            elif kind == "cancelled":
                self._cancelled(event[1])
            elif kind == "stop":
                self._halt()
            elif kind == "close":
                closing = True
                self.drop_waiting()
            if self._stopping or closing:
                self.drop_waiting()
            else:
                self._dispatch()

    def _dispatch(self) -> None:
        for job, future in self.ready(self.jobs):
            try:
                ref = self._task.options(name=job.key).remote(job)
            except Exception as exc:  # noqa: BLE001 - Ray's own failure is the future's
                settle(future.set_exception, exc)
                continue
            self._running[ref] = future
            ref.future().add_done_callback(
                lambda done, ref=ref: self._events.put(("finished", ref, done)))

    def _finished(self, ref: Any, done: Future[Outcome]) -> None:
        future = self._running.pop(ref)
        try:
            outcome = done.result()
        except self._ray.exceptions.TaskCancelledError:  # stopped before it started
            future.cancel()
        except BaseException as exc:  # noqa: BLE001 - e.g. the worker died: the engine's error
            settle(future.set_exception, exc)
        else:
            settle(future.set_result, outcome)

    def _halt(self) -> None:
        self._stopping = True
        self.drop_waiting()
        for ref in self._running:
            with contextlib.suppress(Exception):  # finished meanwhile
                self._ray.cancel(ref, force=False)

    def _cancelled(self, future: Future[Outcome]) -> None:
        """The suite cancelled a future whose task is running: stop that run (it
        checkpoints); its outcome is then dropped."""
        for ref, running in self._running.items():
            if running is future:
                with contextlib.suppress(Exception):
                    self._ray.cancel(ref, force=False)


_TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Where Ray warns, on every start of a local Ray, that it enabled token authentication."""


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Only errors from logger ``name`` meanwhile."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line when ``HOST:PORT`` (or ``ray://HOST:PORT``) does not accept a TCP
    connection within ``timeout_s``: ``ray.init`` would otherwise retry for minutes.
    ``auto`` and other forms are left to Ray, which fails fast on them."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host or "localhost", int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"executor 'ray': cannot reach a Ray cluster at {address} "
                          f"({reason}) (valid: address=auto on a node of a running cluster, "
                          "HOST:6379 of its head, ray://HOST:10001, or unset for a local Ray)"
                          ) from None
