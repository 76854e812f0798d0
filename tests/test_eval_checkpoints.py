"""Checkpoint retention (``--keep-checkpoints``, ``--best-metric``, ``generator.pt``) and
``harness eval``: any saved checkpoint, any applicable metric, results beside the original."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import results
from harness.api import Metric
from harness.build import best_metric_direction
from harness.cli import main
from harness.errors import ConfigError, HarnessError
from harness.evaluation import read_evaluations
from harness.leaderboard import load_runs, within_run_spreads
from harness.manager import get_plugin_manager
from harness.restore import load_generator
from tests.conftest import StopAt, only_run

RING = ["run", "--steps", "30", "--eval-samples", "400", "--dataset-opt", "size=500",
        "--no-progress", "--threads", "1", "--cond-opt", "subset=200", "--cond-opt", "k=4",
        "--cond-opt", "n_init=1", "--backbone-opt", "g_width=32", "--backbone-opt",
        "d_width=16", "--metrics", "modes_2d", "--checkpoint-every", "10", "--eval-every",
        "10", "--log-every", "10"]
RETAINED = [*RING, "--keep-checkpoints", "10", "--best-metric", "rkl"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ring run stopped at step 15 and resumed with --keep-checkpoints 20 (a resumable
    setting): kept steps 10 and 20, last 30, best.pt by rkl."""
    out = tmp_path_factory.mktemp("trained")
    pm = get_plugin_manager()
    pm.register(StopAt(15), name="stop-at")
    try:
        assert main([*RETAINED, "--out", str(out)]) == 130
    finally:
        pm.unregister(name="stop-at")
    run_dir = only_run(out)
    assert main(["run", "--resume", str(run_dir), "--keep-checkpoints", "20",
                 "--no-progress"]) == 0
    return run_dir


def evaluations(run_dir: Path) -> list[str]:
    folder = run_dir / results.EVALUATIONS
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_retention_keeps_steps_best_and_the_generator_alone(trained):
    names = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert names == ["best.pt", "last.pt", "step-10.pt", "step-20.pt"]
    info = json.loads((trained / "run.json").read_text())
    logged = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    rkl = {r["step"]: r["rkl"] for r in logged if r.get("event") == "evaluated"}
    assert sorted(rkl) == [10, 20, 30]  # the stop at 15 lost no evaluation
    step = min(rkl, key=lambda s: (rkl[s], s))
    assert info["best_checkpoint"] == {"metric": "rkl", "direction": "lower",
                                       "value": rkl[step], "step": step}
    best = torch.load(trained / results.BEST_CHECKPOINT, weights_only=True)
    assert best["step"] == step and best["best"] == info["best_checkpoint"]
    assert "opt_g" not in best and "rng" not in best  # weights only: not resumable
    kept = torch.load(trained / "checkpoints" / "step-20.pt", weights_only=True)
    assert kept["step"] == 20 and "opt_g" in kept
    generator = torch.load(trained / results.GENERATOR, weights_only=True)
    last = torch.load(trained / results.CHECKPOINT, weights_only=True)
    assert generator["step"] == 30 and generator["z_dim"] == 2 and not generator["ema"]
    assert generator["config"]["best_metric"] == "rkl"
    for key, value in last["generator"].items():
        assert torch.equal(generator["generator"][key], value), key
    assert (trained / results.GENERATOR).stat().st_size < (trained / results.CHECKPOINT
                                                          ).stat().st_size / 3


def test_eval_reproduces_the_runs_own_evaluations_and_keeps_metrics_json(cli, trained):
    original = (trained / "metrics.json").read_text()
    before = evaluations(trained)
    result = cli("eval", trained, "--threads", "1")
    assert result.code == 0, result.err
    (new,) = sorted(set(evaluations(trained)) - set(before))
    assert new.endswith("-last-step30.json")
    record = json.loads((trained / results.EVALUATIONS / new).read_text())
    assert (record["checkpoint"], record["step"], record["file"]) == (
        "last", 30, "checkpoints/last.pt")
    assert record["metrics"] == {k: v for k, v in json.loads(original).items()
                                 if k != "eval_samples"}
    assert (trained / "metrics.json").read_text() == original
    # a kept checkpoint gives the values the run's evaluation at that step logged
    before = evaluations(trained)
    assert cli("eval", trained, "--checkpoint", "10", "--threads", "1").code == 0
    (new,) = sorted(set(evaluations(trained)) - set(before))
    assert new.endswith("-step10.json") and "last" not in new
    logged = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    at_10 = next(r for r in logged if r.get("event") == "evaluated" and r["step"] == 10)
    latest = read_evaluations(trained)[-1]
    assert latest["step"] == 10
    assert latest["metrics"] == {k: v for k, v in at_10.items()
                                 if k not in ("time", "step", "event")}


