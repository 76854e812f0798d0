"""SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, cluster schedulers) handled alike."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[str] = []
"""The names of the stop signals ``raise_interrupt`` handled, oldest first: a record that
code which catches ``KeyboardInterrupt`` and goes on (matplotlib's import of its 3-D
toolkit only warns) cannot erase."""


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[bool]:
    """Install ``handler`` for SIGINT and SIGTERM meanwhile, then restore the previous
    handlers. Python delivers signals to the main thread only, so elsewhere nothing is
    installed; the context's value says whether it was."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield True
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def raise_interrupt(signum: int, frame: Any) -> None:
    """A handler: ``KeyboardInterrupt`` at once, whichever of the two signals came; its
    argument names the signal (``exit_code`` reads it). The signal is also recorded, for
    ``raise_if_stopped``."""
    name = signal.Signals(signum).name
    _received.append(name)
    raise KeyboardInterrupt(name)


def stops_so_far() -> int:
    """A point to give ``raise_if_stopped`` later: how many stop signals ``raise_interrupt``
    has handled so far."""
    return len(_received)


def raise_if_stopped(since: int) -> None:
    """``KeyboardInterrupt`` naming the latest stop signal if ``raise_interrupt`` handled one
    after the point ``since`` (from ``stops_so_far``), even one whose ``KeyboardInterrupt``
    was caught and swallowed meanwhile; nothing otherwise."""
    if len(_received) > since:
        raise KeyboardInterrupt(_received[-1])


def signal_of(interrupt: KeyboardInterrupt) -> str | None:
    """The signal ``raise_interrupt`` named in ``interrupt`` (None for a plain Ctrl-C's)."""
    name = interrupt.args[0] if interrupt.args else None
    return name if name in {sig.name for sig in STOP_SIGNALS} else None


def exit_code(signal_name: str | None) -> int:
    """The shell's exit code of a process stopped by ``signal_name``: 143 for SIGTERM, 130
    for SIGINT (Ctrl-C) and for a stop that names no signal."""
    return 128 + (signal.SIGTERM if signal_name == "SIGTERM" else signal.SIGINT)


def report_interrupt(interrupt: KeyboardInterrupt, after: str = "") -> int:
    """Say on stderr that ``interrupt`` stopped the command (``interrupted (SIGTERM)``, then
    ``after``); returns its exit code (``exit_code``)."""
    name = signal_of(interrupt)
    print(f"\ninterrupted ({name or 'SIGINT'}){after}", file=sys.stderr)
    return exit_code(name)
