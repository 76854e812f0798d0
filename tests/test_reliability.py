"""Reliability battery (issue 8): bad input, faults and interrupts never give a traceback, a
half-checked run directory or a wrong result.

``BAD_INPUT`` is the table of inputs refused before anything is written: each must exit 2
with one ``error:`` line holding the listed texts, and leave no run directory. The other
tests cover runs that start and then fail, stop or resume: status, messages and results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import hookimpl
from harness.config import INCEPTION_WEIGHTS_ENV
from harness.results import CHECKPOINT, RunLock
from tests.conftest import FAST, StopAt, only_run

BASE = FAST[: FAST.index("--dataset-opt")]
"""FAST without the ring's ``size`` option, so that any dataset can be named."""
KMEANS = ["--cond-opt", "k=10", "--cond-opt", "subset=500", "--cond-opt", "n_init=2",
          "--cond-opt", "recluster_every=10"]
DIGITS = ["--dataset", "digits", "--backbone", "dcgan", "--cond", "none", "--metrics",
          "fid_digits", "--eval-samples", "200"]


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data)
    return path


def nine_images(root: Path, classes: bool = False) -> Path:
    """A folder of 9 small PNGs, flat or in two class subfolders."""
    for i in range(9):
        path = root / "imgs" / ("ab"[i % 2] if classes else "") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(path)
    return root / "imgs"


