"""The ``ray`` and ``submitit`` executors with the real engines on this machine: a local Ray
with 2 CPUs (one for the whole module: it takes seconds to start) and submitit's local
cluster; two tiny runs each, stopping, and the one-line error when the engine is missing."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from pathlib import Path

import pytest

from harness.config import RunConfig
from harness.errors import ConfigError
from harness.jobs import Job, Outcome

TIMEOUT = 120
"""Seconds a test waits for an outcome before failing (not a sleep)."""


def make_job(root: Path, seed: int, steps: int = 5) -> Job:
    """A tiny run; a long one (many steps) checkpoints every 20 steps, which says it trains."""
    cfg = RunConfig(
        dataset="ring", cond="none", steps=steps, eval_samples=200, batch_size=20, threads=1,
        progress=False, out=root / "runs", seed=seed, checkpoint_every=min(steps, 20),
    ).model_dump(mode="json")
    return Job(key=f"ring/none/s{seed}", config=cfg, log=str(root / "logs" / f"{seed}.log"))


def run_status(run_dir: str | None) -> str:
    assert run_dir is not None
    return json.loads((Path(run_dir) / "run.json").read_text())["status"]


def assert_finished(futures: list[Future[Outcome]]) -> None:
    for future in futures:
        outcome = future.result(timeout=TIMEOUT)
        assert outcome.status == "finished", outcome
        assert outcome.error is None
        assert run_status(outcome.run_dir) == "finished"


def wait_training(root: Path, count: int) -> None:
    """Until ``count`` runs under ``root/runs`` have written a checkpoint (so they are in the
    training loop, where a stop checkpoints at the next step boundary)."""
    deadline = time.monotonic() + TIMEOUT
    while len(list((root / "runs").glob("*/checkpoints/last.pt"))) < count:
        assert time.monotonic() < deadline, "the runs never started training"
        time.sleep(0.2)


def assert_interrupted(futures: list[Future[Outcome]], root: Path) -> None:
    """Each run stopped with status ``interrupted`` and a checkpoint of a step after the
    periodic ones (the stop's own, at a step boundary)."""
    for future in futures:
        outcome = future.result(timeout=TIMEOUT)
        assert outcome.status == "interrupted", outcome
    # the run directories, from the disk: run_job's Outcome has none for an interrupted run
    runs = [json.loads(p.read_text()) for p in (root / "runs").glob("*/run.json")]
    stopped = [run for run in runs if run["status"] == "interrupted"]
    assert len(stopped) == len(futures), runs
    for run in stopped:
        assert run["checkpoint_step"] == run["step"] > 0, run


def assert_dropped(future: Future[Outcome]) -> None:
    with pytest.raises(CancelledError):
        future.result(timeout=TIMEOUT)
    assert future.cancelled()


# ----------------------------------------------------------------------------- missing engines
@pytest.mark.parametrize(("name", "module", "extra"), [
    ("ray_tasks", "ray", "ray"), ("slurm", "submitit", "submitit"),
])
def test_missing_engine_is_one_line_naming_the_extra(
    name: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib

    executors = importlib.import_module(f"harness_plugins.executors.{name}")
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` now raises ImportError
    cls = executors.Ray if module == "ray" else executors.Submitit
    assert cls.extra == extra
    with pytest.raises(ConfigError) as info:
        cls(cls.Options(), None, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"pip install 'gan-harness[{extra}]'" in message
    assert f"executor '{module}'" in message


def test_ray_num_cpus_only_for_a_local_ray() -> None:
    from harness_plugins.executors.ray_tasks import RayOptions

    with pytest.raises(ValueError, match="num_cpus"):
        RayOptions(address="auto", num_cpus=2)
    assert RayOptions(num_cpus=2).cpus_per_run == 1


# ----------------------------------------------------------------------------- ray
@pytest.fixture(scope="module")
def ray_executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    pytest.importorskip("ray")
    from harness_plugins.executors.ray_tasks import Ray, RayOptions

    before = signal.getsignal(signal.SIGTERM)
    executor = Ray(RayOptions(num_cpus=2), None, tmp_path_factory.mktemp("ray-logs"))
    # ray.init installs its own SIGTERM handler (exit at once); the executor puts ours back
    assert signal.getsignal(signal.SIGTERM) is before
    yield executor
    executor.close()


def test_ray_runs_two_jobs(ray_executor: object, tmp_path: Path) -> None:
    assert ray_executor.slots == 2
    assert ray_executor.threads == 1
    assert_finished([ray_executor.submit(make_job(tmp_path, seed)) for seed in (0, 1)])
    assert (tmp_path / "logs" / "0.log").read_text().count("job ring/none/s0: finished") == 1


def test_ray_stop_interrupts_running_and_drops_waiting(
    ray_executor: object, tmp_path: Path
) -> None:
    """Last of the Ray tests: a stopped executor takes no more jobs. Two long runs fill the
    2 CPUs, a third waits in Ray's queue; stop interrupts the two (checkpointed) and drops the
    third."""
    futures = [ray_executor.submit(make_job(tmp_path, seed, steps=10**6)) for seed in (0, 1, 2)]
    wait_training(tmp_path, 2)
    ray_executor.stop()
    assert_interrupted(futures[:2], tmp_path)
    assert_dropped(futures[2])
    assert_dropped(ray_executor.submit(make_job(tmp_path, 3)))


# ----------------------------------------------------------------------------- submitit
def submitit_executor(tmp_path: Path, jobs: int | None, **options: object) -> object:
    pytest.importorskip("submitit")
    from harness_plugins.executors.slurm import Submitit, SubmititOptions

    settings = SubmititOptions(**{"cluster": "local", **options})
    return Submitit(settings, jobs, tmp_path / "executor")


def test_submitit_local_runs_two_jobs(tmp_path: Path) -> None:
    executor = submitit_executor(tmp_path, None)
    try:
        assert executor.cluster == "local"
        assert executor.slots >= 1
        assert executor.threads == 1
        assert_finished([executor.submit(make_job(tmp_path, seed)) for seed in (0, 1)])
    finally:
        executor.close()
    assert list((tmp_path / "executor" / "submitit").glob("*_log.err"))  # submitit's own logs


def test_submitit_debug_runs_in_process(tmp_path: Path) -> None:
    executor = submitit_executor(tmp_path, 4, cluster="debug")
    try:
        assert executor.slots == 1
        assert_finished([executor.submit(make_job(tmp_path, 0))])
    finally:
        executor.close()


def test_submitit_bad_setting_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        submitit_executor(tmp_path, None, slurm={"nonsense": 1})
    assert str(info.value).startswith("executor 'submitit': Unknown argument 'nonsense'")
    assert "\n" not in str(info.value)


def test_submitit_local_stop(tmp_path: Path) -> None:
    """``--jobs 1``: one long run goes to submitit, the second waits here; stop interrupts
    the first (checkpointed, through one SIGTERM) and drops the second."""
    executor = submitit_executor(tmp_path, 1)
    try:
        assert executor.slots == 1
        first, second = (executor.submit(make_job(tmp_path, s, steps=10**6)) for s in (0, 1))
        wait_training(tmp_path, 1)
        executor.stop()
        assert_interrupted([first], tmp_path)
        assert_dropped(second)
    finally:
        executor.close()
