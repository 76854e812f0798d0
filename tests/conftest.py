"""Shared fixtures: the plugin manager, fast run settings, and an in-process CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import main
from harness.manager import PluginManager, get_plugin_manager

FAST = [
    "--steps", "30", "--eval-samples", "2000", "--no-progress", "--log-every", "10",
    "--dataset-opt", "size=2000",
]
"""CLI flags for a run that takes a second or two on a laptop CPU."""


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def pm() -> PluginManager:
    return get_plugin_manager()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    def invoke(*args: str | Path) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return invoke