# (flags, texts the one error line must contain); a callable builds flags from tmp_path.
BAD_INPUT: dict[str, tuple[list[str] | Callable[[Path], list[str]], list[str]]] = {
    "seed not an int": (["--seed", "1e23"], ["--seed", "is not a whole number", "'1e23'"]),
    "seed too large": (["--seed", str(10**30)], ["seed", "less than or equal to 4294967295"]),
    "negative steps": (["--steps", "-5"], ["steps=-5"]),
    "NaN learning rate": (["--lr-g", "nan"], ["lr_g", "finite"]),
    "infinite option": (["--prior", "gmm", "--prior-opt", "sigma=Infinity"], ["sigma", "finite"]),
    "batch of 1 with BatchNorm": (["--batch-size", "1"], ["--batch-size 1", "2 or more"]),
    "k above clustered points": (
        ["--cond-opt", "k=50", "--cond-opt", "subset=20", "--cond-opt", "recluster_every=5"],
        ["k=50", "20"],
    ),
    "9 images, default k": (
        lambda tmp: ["--dataset", "image_folder", "--dataset-opt",
                     f"path={nine_images(tmp, classes=True)}", "--backbone", "dcgan",
                     "--dataset-opt", "resolution=16"],
        ["k=50", "9"],
    ),
    "empty metric list": (["--metrics", ","], ["no metrics", "modes_2d"]),
    "empty logger list": (["--log", " , "], ["names no logger", "tensorboard,wandb"]),
    "no metric applies": (
        lambda tmp: ["--dataset", "image_folder", "--dataset-opt", f"path={nine_images(tmp)}",
                     "--dataset-opt", "resolution=16", "--backbone", "dcgan", "--cond", "none"],
        ["no metric applies"],
    ),
    "IS splits above samples": (
        [*DIGITS, "--metric-opt", "fid_digits.samples=5"], ["isc_splits", "samples"]),
    "PRC neighbourhood above samples": (
        [*DIGITS, "--metric-opt", "fid_digits.samples=3", "--metric-opt",
         "fid_digits.isc_splits=1"], ["prc_neighborhood"]),
    "garbage Inception weights": (
        lambda tmp: ["--dataset", "digits", "--backbone", "dcgan", "--cond", "none",
                     "--metrics", "fid_inception", "--inception-weights",
                     str(write(tmp / "w.pth", b"not a checkpoint"))],
        ["w.pth"],
    ),
    "--out is a file": (lambda tmp: ["--out", str(write(tmp / "f", "x"))], ["--out", "file"]),
    "--out under a file": (
        lambda tmp: ["--out", str(write(tmp / "f", "x") / "runs")], ["--out", "not a folder"]),
    "config is a directory": (lambda tmp: ["--config", str(tmp)], ["is a directory"]),
    "config not UTF-8": (
        lambda tmp: ["--config", str(write(tmp / "c.toml", b"steps = 5\n\xff\xfe"))],
        ["not UTF-8"],
    ),
    "config is a JSON list": (
        lambda tmp: ["--config", str(write(tmp / "c.json", "[1, 2]"))], ["JSON list"]),
    "options not a table": (
        lambda tmp: ["--config", str(write(tmp / "c.toml", 'prior = "gmm"\nprior_options = 5\n')),
                     "--prior-opt", "sigma=1"],
        ["prior_options", "5", "table"],
    ),
    "eval samples beyond memory": (["--eval-samples", str(10**13)], ["--eval-samples", "GiB"]),
    "case slip": (["--backbone", "MLP"], ["Did you mean 'mlp'"]),
    "singular family name": (["--loss", "hing"], ["unknown loss 'hing'", "hinge"]),
    "bad --metric-opt": (["--metric-opt", "samples=5"], ["METRIC.KEY=VALUE"]),
    "unknown flag": (["--stpes", "5"], ["unrecognized arguments: --stpes"]),
    "no CUDA": (["--device", "cuda"], ["cuda"]) if not torch.cuda.is_available() else (
        ["--device", "tpu"], ["tpu"]),
    "huge width": (["--backbone-opt", "g_width=100000000"], ["g_width", "16384"]),
    "networks beyond memory": (["--backbone-opt", "g_width=16384", "--backbone-opt",
                                "g_layers=64"], ["backbone 'mlp'", "parameters", "GiB"]),
    "--out not writable": (["--out", "/proc/harness-test"], ["--out", "cannot be written"]),
    "empty path": (["--out", ""], ["--out", "empty path"]),
    "boolean for a number": (["--cond-opt", "k=true"], ["k=True", "not a number"]),
    "data beyond float range": (["--dataset-opt", "radius=1e300"], ["radius", "1000000"]),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2_in_one_line_and_writes_nothing(cli, tmp_path, monkeypatch, case):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, "")  # --inception-weights sets it in-process
    flags, expected = BAD_INPUT[case]
    flags = flags(tmp_path) if callable(flags) else flags
    out = tmp_path / "out"
    result = cli("run", *BASE, "--out", out, *flags)  # a later --out wins
    lines = [line for line in result.err.splitlines() if line.strip()]
    errors = [line for line in lines if not line.startswith("warning:")]
    assert result.code == 2, result.err
    assert len(errors) == 1 and errors[0].startswith("error: "), result.err
    for text in expected:
        assert text in errors[0], (text, errors[0])
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_cache_dir_is_refused_before_training(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(write(tmp_path / "file", "x") / "cache"))
    result = cli("run", *BASE, *DIGITS, "--out", tmp_path / "out")
    assert result.code == 2 and "cache" in result.err.lower()
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- divergence
def test_diverged_run_fails_at_that_step_and_is_never_counted(cli, tmp_path):
    result = cli("run", *FAST, *KMEANS, "--lr-g", "1e30", "--lr-d", "1e30", "--log-every", "1",
                 "--out", tmp_path)
    assert result.code == 1
    (line,) = [x for x in result.err.splitlines() if x.startswith("error:")]
    assert "diverged at step" in line and "non-finite losses" in line
    run_dir = only_run(tmp_path)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and "diverged" in info["error"]
    assert not (run_dir / "metrics.json").exists()
    for path in run_dir.glob("*.json*"):
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path]:
            text = line if isinstance(line, str) else line.read_text()
            json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert "(no finished runs)" in cli("leaderboard", tmp_path).out


def test_divergence_after_a_checkpoint_keeps_it(cli, pm, tmp_path):
    class Explode:
        @hookimpl
        def harness_step_end(self, run, step, losses):
            if step == 12:
                with torch.no_grad():
                    for p in run.discriminator.parameters():
                        p.fill_(float("inf"))

    pm.register(Explode(), name="explode")
    try:
        result = cli("run", *FAST, *KMEANS, "--checkpoint-every", "10", "--out", tmp_path)
    finally:
        pm.unregister(name="explode")
    assert result.code == 1 and "diverged at step 13" in result.err
    assert "last finite losses at step 12" in result.err
    assert "checkpoint of step 10 is kept" in result.err
    state = torch.load(only_run(tmp_path) / CHECKPOINT, weights_only=True)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["discriminator"].values())


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def interrupted(cli, pm, tmp_path) -> Path:
    """A ring run stopped (and checkpointed) at step 20 of 30."""
    pm.register(StopAt(20), name="stop-at")
    try:
        assert cli("run", *FAST, *KMEANS, "--out", tmp_path / "stopped").code == 130
    finally:
        pm.unregister(name="stop-at")
    return only_run(tmp_path / "stopped")


