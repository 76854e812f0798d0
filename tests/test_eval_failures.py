"""What goes wrong around ``harness eval`` and a run's metrics: an ``evaluations/`` that
cannot be written (refused before computing), a metric whose ``compute`` raises (one line,
the traceback kept, nothing written)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness import hookimpl, results
from harness.api import Metric
from tests.conftest import FAST, only_run
from tests.test_replicas import registered

RING = ["run", "--steps", "10", "--eval-samples", "300", "--dataset-opt", "size=500",
        "--no-progress", "--threads", "1", "--cond", "none", "--metrics", "modes_2d"]


class Boom(Metric):
    """A metric with a bug: its ``compute`` raises ``ValueError``."""

    def compute(self, sample, run):
        raise ValueError("kaboom")


class BoomPlugin:
    @hookimpl
    def harness_metrics(self):
        return {"boom": Boom}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.cli import main

    out = tmp_path_factory.mktemp("finished")
    assert main([*RING, "--out", str(out)]) == 0
    return only_run(out)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != results.LOCK}


@pytest.mark.parametrize("kind", ["file", "dangling link"])
def test_an_evaluations_path_that_is_no_folder_is_refused_before_computing(
        cli, finished, kind):
    folder = finished / results.EVALUATIONS
    if kind == "file":
        folder.write_text("not a folder")
    else:
        folder.symlink_to(finished / "nowhere")
    try:
        before = digest(finished)
        result = cli("eval", finished)
        assert result.code == 2 and "Traceback" not in result.err
        (line,) = result.err.strip().splitlines()
        assert f"cannot save an evaluation: {folder}" in line and "(valid: " in line
        assert digest(finished) == before
    finally:
        folder.unlink()


def test_a_metric_that_raises_is_one_line_in_eval_and_in_run(cli, pm, finished, tmp_path):
    with registered(pm, BoomPlugin(), "boom"):
        before = digest(finished)
        result = cli("eval", finished, "--metrics", "boom")
        assert result.code == 1
        (line,) = result.err.strip().splitlines()
        assert line.startswith("error: harness eval: metric 'boom' raised ValueError: kaboom "
                               "(nothing written; traceback in ")
        trace = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
        assert "ValueError: kaboom" in trace.read_text()
        trace.unlink()
        assert digest(finished) == before
        run = cli("run", *FAST, "--cond", "none", "--metrics", "boom", "--out", tmp_path)
        assert run.code == 1
        run_dir = only_run(tmp_path)
        assert (f"metric 'boom' raised ValueError: kaboom (traceback in "
                f"{run_dir / results.TRACEBACK})") in run.err
        assert "ValueError: kaboom" in (run_dir / results.TRACEBACK).read_text()
        assert results.run_status(run_dir) == "failed"


DIGITS = ["run", "--dataset", "digits", "--backbone", "dcgan", "--steps", "2", "--eval-every",
          "1", "--eval-samples", "500", "--cond", "none", "--no-progress"]


@pytest.mark.parametrize(("args", "message"), [
    (["--metrics", "fid_digits", "--best-metric", "fid_digits_10k"],
     "--best-metric fid_digits_10k: metric 'fid_digits' of this run gives fid_digits_500, "),
    (["--dataset", "stacked_digits", "--metrics", "stacked_modes", "--best-metric",
      "classifier_acc"], "--best-metric classifier_acc: metric 'stacked_modes' gives it no "
     "direction"),
])
def test_a_best_metric_key_the_run_cannot_give_is_refused_before_training(
        cli, tmp_path, args, message):
    result = cli(*DIGITS, *args, "--out", tmp_path)
    assert result.code == 2 and message in result.err
    assert not any(tmp_path.iterdir())


def test_the_leaderboard_shows_the_original_or_the_latest_evaluation(cli, finished):
    import json

    from harness.evaluation import read_evaluations
    from harness.leaderboard import load_runs

    assert cli("eval", finished, "--eval-samples", "120", "--threads", "1").code == 0
    latest = [r for r in read_evaluations(finished) if r["eval_samples"] == 120][-1]
    original = json.loads((finished / results.METRICS).read_text())
    assert latest["metrics"]["rkl"] != original["rkl"]  # 120 samples, not 300
    warned: list[str] = []
    assert load_runs([finished], warn=warned.append)[0].iloc[0]["rkl"] == original["rkl"]
    assert not warned
    assert load_runs([finished], evaluation="latest", warn=warned.append)[0].iloc[0]["rkl"] \
        == latest["metrics"]["rkl"]
    assert warned == [f"{finished}: its latest evaluation used 120 samples, the run 300 "
                      "(eval_samples): keys without a sample count (modes, rkl, ...) are of "
                      "the latest"]
    shown = cli("leaderboard", finished, "--evaluation", "latest")
    assert shown.code == 0 and f"{latest['metrics']['rkl']:.4g}"[:5] in shown.out


def test_a_refused_run_prints_only_its_error(cli, tmp_path):
    """No note (--backbone dcgan sets dataset='stacked_digits') and no warning (a metric
    skipped for lack of weights) before the refusal."""
    result = cli("run", "--backbone", "dcgan", "--steps", "20", "--eval-every", "10",
                 "--eval-samples", "500", "--best-metric", "fid_digits_10k", "--out", tmp_path)
    assert result.code == 2
    (line,) = result.err.strip().splitlines()
    assert line.startswith("error: --best-metric fid_digits_10k: ")