def test_eval_with_other_metrics_adds_leaderboard_columns(cli, trained):
    assert cli("eval", trained, "--metrics", "cluster_agreement", "--metric-opt",
               "cluster_agreement.subset=300", "--threads", "1").code == 0
    assert cli("eval", trained, "--checkpoint", "20", "--eval-samples", "100",
               "--threads", "1").code == 0
    assert cli("eval", trained, "--checkpoint", "best", "--eval-samples", "300",
               "--threads", "1").code == 0
    frame, metrics = load_runs([trained], warn=lambda message: None)
    row = frame.iloc[0]
    original = json.loads((trained / "metrics.json").read_text())
    assert row["rkl"] == original["rkl"]  # the original evaluation's value stays
    assert 0 <= row["cluster_nmi"] <= 1  # a metric the run was not trained with
    best = read_evaluations(trained)[-1]
    assert best["checkpoint"] == "best" and best["eval_samples"] == 300
    assert row["rkl@best"] == best["metrics"]["rkl"]
    at_20 = [r for r in read_evaluations(trained) if r["checkpoint"] == "20"][-1]
    assert "rkl@step20" in metrics and row["rkl@step20"] == at_20["metrics"]["rkl"]


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "15"], "no checkpoint of step 15 was saved (saved steps: 10, 20, 30"),
    (["--checkpoint", "first"], "--checkpoint 'first' (valid: last, best or a saved step"),
    (["--metrics", "nope"], "unknown metric 'nope'"),
    (["--metrics", "fid_digits"], "metric 'fid_digits' does not apply to dataset 'ring'"),
    (["--metric-opt", "modes_2d.bogus=1"], "unknown option 'bogus'"),
    (["--metrics", ","], "names no metric"),
])
def test_bad_eval_input_is_one_line_and_writes_nothing(cli, trained, args, message):
    before = evaluations(trained)
    result = cli("eval", trained, *args)
    assert result.code == 2 and message in result.err, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("error: ")
    assert evaluations(trained) == before


def test_eval_of_no_run_or_no_checkpoint(cli, tmp_path):
    assert "no such run directory" in cli("eval", tmp_path / "missing").err
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"config": {"steps": 3}}))
    result = cli("eval", run_dir)
    assert result.code == 2 and "no checkpoint" in result.err
    result = cli("eval", run_dir, "--checkpoint", "best")
    assert result.code == 2 and "no checkpoints/best.pt" in result.err
    assert not (run_dir / results.EVALUATIONS).exists()


def test_eval_runs_while_the_run_is_locked_by_training(cli, trained):
    with results.RunLock(trained):  # as a training process holds it
        assert cli("eval", trained, "--checkpoint", "20", "--metrics", "modes_2d",
                   "--eval-samples", "100", "--threads", "1").code == 0


def test_load_generator_gives_the_chosen_checkpoint_in_eval_mode(trained):
    run = load_generator(trained, "best", {"threads": 1})
    best = json.loads((trained / "run.json").read_text())["best_checkpoint"]
    assert run.step == best["step"] and not run.eval_generator.training
    x = run.generate(torch.zeros(5, dtype=torch.long), seed=0)
    assert x.shape == (5, 2) and x.isfinite().all()


@pytest.mark.parametrize("args, message", [
    (["--keep-checkpoints", "15"], "keep_checkpoints=15: checkpoints are written every "
     "checkpoint_every=10 steps"),
    (["--best-metric", "fid_digits_10k"], "--best-metric fid_digits_10k: no metric of this run "
     "(modes_2d) gives that key (valid: modes (modes_2d), hq_pct (modes_2d), rkl (modes_2d))"),
    (["--best-metric", "rkl", "--eval-every", "0"], "the run evaluates only at its end"),
])
def test_bad_retention_settings_are_refused_before_a_run_directory_exists(
        cli, tmp_path, args, message):
    result = cli(*RING, *args, "--out", tmp_path)
    assert result.code == 2 and message in result.err, result.err
    assert not any(tmp_path.iterdir())


def test_a_best_metric_key_without_direction_is_refused():
    class Spread(Metric):
        better = {"x_*_std": None, "x_*": "lower"}

        def compute(self, sample, run):
            return {}

    run = SimpleNamespace(config=SimpleNamespace(best_metric="x_10_std", eval_every=5),
                          metrics={"spread": Spread(None)})
    with pytest.raises(ConfigError, match="gives it no direction"):
        best_metric_direction(run)
    run.config.best_metric = "x_10"
    assert best_metric_direction(run) == "lower"