def test_foreign_checkpoint_is_refused(cli, tmp_path, interrupted):
    other = ["run", *FAST, *KMEANS, "--dataset", "grid", "--seed", "7", "--steps", "20",
             "--out", tmp_path / "other"]
    assert cli(*other).code == 0
    (interrupted / CHECKPOINT).write_bytes((only_run(tmp_path / "other") / CHECKPOINT).read_bytes())
    result = cli("run", "--resume", interrupted)
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert "belongs to another run" in result.err and "grid" in result.err
    assert "seed 7" in result.err and "Traceback" not in result.err
    assert json.loads((interrupted / "run.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "text", "other architecture",
                                    "no identity"])
def test_damaged_checkpoint_is_one_line(cli, interrupted, damage):
    path = interrupted / CHECKPOINT
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif damage == "text":
        path.write_text("hello\n")
    else:
        state = torch.load(path, weights_only=True)
        if damage == "other architecture":
            state["generator"] = {k: torch.zeros(3, 3) for k in state["generator"]}
        else:
            del state["identity"]
        torch.save(state, path)
    result = cli("run", "--resume", interrupted)
    assert result.code == 2, result.err
    errors = [line for line in result.err.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), result.err
    expected = {"truncated": "not a readable", "random bytes": "not a readable",
                "text": "not a readable",
                "other architecture": "does not fit", "no identity": "format"}[damage]
    assert expected in errors[0]


@pytest.mark.parametrize(("flags", "expected"), [
    (["--cond-opt", "k=20"], "cond_options"),
    (["--lr-g", "0.01"], "lr_g"),
    (["--steps", "10"], "fewer than"),
    (["--out", "elsewhere"], "out"),
    (["--config", "x.toml"], "--config cannot be combined"),
])
def test_resume_refuses_flags_that_change_the_run(cli, interrupted, flags, expected):
    result = cli("run", "--resume", interrupted, *flags)
    assert result.code == 2 and expected in result.err
    assert json.loads((interrupted / "run.json").read_text())["status"] == "interrupted"


def test_resume_extends_and_records_allowed_flags(cli, interrupted):
    assert cli("run", "--resume", interrupted, "--steps", "40", "--log-every", "5").code == 0
    info = json.loads((interrupted / "run.json").read_text())
    (record,) = info["resumes"]
    assert record["from_step"] == 20 and record["changed"]["steps"] == [30, 40]
    assert info["status"] == "finished" and info["step"] == 40
    assert json.loads((interrupted / "config.json").read_text())["config"]["steps"] == 40


@pytest.mark.parametrize(("setup", "expected"), [
    (lambda d: d / "missing", "no such run directory"),
    (lambda d: d / "config.json", "a file, not a run directory (valid: its run directory "),
    (lambda d: (d / "run.json").unlink() or d, "no run.json"),
    (lambda d: (d / "config.json").write_text("{") and d, "cannot read config.json"),
])
def test_resume_of_a_broken_directory_is_one_line(cli, interrupted, setup, expected):
    result = cli("run", "--resume", setup(interrupted))
    assert result.code == 2 and expected in result.err and "Traceback" not in result.err


def test_a_run_in_use_is_refused_and_a_stale_lock_is_taken_over(cli, interrupted):
    with RunLock(interrupted):
        result = cli("run", "--resume", interrupted)
    assert result.code == 2 and "in use by process" in result.err
    assert json.loads((interrupted / "run.json").read_text())["status"] == "interrupted"
    (interrupted / ".lock").write_text("process 999999 on elsewhere since yesterday\n")
    assert cli("run", "--resume", interrupted).code == 0  # nobody holds it: stale


