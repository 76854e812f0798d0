"""What the ``ray`` and ``submitit`` executors share: the suite's calls only queue events;
one thread of the executor's own (the pump) owns the jobs waiting to be handed to the engine
and those running there, so no engine call runs in the engine's callback threads and no lock
is needed."""

from __future__ import annotations

import contextlib
import queue
import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

from harness.api import Executor, Options
from harness.jobs import Job, Outcome


class Queued(Executor):
    """An executor whose pump thread runs ``loop`` over the events ``submit``, ``stop``,
    ``cancelled`` (the suite cancelled a job's future) and ``close``.

    Subclasses call ``start_pump`` at the end of ``__init__`` and implement ``loop``.
    """

    def __init__(self, options: Options, jobs: int | None, log_dir: Path) -> None:
        super().__init__(options, jobs, log_dir)
        self._events: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._waiting: deque[tuple[Job, Future[Outcome]]] = deque()
        self._running: dict[Any, Any] = {}
        """The jobs handed to the engine, keyed as the subclass needs."""
        self._stopping = False
        self._pump: threading.Thread | None = None

    def start_pump(self, name: str) -> None:
        self._pump = threading.Thread(target=self.loop, name=name, daemon=True)
        self._pump.start()

    @abstractmethod
    def loop(self) -> None:
        """The pump: handle events until ``close`` and the running jobs allow it to end."""

    def submit(self, job: Job) -> Future[Outcome]:
        future: Future[Outcome] = Future()
        future.add_done_callback(self._on_done)
        self._events.put(("submit", job, future))
        return future

    def stop(self) -> None:
        self._events.put(("stop",))  # SimpleQueue.put is reentrant: safe in a signal handler

    def close(self) -> None:
        """End the pump: it drops the waiting jobs and ends as ``loop`` decides."""
        if self._pump is not None and self._pump.is_alive():
            self._events.put(("close",))
            self._pump.join()

    def ready(self, limit: int | None) -> Iterator[tuple[Job, Future[Outcome]]]:
        """The waiting jobs to hand to the engine now, oldest first, while fewer than
        ``limit`` run (None: no bound); those the suite cancelled meanwhile are dropped.
        The caller adds each job it starts to ``_running`` before taking the next."""
        while self._waiting and (limit is None or len(self._running) < limit):
            job, future = self._waiting.popleft()
            if not future.cancelled():
                yield job, future

    def drop_waiting(self) -> None:
        """Cancel the futures of the jobs not yet handed to the engine."""
        while self._waiting:
            self._waiting.popleft()[1].cancel()

    def _on_done(self, future: Future[Outcome]) -> None:
        if future.cancelled():
            # what ProcessPoolExecutor does for a cancelled future: wake wait()/as_completed()
            future.set_running_or_notify_cancel()
            self._events.put(("cancelled", future))


def settle(setter: Any, value: Any) -> None:
    """Resolve a future unless the suite cancelled it meanwhile."""
    with contextlib.suppress(InvalidStateError):
        setter(value)
