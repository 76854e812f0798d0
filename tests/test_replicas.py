"""Several seeds in one process (``harness run --seeds``, ``harness.replicas``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness import hookimpl
from harness.build import build_run
from harness.config import make_config
from harness.errors import HarnessError
from harness.replicas import Replicas, blocker, rng_state
from harness.seeds import format_seeds, parse_seeds
from harness.trainer import Trainer
from tests.conftest import FAST, StopAt

SMALL = ["--backbone-opt", "g_width=32", "--backbone-opt", "d_width=16",
         "--cond-opt", "subset=500", "--cond-opt", "k=8", "--cond-opt", "n_init=2"]
SETTINGS = {"steps": 3, "progress": False, "metrics": ["modes_2d"], "eval_samples": 500,
            "dataset_options": {"size": 2000},
            "backbone_options": {"g_width": 32, "d_width": 16},
            "cond_options": {"subset": 500, "k": 8, "n_init": 2, "recluster_every": 2}}


def runs_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


@contextlib.contextmanager
def registered(pm, plugin, name: str):
    """``plugin`` registered with ``pm`` as ``name`` inside the block."""
    pm.register(plugin, name=name)
    try:
        yield
    finally:
        pm.unregister(name=name)


class Recorder:
    """Records each run's real batch indices and fake labels through its step's RNG streams."""

    def __init__(self) -> None:
        self.seen: dict[int, list[torch.Tensor]] = {}

    @hookimpl
    def harness_step_end(self, run, step, losses):
        self.seen.setdefault(run.config.seed, []).append(run.conditioner.subset_labels.clone())


def test_replicas_draw_what_single_runs_draw_and_agree_to_float_tolerance(pm, tmp_path):
    configs = [make_config({**SETTINGS, "seed": s}) for s in (0, 1)]
    runs, states = [], []
    for i, config in enumerate(configs):
        runs.append(build_run(config, pm))
        states.append(rng_state(runs[-1].device))
        runs[-1].directory = tmp_path / f"v{i}"
        runs[-1].directory.mkdir()
    assert blocker(runs[0]) is None
    replicas = Replicas(runs, states)
    replicas.setup()
    replicas.train(lambda step, losses: None)
    for run in runs:
        single = build_run(run.config, pm)
        trainer = Trainer(single)
        trainer.setup()
        trainer.train()
        ours = replicas.replicas[run.config.seed].trainer.training_step
        # every RNG stream consumed exactly as in the single-seed run
        assert torch.equal(ours.data_rng.get_state(), trainer.training_step.data_rng.get_state())
        assert torch.equal(ours.label_rng.get_state(), trainer.training_step.label_rng.get_state())
        assert torch.equal(replicas.replicas[run.config.seed].rng_state, torch.get_rng_state())
        assert torch.equal(run.conditioner.subset_labels, single.conditioner.subset_labels)
        for net in ("generator", "discriminator"):
            for (name, a), b in zip(getattr(run, net).named_parameters(),
                                    getattr(single, net).parameters(), strict=True):
                if name.startswith("net.") and name.endswith("bias") and net == "generator":
                    continue  # biases before BatchNorm: gradient 0 up to rounding, Adam-scaled
                torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-5, msg=f"{net}.{name}")
        # the run's own modules are views of its slice of the stacks, not copies
        stack = replicas.g.params["embedding.weight"]
        weight = run.generator.embedding.weight
        assert weight.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr()


def test_seeds_make_ordinary_run_directories(cli, tmp_path):
    result = cli("run", *FAST, *SMALL, "--seeds", "0-2", "--vectorise", "yes", "--out", tmp_path)
    assert result.code == 0, result.err
    assert "3 seeds together (vectorised)" in result.err
    dirs = runs_dirs(tmp_path)
    configs = [json.loads((d / "config.json").read_text())["config"] for d in dirs]
    assert [config["seed"] for config in configs] == [0, 1, 2]
    for d in dirs:
        info = json.loads((d / "run.json").read_text())
        assert info["status"] == "finished" and info["timings"]["replicas"] == 3
        assert (d / "metrics.json").exists() and (d / "checkpoints" / "last.pt").exists()
        state = torch.load(d / "checkpoints" / "last.pt", weights_only=True)
        weight = state["generator"]["embedding.weight"]
        assert weight.untyped_storage().nbytes() == weight.numel() * 4  # its own, not the stack
    assert "seeds" in result.out and "   3 " in result.out  # one leaderboard row of 3 seeds


def test_interrupted_group_resumes_exactly(cli, pm, tmp_path):
    args = ["run", *FAST, *SMALL, "--seeds", "0,1", "--checkpoint-every", "10",
            "--vectorise", "yes"]
    assert cli(*args, "--out", tmp_path / "straight").code == 0
    with registered(pm, StopAt(12), "stop-at"):
        stopped = cli(*args, "--out", tmp_path / "resumed")
    assert stopped.code == 130
    dirs = runs_dirs(tmp_path / "resumed")
    assert f"--resume {dirs[0]} {dirs[1]}" in stopped.err
    for d in dirs:
        assert json.loads((d / "run.json").read_text())["status"] == "interrupted"
    resumed = cli("run", "--resume", *dirs, "--no-progress", "--vectorise", "yes")
    assert resumed.code == 0, resumed.err
    for a, b in zip(dirs, runs_dirs(tmp_path / "straight"), strict=True):
        assert (a / "metrics.json").read_text() == (b / "metrics.json").read_text()
        sa, sb = (torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (a, b))
        for key, value in sa["generator"].items():
            assert torch.equal(value, sb["generator"][key]), key
        assert json.loads((a / "run.json").read_text())["resumes"][0]["from_step"] == 12


class PoisonSeed:
    """Makes seed 1's generator non-finite after step 5."""

    @hookimpl
    def harness_step_end(self, run, step, losses):
        if run.config.seed == 1 and step == 5:
            with torch.no_grad():
                next(run.generator.parameters()).fill_(float("nan"))


