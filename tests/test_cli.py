"""End-to-end `harness run` / `harness leaderboard`, determinism, resume and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness import hookimpl
from harness.build import with_component_defaults
from harness.config import INCEPTION_WEIGHTS_ENV, make_config
from harness_plugins.backbones.dcgan import DCGAN
from tests.conftest import FAST, assert_resume_is_exact, only_run

CONDITIONERS = {
    "none": [],
    "random": ["--cond-opt", "k=5"],
    "ground_truth": [],
    "kmeans_d": ["--cond-opt", "k=10", "--cond-opt", "subset=500", "--cond-opt", "n_init=2",
                 "--cond-opt", "recluster_every=10"],
    "online_kmeans": ["--cond-opt", "k=10", "--cond-opt", "subset=500", "--cond-opt", "n_init=1"],
    "gmm": ["--prior", "gmm", "--prior-opt", "num_components=4",
            "--cond-opt", "samples_per_component=100"],
}


@pytest.mark.parametrize("cond", CONDITIONERS)
def test_each_conditioner_runs_end_to_end(cli, tmp_path, cond):
    result = cli("run", "--cond", cond, *CONDITIONERS[cond], *FAST, "--out", tmp_path)
    assert result.code == 0, result.err
    run_dir = only_run(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"modes", "hq_pct", "rkl", "cluster_nmi", "cluster_acc"} <= set(metrics)
    assert metrics["eval_samples"] == 2000
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "finished" and info["seed"] == 0
    assert info["environment"]["packages"]["torch"] == torch.__version__.split("+")[0] or info[
        "environment"]["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert {"train_s", "eval_s", "setup_s", "ms_per_step"} <= set(info["timings"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["cond"] == cond and config["resolved"]["cond"]["name"] == cond
    assert (run_dir / "checkpoints" / "last.pt").exists()
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "d_loss" in r] == [10, 20, 30]
    assert cond in result.out  # the one-row leaderboard


def test_kmeans_d_logs_reclustering(cli, tmp_path):
    assert cli("run", *CONDITIONERS["kmeans_d"], *FAST, "--out", tmp_path).code == 0
    log = (only_run(tmp_path) / "log.jsonl").read_text()
    assert log.count('"labels_updated"') == 3
    timings = json.loads((only_run(tmp_path) / "run.json").read_text())["timings"]
    assert 0 < timings["label_s"] < timings["recluster_s"] < timings["train_s"]  # labelled lazily
    assert timings["recluster_share"] == timings["recluster_s"] / timings["train_s"]


DIGITS_KMEANS = ["run", "--dataset", "digits", "--backbone", "biggan", "--backbone-opt", "width=4",
                 "--cond", "kmeans_d", "--cond-opt", "k=4", "--cond-opt", "subset=200",
                 "--cond-opt", "recluster_every=4", "--steps", "6", "--batch-size", "8",
                 "--eval-samples", "50", "--metrics", "cluster_agreement",
                 "--metric-opt", "cluster_agreement.subset=300", "--no-progress", "--threads", "1"]


def test_kmeans_d_resumes_exactly_between_clusterings(cli, pm, tmp_path):
    """Stopped after a re-clustering with most examples unlabelled: the resumed run labels
    them with the checkpoint's frozen D, not with the live D it loaded."""
    run_dir = assert_resume_is_exact(cli, pm, tmp_path, DIGITS_KMEANS, stop_at=5)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state, live = checkpoint["conditioner"], checkpoint["discriminator"]
    assert (state["labels"] < 0).any() and state["frozen"] is not None
    assert any(not torch.equal(value, state["frozen"][key]) for key, value in live.items())


def test_same_seed_gives_identical_metrics(cli, tmp_path):
    args = ["run", *CONDITIONERS["kmeans_d"], *FAST, "--seed", "3"]
    assert cli(*args, "--out", tmp_path / "a").code == 0
    assert cli(*args, "--out", tmp_path / "b").code == 0
    a, b = (json.loads((only_run(tmp_path / x) / "metrics.json").read_text()) for x in "ab")
    assert a == b
    assert cli(*args[:-1], "4", "--out", tmp_path / "c").code == 0
    assert json.loads((only_run(tmp_path / "c") / "metrics.json").read_text()) != a


def test_config_file_and_rerun_from_config_json(cli, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'prior = "uniform"\ncond = "random"\nsteps = 20\neval_samples = 1000\n'
        "[cond_options]\nk = 3\n[dataset_options]\nsize = 1000\n"
    )
    assert cli("run", "--config", toml, "--no-progress", "--out", tmp_path / "a").code == 0
    first = only_run(tmp_path / "a")
    saved = json.loads((first / "config.json").read_text())
    assert saved["resolved"]["cond"]["options"] == {"k": 3, "fake_labels": "real_batch"}
    assert saved["config"]["prior"] == "uniform"
    again = cli("run", "--config", first / "config.json", "--out", tmp_path / "b")
    assert again.code == 0
    metrics = [json.loads((only_run(tmp_path / x) / "metrics.json").read_text()) for x in "ab"]
    assert metrics[0] == metrics[1]
    other = cli("run", "--config", toml, "--cond", "none", "--no-progress", "--out", tmp_path / "c")
    assert other.code == 0, other.err  # the file's cond_options belonged to 'random'
    assert "cond_options are not used" in other.err


