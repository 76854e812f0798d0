"""Shared fixtures: the plugin manager, fast run settings, and an in-process CLI."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from harness import hookimpl
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


@pytest.fixture(scope="session", autouse=True)
def harness_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A per-session cache dir: tests never write to ``~/.cache``; the digit classifier
    trains once per session."""
    path = tmp_path_factory.mktemp("harness-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def idle_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's load is not the tests' input: runs see an idle CPU (no busy-CPU note in
    their output; ``test_a_busy_cpu_is_noted...`` sets its own load)."""
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no warning given yet (each is given once per process) and no
    note of an earlier test's refused build pending."""
    monkeypatch.setattr("harness.build._warned", set())
    monkeypatch.setattr("harness.build._pending_notes", [])


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


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


class StopAt:
    """A lifecycle plugin that asks the run to stop, as Ctrl-C does."""

    def __init__(self, step: int) -> None:
        self.step = step

    @hookimpl
    def harness_step_end(self, run, step, losses):
        if step == self.step:
            run.stop_requested = True


def assert_resume_is_exact(
    cli: Callable[..., CliResult], pm: PluginManager, tmp_path: Path, args: list, stop_at: int
) -> Path:
    """Run ``args`` straight and interrupted at ``stop_at`` then resumed: same metrics and
    weights (G, D and the EMA copy). Returns the resumed run's directory."""
    assert cli(*args, "--out", tmp_path / "straight").code == 0
    pm.register(StopAt(stop_at), name="stop-at")
    try:
        stopped = cli(*args, "--out", tmp_path / "resumed")
    finally:
        pm.unregister(name="stop-at")
    assert stopped.code == 130 and "--resume" in stopped.err
    run_dir = only_run(tmp_path / "resumed")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == stop_at
    assert cli("run", "--resume", run_dir, "--no-progress").code == 0
    straight = only_run(tmp_path / "straight")
    assert (run_dir / "metrics.json").read_text() == (straight / "metrics.json").read_text()
    a, b = (
        torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (run_dir, straight)
    )
    for net in ("generator", "discriminator", "ema"):
        assert (a[net] is None) == (b[net] is None), net
        for key in a[net] or {}:
            assert torch.equal(a[net][key], b[net][key]), (net, key)
    assert cli("run", "--resume", run_dir).code == 2  # already finished
    return run_dir