def test_a_diverged_seed_fails_alone(cli, pm, tmp_path):
    with registered(pm, PoisonSeed(), "poison"):
        result = cli("run", *FAST, *SMALL, "--seeds", "0-2", "--vectorise", "yes",
                     "--out", tmp_path)
    assert result.code == 1
    statuses = [json.loads((d / "run.json").read_text()) for d in runs_dirs(tmp_path)]
    assert [s["status"] for s in statuses] == ["finished", "failed", "finished"]
    assert "diverged at step 6" in statuses[1]["error"]
    assert "diverged at step 6" in result.err


def test_compositions_that_cannot_be_vectorised_run_one_after_another(cli, tmp_path):
    result = cli("run", *FAST, *SMALL, "--reg", "r1", "--seeds", "0,1", "--steps", "5",
                 "--out", tmp_path)
    assert result.code == 0, result.err
    assert "one after another: reg 'r1' adds its own terms" in result.err
    assert len(runs_dirs(tmp_path)) == 2


@pytest.mark.parametrize(("text", "seeds"), [("0-3", [0, 1, 2, 3]), ("5", [5]),
                                             ("0,3, 7", [0, 3, 7]), ("0-1,9", [0, 1, 9])])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@given(st.lists(st.integers(0, 200), min_size=1, max_size=60, unique=True))
def test_format_seeds_is_read_back_by_parse_seeds(seeds):
    text = format_seeds(seeds)
    assert parse_seeds(text) == seeds
    assert len(text) <= len(",".join(map(str, seeds)))  # ranges only ever shorten it


@pytest.mark.parametrize(("text", "message"), [
    ("a", "'a' is not a seed"), ("3-1", "is empty"), ("1,1", "seed 1 is given twice"),
    ("0-5000", "at most 1000"), ("-1", "is not a seed"), ("", "is not a seed"),
    ("\u0663", "is not a seed"), ("0-\uff19", "is not a seed"),  # non-ASCII digits
])
def test_bad_seeds_are_one_line(text, message):
    with pytest.raises(HarnessError, match=message):
        parse_seeds(text)


