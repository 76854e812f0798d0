"""``harness`` sub-commands defined outside ``harness/cli.py``, one module each.

Every module of this package is a command: it defines ``add_parser(commands)``, which adds
its sub-parser to ``commands`` (the ``argparse`` sub-parsers of ``harness``, whose parser
class reports usage errors in one line) and sets ``handler=`` with ``set_defaults``: a
function ``(args) -> exit code`` that raises ``HarnessError`` for bad input (one line, exit
code 2). A module must import nothing heavy (torch, pandas) at module level: the parser of
every command is built for ``harness --help`` and ``harness --version``, so the heavy
imports belong inside the handler.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any


def add_parsers(commands: Any) -> None:
    """Add every command module's sub-parser to ``commands``, in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").add_parser(commands)
