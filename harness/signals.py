"""SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, cluster schedulers) handled alike."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    """A handler: ``KeyboardInterrupt`` at once, whichever of the two signals came."""
    raise KeyboardInterrupt