def test_resume_after_sigkill_does_not_duplicate_log_records(cli, tmp_path, interrupted):
    assert cli("run", *FAST, *KMEANS, "--out", tmp_path / "straight").code == 0
    log = interrupted / "log.jsonl"
    redone = [json.dumps({"time": 0.0, "step": 30, "d_loss": 1.0, "g_loss": 1.0}), '{"step": 4']
    log.write_text(log.read_text() + "\n".join(redone) + "\n")  # written after the checkpoint
    info = json.loads((interrupted / "run.json").read_text())
    (interrupted / "run.json").write_text(json.dumps({**info, "status": "running"}))
    assert cli("run", "--resume", interrupted).code == 0

    def records(run_dir: Path) -> list[tuple]:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
        return [(r["step"], r.get("event")) for r in map(json.loads, lines)]

    assert records(interrupted) == records(only_run(tmp_path / "straight"))
    straight = json.loads((only_run(tmp_path / "straight") / "metrics.json").read_text())
    assert json.loads((interrupted / "metrics.json").read_text()) == straight


def test_interrupt_before_the_first_checkpoint_resumes_from_step_0(cli, pm, tmp_path):
    class CtrlCInSetup:
        @hookimpl
        def harness_run_started(self, run):
            raise KeyboardInterrupt

    pm.register(CtrlCInSetup(), name="ctrl-c")
    try:
        stopped = cli("run", *FAST, *KMEANS, "--out", tmp_path / "a")
    finally:
        pm.unregister(name="ctrl-c")
    assert stopped.code == 130 and "restarts it from step 0" in stopped.err
    run_dir = only_run(tmp_path / "a")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    assert cli("run", "--resume", run_dir).code == 0
    assert cli("run", *FAST, *KMEANS, "--out", tmp_path / "b").code == 0
    metrics = [json.loads((p / "metrics.json").read_text())
               for p in (run_dir, only_run(tmp_path / "b"))]
    assert metrics[0] == metrics[1]


def test_a_raising_lifecycle_hook_fails_the_run_naming_the_plugin(cli, pm, tmp_path):
    class Broken:
        @hookimpl
        def harness_run_started(self, run):
            raise RuntimeError("boom")

    pm.register(Broken(), name="broken-logger")
    try:
        result = cli("run", *FAST, *KMEANS, "--out", tmp_path)
    finally:
        pm.unregister(name="broken-logger")
    assert result.code == 1 and "broken-logger" in result.err and "boom" in result.err
    info = json.loads((only_run(tmp_path) / "run.json").read_text())
    assert info["status"] == "failed" and "broken-logger" in info["error"]


def test_sigterm_checkpoints_and_resume_reproduces_the_uninterrupted_metrics(tmp_path):
    args = [*FAST, *KMEANS, "--cond-opt", "recluster_every=0", "--steps", "300",
            "--batch-size", "20", "--checkpoint-every", "10", "--eval-samples", "1000"]
    harness = Path(sys.executable).with_name("harness")
    proc = subprocess.Popen([str(harness), "run", *args, "--out", str(tmp_path / "killed")],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "killed").glob(f"*/{CHECKPOINT}")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM) at step" in err and "Traceback" not in err
    run_dir = only_run(tmp_path / "killed")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["error"] == "stopped by SIGTERM"
    assert 0 < torch.load(run_dir / CHECKPOINT, weights_only=True)["step"] == info["step"] < 300
    # resumed and straight runs in fresh processes too: same thread count, same float sums
    subprocess.run([str(harness), "run", "--resume", str(run_dir)], check=True, timeout=300)
    subprocess.run([str(harness), "run", *args, "--out", str(tmp_path / "straight")],
                   check=True, timeout=300)
    straight = only_run(tmp_path / "straight")
    assert (run_dir / "metrics.json").read_text() == (straight / "metrics.json").read_text()


