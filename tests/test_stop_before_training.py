"""A signal before training starts (building runs, making their directories, a group's
set-up): acted on at once, as Ctrl-C; runs that started are ``interrupted`` and resumable,
new directories of runs that never started are removed and their seeds named."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from harness import hookimpl, results, runner, seeds
from harness.jobs import Job, run_job
from tests.conftest import FAST
from tests.test_replicas import SMALL, registered, runs_dirs

GROUP = ["run", *FAST, *SMALL, "--steps", "3", "--seeds", "0-2", "--vectorise", "yes"]


def statuses(out: Path) -> list[str]:
    return [json.loads((d / "run.json").read_text())["status"] for d in runs_dirs(out)]


def failing_on_call(function, n: int, signal_name: str):
    """``function``, raising ``KeyboardInterrupt(signal_name)`` (as the harness's handler
    does for that signal) on its ``n``-th call instead of running."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt(signal_name)
        return function(*args, **kwargs)

    return wrapper


class SigtermInSetup:
    """Sends this process SIGTERM when seed 1's run starts (before any replica's set-up)."""

    @hookimpl
    def harness_run_started(self, run):
        if run.config.seed == 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_in_a_groups_setup_interrupts_every_run_at_once(cli, pm, tmp_path):
    with registered(pm, SigtermInSetup(), "sigterm"):
        stopped = cli(*GROUP, "--out", tmp_path)
    assert stopped.code == 143, stopped.err
    assert statuses(tmp_path) == ["interrupted"] * 3  # none left "running"
    assert "interrupted (SIGTERM)" in stopped.err
    assert stopped.err.count("before its first checkpoint") == 3
    dirs = runs_dirs(tmp_path)
    assert f"--resume {' '.join(map(str, dirs))} --vectorise yes" in stopped.err
    assert cli("run", "--resume", *dirs, "--vectorise", "yes").code == 0
    assert statuses(tmp_path) == ["finished"] * 3


def test_a_signal_while_a_groups_directories_are_made_leaves_none(
        cli, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "create_run_dir",
                        failing_on_call(results.create_run_dir, 3, "SIGTERM"))
    stopped = cli(*GROUP, "--out", tmp_path)
    assert stopped.code == 143, stopped.err
    assert runs_dirs(tmp_path) == []  # the two made before the signal are removed
    assert "not started: seeds 0-2" in stopped.err and "Traceback" not in stopped.err


def test_a_signal_while_a_groups_runs_start_keeps_the_started_ones(
        cli, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "start", failing_on_call(runner.start, 3, "SIGINT"))
    stopped = cli(*GROUP, "--out", tmp_path)
    assert stopped.code == 130, stopped.err
    assert statuses(tmp_path) == ["interrupted"] * 2
    first, second = runs_dirs(tmp_path)
    assert f"--resume {first} {second} --vectorise yes" in stopped.err
    assert "not started: seeds 2 " in stopped.err


def test_a_signal_before_a_run_starts_leaves_no_directory(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "start", failing_on_call(runner.start, 1, "SIGTERM"))
    stopped = cli("run", *FAST, "--out", tmp_path)
    assert stopped.code == 143, stopped.err
    assert runs_dirs(tmp_path) == []
    assert "interrupted (SIGTERM) before the run started" in stopped.err
    assert "--resume" not in stopped.err


def test_a_signal_while_the_next_seed_is_built_names_the_seeds_left(
        cli, tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "build_run", failing_on_call(seeds.build_run, 2, "SIGTERM"))
    stopped = cli("run", *FAST, "--steps", "3", "--seeds", "0-2", "--vectorise", "no",
                  "--out", tmp_path)
    assert stopped.code == 143, stopped.err
    assert statuses(tmp_path) == ["finished"]  # seed 0, before the signal
    assert "not started: seeds 1-2" in stopped.err


@pytest.mark.parametrize(("together", "where"), [(False, "start"), (True, "start"),
                                                 (True, "build")])
def test_a_suite_job_stopped_before_its_run_starts_leaves_no_directory(
        tmp_path, monkeypatch, together, where):
    if where == "start":
        monkeypatch.setattr(runner, "start", failing_on_call(runner.start, 1, "SIGTERM"))
    else:  # while the group's second run is built
        monkeypatch.setattr(seeds, "build_run", failing_on_call(seeds.build_run, 2, "SIGTERM"))
    config = {"dataset": "ring", "cond": "none", "steps": 3, "eval_samples": 200,
              "batch_size": 20, "threads": 1, "progress": False, "out": str(tmp_path / "runs"),
              "seed": 0, "checkpoint_every": 3}
    job = Job(key="ring/none/s0", config=config, log=str(tmp_path / "job.log"),
              together=(("ring/none/s1", {**config, "seed": 1}),) if together else ())
    outcome = run_job(job)
    assert outcome.status == "interrupted"
    assert all(m.run_dir is None and m.status == "interrupted" for m in outcome.runs())
    assert not (tmp_path / "runs").exists() or runs_dirs(tmp_path / "runs") == []


def test_a_signal_while_a_groups_runs_are_built_names_every_seed(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "build_run", failing_on_call(seeds.build_run, 2, "SIGINT"))
    stopped = cli(*GROUP, "--out", tmp_path)
    assert stopped.code == 130, stopped.err
    assert not tmp_path.exists() or runs_dirs(tmp_path) == []
    assert "interrupted (SIGINT) while the runs were built" in stopped.err
    assert "not started: seeds 0-2" in stopped.err