def test_metrics_flag_drops_the_files_options_of_metrics_it_leaves_out(cli, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('cond = "none"\nsteps = 5\neval_samples = 500\n[dataset_options]\n'
                    'size = 500\n[metric_options.cluster_agreement]\nsubset = 300\n')
    result = cli("run", "--config", toml, "--metrics", "modes_2d", "--no-progress",
                 "--out", tmp_path)
    assert result.code == 0, result.err
    assert "leaves out cluster_agreement" in result.err


def test_interrupt_then_resume_continues_exactly(cli, pm, tmp_path):
    args = ["run", *CONDITIONERS["kmeans_d"], *FAST, "--steps", "40", "--checkpoint-every", "15",
            "--ema-decay", "0.9", "--eval-every", "20"]
    assert_resume_is_exact(cli, pm, tmp_path, args, stop_at=25)


def test_leaderboard_groups_seeds_and_writes_csv(cli, tmp_path):
    for cond in ("none", "random"):
        for seed in ("0", "1"):
            code = cli("run", "--cond", cond, *CONDITIONERS[cond], *FAST, "--seed", seed,
                       "--out", tmp_path / "runs").code
            assert code == 0
    result = cli("leaderboard", "--results", tmp_path / "runs", "--csv", tmp_path / "board.csv")
    assert result.code == 0
    table = pd.read_csv(tmp_path / "board.csv")
    assert sorted(table["cond"]) == ["none", "random"]
    assert (table["n_seeds"] == 2).all()
    assert {"modes_mean", "modes_std", "rkl_mean", "hq_pct_std"} <= set(table.columns)
    assert "±" in result.out and "random" in result.out
    by_prior = cli("leaderboard", tmp_path / "runs", "--group-by", "prior")
    assert by_prior.code == 0 and "4" in by_prior.out.splitlines()[1]
    bad = cli("leaderboard", tmp_path / "runs", "--group-by", "colour")
    assert bad.code == 2 and "colour" in bad.err and "valid:" in bad.err


def test_leaderboard_skips_unfinished_runs(cli, tmp_path):
    assert cli("run", *FAST, "--cond", "none", "--out", tmp_path).code == 0
    broken = tmp_path / "half-written"
    broken.mkdir()
    (broken / "run.json").write_text('{"status": "running"}')
    result = cli("leaderboard", tmp_path)
    assert result.code == 0 and result.out.count("none") == 1


BAD_INPUT = {
    "unknown prior": (["--prior", "gausian"], ["gausian", "Did you mean 'gaussian'", "uniform"]),
    "unknown cond": (["--cond", "kmeans"], ["'kmeans'", "kmeans_d", "online_kmeans"]),
    "bad option value": (["--prior", "gmm", "--prior-opt", "sigma=abc"], ["sigma", "'abc'"]),
    "unknown option": (["--prior", "gmm", "--prior-opt", "sgima=1"], ["sgima", "sigma", "c"]),
    "bad run field": (["--steps", "-5"], ["steps", "-5"]),
    "gmm without mixture": (["--cond", "gmm"], ["--cond gmm", "gaussian", "gmm"]),
    "metric not applicable": (["--metrics", "nope"], ["nope", "modes_2d"]),
    "image backbone, flat data": (["--backbone", "dcgan", "--dataset", "ring"],
                                  ["'dcgan'", "(2,)", "mlp"]),
    "missing inception weights": (
        ["--dataset", "stacked_digits", "--metrics", "fid_inception",
         "--inception-weights", "/nowhere/inception.pth"],
        ["/nowhere/inception.pth", "--inception-weights"],
    ),
    "missing mnist": (["--dataset", "stacked_mnist", "--data-root", "/nowhere"],
                      ["'stacked_mnist'", "/nowhere/MNIST/raw", "--data-root", "--download"]),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_with_choices_and_writes_nothing(cli, tmp_path, case, monkeypatch):
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, "")  # restored after --inception-weights sets it
    args, expected = BAD_INPUT[case]
    result = cli("run", *FAST, *args, "--out", tmp_path)
    assert result.code == 2
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0]
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_console_script_reports_errors_without_traceback(tmp_path):
    harness = Path(sys.executable).with_name("harness")
    result = subprocess.run(
        [str(harness), "run", "--backbone", "stylegan", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error: unknown backbone 'stylegan'. Available: ")
    assert "dcgan" in result.stderr and "biggan" in result.stderr


def test_leaderboard_compares_with_published_numbers(cli, tmp_path):
    assert cli("run", *FAST, "--cond", "none", "--out", tmp_path).code == 0
    result = cli("leaderboard", tmp_path, "--compare", "liu2020-table1", "--stat", "sem")
    assert result.code == 0
    lines = result.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("liu2020-table1: "))
    assert "mean ± s.e. over 10 trials" in lines[header + 1]
    columns = lines[header + 2].split()
    assert columns[:3] == ["dataset", "method", "seeds"] and "verdict" in columns
    modes = next(line for line in lines[header + 3:] if " modes " in line)
    assert "GAN" in modes and "6.3 ± 0.5" in modes and "higher" in modes
    rkl = next(line for line in lines[header + 3:] if " rkl " in line)
    assert "0.45 ± 0.09" in rkl and "lower" in rkl
    bad = cli("leaderboard", tmp_path, "--compare", "liu2021")
    assert bad.code == 2 and "liu2020-table1" in bad.err


def test_stacked_digits_is_compared_with_the_papers_stacked_mnist():
    from harness import published
    from harness.suites import registry_suites

    runs = pd.DataFrame({  # two seeds on stacked digits, one on the ring
        "run_id": ["a", "b", "c"], "seed": [0, 1, 0], "status": "finished",
        "dataset": ["stacked_digits", "stacked_digits", "ring"],
        "cond": ["kmeans_d", "kmeans_d", "none"], "cond.k": [100, 100, None],
        "prior": "gaussian", "backbone": ["dcgan", "dcgan", "mlp"], "loss": "bce",
        "steps": [600, 600, 1500], "modes": [985.0, 995.0, 8.0], "rkl": [0.145, 0.165, 0.04],
    })
    suites = registry_suites()
    comparison = published.compare(runs, ["modes", "rkl"], [suites["liu2020-table2"]],
                                   {"modes": "higher", "rkl": "lower"})
    assert comparison["paper_dataset"].tolist() == ["stacked_mnist"] * 2
    assert comparison["paper"].tolist() == ["1000 ± 0", "0.08 ± 0.009"]
    assert comparison["measured"].tolist() == ["990 ± 5", "0.155 ± 0.01"]
    assert comparison["budget"].tolist() == ["600 of 100k steps"] * 2
    assert comparison["verdict"].tolist() == [
        "n/a: 600 of 100k steps; stand-in for stacked_mnist"] * 2


class ThirdPartyImageBackbone(DCGAN):
    """An image backbone of another package, naming the dataset its runs use by default."""

    run_defaults = {"dataset": "stacked_digits"}


class ImageBackbonePlugin:
    @hookimpl
    def harness_backbones(self):
        return {"their_dcgan": ThirdPartyImageBackbone}


TINY_IMAGE_RUN = ["run", "--backbone", "their_dcgan", "--backbone-opt", "width=4",
                  "--dataset-opt", "size=300", "--cond", "random", "--cond-opt", "k=3",
                  "--steps", "1", "--batch-size", "4", "--eval-samples", "50", "--metrics",
                  "cluster_agreement", "--metric-opt", "cluster_agreement.subset=50",
                  "--no-progress"]


@pytest.fixture
def their_backbone(pm):
    pm.register(ImageBackbonePlugin(), name="their-backbones")
    yield
    pm.unregister(name="their-backbones")


def test_without_a_dataset_a_backbone_trains_on_the_one_it_names_and_says_so(
    cli, tmp_path, their_backbone
):
    result = cli(*TINY_IMAGE_RUN, "--out", tmp_path / "a")
    assert result.code == 0, result.err
    notes = [line for line in result.err.splitlines() if line.startswith("note:")]
    assert notes == ["note: --backbone their_dcgan sets dataset='stacked_digits' "
                     "(--dataset to change)"]
    saved = only_run(tmp_path / "a") / "config.json"
    assert json.loads(saved.read_text())["config"]["dataset"] == "stacked_digits"
    again = cli("run", "--config", saved, "--out", tmp_path / "b")  # re-runnable as recorded
    assert again.code == 0 and "note:" not in again.err
    assert (only_run(tmp_path / "a") / "metrics.json").read_text() == (
        only_run(tmp_path / "b") / "metrics.json").read_text()


@pytest.mark.parametrize("given", ["flag", "file"])
def test_a_dataset_given_by_flag_or_config_file_wins_over_the_backbones(
    cli, tmp_path, their_backbone, given
):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "digits"\n' if given == "file" else "")
    chosen = ["--dataset", "digits"] if given == "flag" else []
    args = [a for a in TINY_IMAGE_RUN if a not in ("--dataset-opt", "size=300")]
    result = cli(*args, *chosen, "--config", toml, "--out", tmp_path / "out")
    assert result.code == 0, result.err
    assert "sets dataset" not in result.err
    saved = json.loads((only_run(tmp_path / "out") / "config.json").read_text())
    assert saved["config"]["dataset"] == "digits"


def test_flat_data_stays_the_default_of_a_backbone_naming_none(pm):
    values = with_component_defaults({"backbone": "mlp"}, pm, notes=False)
    assert make_config(values).dataset == "ring" and pm.get(
        "backbones", "mlp").load().run_defaults == {}


@pytest.mark.parametrize("backbone", ["dcgan", "resnet", "biggan"])
def test_image_backbones_train_on_offline_images_when_no_dataset_is_given(pm, backbone):
    values = with_component_defaults({"backbone": backbone}, pm, notes=False)
    assert make_config(values).dataset == "stacked_digits"