def test_bad_seed_flags_write_nothing(cli, tmp_path):
    for args, message in [(["--seeds", "0-x"], "is not a seed"),
                          (["--seeds", "0-1", "--seed", "3"], "cannot be combined"),
                          (["--seeds", "0-1", "--seeds", "2-3"], "--seeds is given twice"),
                          (["--vectorise", "no"], "needs several seeds"),
                          (["--seeds", "5", "--vectorise", "yes"], "needs several seeds"),
                          (["--seed", "\u0663"], "is not a whole number (valid: digits 0-9)"),
                          (["--steps", "1_000"], "is not a whole number"),
                          (["--seeds", "0-1", "--vectorise", "maybe"], "invalid choice"),
                          (["--seeds", "0,1", "--vectorise", "yes", "--reg", "r1"],
                           "--vectorise yes: reg 'r1' adds its own terms")]:
        result = cli("run", *FAST, *args, "--out", tmp_path / "out")
        assert result.code == 2 and message in result.err and "Traceback" not in result.err
        assert not (tmp_path / "out").exists()


def test_resuming_runs_of_different_compositions_together_is_refused(cli, pm, tmp_path):
    with registered(pm, StopAt(3), "stop-at"):
        for cond in ("kmeans_d", "random"):
            cli("run", *FAST, "--cond", cond, "--out", tmp_path / cond)
    dirs = [runs_dirs(tmp_path / cond)[0] for cond in ("kmeans_d", "random")]
    result = cli("run", "--resume", *dirs)
    assert result.code == 2 and "differs from" in result.err and "cond" in result.err


def interrupted_run(cli, pm, out: Path) -> Path:
    """A run stopped at step 3 (status interrupted), resumable."""
    with registered(pm, StopAt(3), "stop-at"):
        cli("run", *FAST, "--out", out)
    (run_dir,) = runs_dirs(out)
    return run_dir


def test_resuming_one_directory_twice_is_refused_before_locking(cli, pm, tmp_path):
    run_dir = interrupted_run(cli, pm, tmp_path)
    for twice in ([run_dir, run_dir], [run_dir, f"{run_dir}/"]):
        result = cli("run", "--resume", *twice)
        assert result.code == 2 and "given twice" in result.err, result.err


def test_on_the_cpu_seeds_train_one_after_another_by_default(cli, tmp_path):
    result = cli("run", *FAST, *SMALL, "--seeds", "0,1", "--steps", "3", "--out", tmp_path)
    assert result.code == 0, result.err
    assert "one after another: on the CPU, training them together measured no faster" \
        in result.err
    assert len(runs_dirs(tmp_path)) == 2


def test_a_group_too_large_for_memory_is_refused_before_anything_is_written(
        cli, monkeypatch, tmp_path):
    monkeypatch.setattr("harness.seeds.available_memory", lambda: 2**20)
    result = cli("run", *FAST, *SMALL, "--seeds", "0-9", "--vectorise", "yes",
                 "--out", tmp_path / "out")
    assert result.code == 2 and "10 seeds trained together need about" in result.err
    assert "--vectorise no" in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()


def test_a_stopped_sequential_group_names_the_seeds_not_started(cli, pm, tmp_path):
    with registered(pm, StopAt(2), "stop-at"):
        result = cli("run", *FAST, *SMALL, "--seeds", "0-2", "--vectorise", "no",
                     "--out", tmp_path)
    assert result.code == 130
    assert "not started: seeds 1-2" in result.err and "--seeds 1-2" in result.err
    assert len(runs_dirs(tmp_path)) == 1


def test_seeds_and_resume_together_are_refused(cli, pm, tmp_path):
    run_dir = interrupted_run(cli, pm, tmp_path)
    result = cli("run", "--resume", run_dir, "--seeds", "0-1")
    assert result.code == 2 and "--seeds cannot be combined with --resume" in result.err


def test_a_refused_resume_leaves_the_directory_untouched(cli, tmp_path):
    assert cli("run", *FAST, "--steps", "2", "--out", tmp_path).code == 0
    (run_dir,) = runs_dirs(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    result = cli("run", "--resume", run_dir)
    assert result.code == 2 and "already finished" in result.err
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before


def test_spectral_norm_backbones_are_named_as_the_reason(pm):
    run = build_run(make_config({"backbone": "resnet", "dataset": "digits", "cond": "random",
                                 "backbone_options": {"width": 4}, "progress": False,
                                 "metrics": ["cluster_agreement"]}), pm)
    assert "uses spectral norm" in blocker(run)