def test_checkpoint_loads_onto_the_run_device_with_weights_only(interrupted):
    from harness.results import load_checkpoint

    state = torch.load(interrupted / CHECKPOINT, weights_only=True)  # allow-listed types only
    identity = state["identity"]
    assert {"format", "trajectory", "seed", "composition", "step", "run_id"} <= set(identity)
    assert identity["step"] == state["step"] == 20
    loaded = load_checkpoint(interrupted / CHECKPOINT, identity, map_location="meta")
    assert loaded["generator"]["net.0.weight"].device.type == "meta"


def test_signal_handlers_are_restored(cli, tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert cli("run", *FAST, *KMEANS, "--out", tmp_path).code == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert os.environ.get("HARNESS_CACHE_DIR")  # the session cache is still in place


@pytest.mark.parametrize("target", ["/proc/board.csv", ".", "{tmp}/file/board.csv"])
def test_leaderboard_csv_that_cannot_be_written_is_one_line(cli, tmp_path, target):
    assert cli("run", *FAST, *KMEANS, "--out", tmp_path / "runs").code == 0
    write(tmp_path / "file", "x")
    result = cli("leaderboard", tmp_path / "runs", "--csv", target.format(tmp=tmp_path))
    assert result.code == 2 and "Traceback" not in result.err
    assert result.err.startswith("error: --csv") and "cannot write" in result.err


def test_a_metric_named_twice_is_one_metric(cli, tmp_path):
    from harness.config import make_config

    assert make_config({"metrics": ["modes_2d", "modes_2d"]}) == make_config(
        {"metrics": ["modes_2d"]})


def test_resume_of_a_folder_that_is_no_run_leaves_it_untouched(cli, tmp_path):
    result = cli("run", "--resume", tmp_path)
    assert result.code == 2 and "not a run directory" in result.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: (d / "checkpoints" / "last.pt").unlink(), "last.pt is missing"),
    (lambda d: (d / "run.json").write_text(
        (d / "run.json").read_text().replace('"interrupted"', '"finished"')), "already finished"),
    (lambda d: (d / "run.json").write_text(
        (d / "run.json").read_text().replace('"interrupted"', "5")), "status 5"),
])
def test_resume_refuses_a_run_whose_records_do_not_allow_it(cli, interrupted, change, expected):
    change(interrupted)
    result = cli("run", "--resume", interrupted, "--steps", "40")
    assert result.code == 2 and expected in result.err and "valid" in result.err


def test_an_unexpected_failure_is_one_line_with_the_traceback_kept(cli, tmp_path, monkeypatch):
    from harness.trainer import Trainer

    real_step = Trainer.step

    def failing_step(self):
        if self.run.step == 3:
            raise RuntimeError("boom\nsecond line")
        return real_step(self)

    monkeypatch.setattr(Trainer, "step", failing_step)
    result = cli("run", *FAST, *KMEANS, "--out", tmp_path)
    assert result.code == 1
    (line,) = [x for x in result.err.splitlines() if x.startswith("error:")]
    assert "run failed at step 3: RuntimeError: boom; second line" in line
    run_dir = only_run(tmp_path)
    assert "Traceback" in (run_dir / "traceback.txt").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(("flags", "expected"), [
    (["--group-by", "dataset,dataset"], None),
    (["--group-by", "seed"], "unknown --group-by"),
    (["--compare", "liu2020-table1", "--group-by", "cond"], "must include dataset"),
])
def test_leaderboard_grouping_is_checked(cli, tmp_path, flags, expected):
    assert cli("run", *FAST, *KMEANS, "--out", tmp_path).code == 0
    result = cli("leaderboard", tmp_path, *flags)
    if expected is None:
        assert result.code == 0 and "ring" in result.out
    else:
        assert result.code == 2 and expected in result.err and "Traceback" not in result.err


@pytest.mark.parametrize(("load", "threads", "noted"), [(4.6, None, True), (1.2, None, False),
                                                        (4.6, 1, False)])
def test_a_busy_cpu_is_noted_when_torch_takes_every_core(monkeypatch, load, threads, noted):
    from harness.build import busy_cpu
    from harness.config import RunConfig

    monkeypatch.setattr("os.getloadavg", lambda: (load, load, load))
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    note = busy_cpu(RunConfig(threads=threads), torch.device("cpu"))
    assert (note is not None and "--threads 1" in note and "load 4.6 on 2 cores" in note) \
        is noted