def test_vectorised_seeds_keep_their_own_checkpoints(cli, tmp_path):
    result = cli(*RETAINED, "--steps", "20", "--seeds", "0,1", "--vectorise", "yes",
                 "--out", tmp_path)
    assert result.code == 0, result.err
    for run_dir in sorted(tmp_path.iterdir()):
        names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert names == ["best.pt", "last.pt", "step-10.pt", "step-20.pt"], run_dir
        info = json.loads((run_dir / "run.json").read_text())
        state = torch.load(run_dir / results.BEST_CHECKPOINT, weights_only=True)
        assert state["step"] == info["best_checkpoint"]["step"]
        assert state["identity"]["seed"] == info["seed"]
        generator = torch.load(run_dir / results.GENERATOR, weights_only=True)
        last = torch.load(run_dir / results.CHECKPOINT, weights_only=True)
        for key, value in last["generator"].items():  # a copy of its own slice of the stack
            assert torch.equal(generator["generator"][key], value)


def test_write_new_json_never_replaces_a_file(tmp_path):
    first = results.write_new_json(tmp_path, "a", {"n": 1})
    second = results.write_new_json(tmp_path, "a", {"n": 2})
    assert (first.name, second.name) == ("a.json", "a-2.json")
    assert json.loads(first.read_text()) == {"n": 1}
    assert {p.name for p in tmp_path.iterdir()} == {"a.json", "a-2.json"}  # no temporary


def test_a_spread_of_an_evaluation_is_pooled_like_the_original_ones():
    metrics = ["kid_1k", "kid_1k_std", "kid_1k@best", "kid_1k_std@best", "x_std@step5"]
    assert within_run_spreads(metrics) == {"kid_1k_std": "kid_1k",
                                           "kid_1k_std@best": "kid_1k@best"}


def test_load_generator_from_config_and_generator_pt_alone(trained, tmp_path, capsys):
    from harness import sampling

    copied = tmp_path / "copied"
    copied.mkdir()
    for name in (results.CONFIG, results.GENERATOR):
        (copied / name).write_bytes((trained / name).read_bytes())
    alone, full = (load_generator(path, overrides={"threads": 1}) for path in (copied, trained))
    assert alone.step == full.step == 30 and not alone.eval_generator.training
    x, y = sampling.sampler(alone, seed=0)(300)
    expected = sampling.sampler(full, seed=0)(300)
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    # a checkpoint other than the last needs the checkpoints, and so does harness eval
    with pytest.raises(HarnessError, match="--checkpoint best: no checkpoints/best.pt"):
        load_generator(copied, "best")
    assert main(["eval", str(copied)]) == 2
    assert f"only {results.GENERATOR} is here: harness sample reads it" in \
        capsys.readouterr().err
    # generator.pt of another run is refused
    other = json.loads((copied / results.CONFIG).read_text())
    other["config"]["seed"] = 7
    (copied / results.CONFIG).write_text(json.dumps(other))
    with pytest.raises(HarnessError, match="belongs to another run .*; refusing to load it$"):
        load_generator(copied)


def test_load_generator_takes_an_int_step_and_refuses_unsaved_ones(trained):
    assert load_generator(trained, 20, {"threads": 1}).step == 20
    for step in (-1, 15):
        with pytest.raises(HarnessError, match="saved steps?: 10, 20, 30") as info:
            load_generator(trained, step)
        assert "\n" not in str(info.value)


def test_a_finished_run_without_its_checkpoints_and_another_runs_checkpoint(cli, trained,
                                                                            tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    for name in (results.CONFIG, results.RUN):
        (gone / name).write_bytes((trained / name).read_bytes())
    result = cli("eval", gone)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "run.json records a checkpoint of step 30 but its checkpoint files are missing" in (
        result.err) and "stopped before" not in result.err
    result = cli("sample", gone, "--out", tmp_path / "out")
    assert result.code == 2 and "checkpoint files are missing" in result.err
    assert not (tmp_path / "out").exists()

    (gone / "checkpoints").mkdir()
    (gone / results.CHECKPOINT).write_bytes((trained / results.CHECKPOINT).read_bytes())
    config = json.loads((gone / results.CONFIG).read_text())
    config["config"]["seed"] = 7
    (gone / results.CONFIG).write_text(json.dumps(config))
    for command in (["eval", gone], ["sample", gone, "--out", tmp_path / "out"]):
        result = cli(*command, "--threads", "1")
        assert result.code == 2 and "belongs to another run" in result.err, result.err
        assert result.err.rstrip().endswith("refusing to load it"), result.err
