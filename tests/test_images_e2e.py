"""End to end on offline images: stacked digits, a DCGAN, k-means on D's features."""

import json

import pytest

from tests.conftest import assert_resume_is_exact, only_run

IMAGE_RUN = [
    "run", "--dataset", "stacked_digits", "--dataset-opt", "size=2000",
    "--backbone", "dcgan", "--backbone-opt", "width=16", "--z-dim", "32",
    "--cond", "kmeans_d", "--cond-opt", "k=10", "--cond-opt", "subset=500",
    "--cond-opt", "n_init=2", "--cond-opt", "recluster_every=10",
    "--batch-size", "32", "--steps", "20", "--eval-samples", "1000", "--no-progress",
    "--log-every", "5", "--threads", "1",
]


def test_stacked_digits_run_writes_metrics_grids_and_curves(cli, tmp_path):
    result = cli(*IMAGE_RUN, "--metrics", "fid_digits,stacked_modes,cluster_agreement",
                 "--metric-opt", "fid_digits.samples=500", "--sample-every", "10",
                 "--ema-decay", "0.9", "--out", tmp_path)
    assert result.code == 0, result.err
    run_dir = only_run(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["fid_digits_500"] > 0
    assert 1 <= metrics["modes"] <= 1000 and 0 <= metrics["rkl"] <= 6.91
    assert 0 <= metrics["cluster_nmi"] <= 1
    grids = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert grids == ["step_0000010.png", "step_0000020.png"]
    assert (run_dir / "curves.png").stat().st_size > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["resolved"]["backbone"]["name"] == "dcgan"
    assert "fid_digits" in result.out or "fid_digits_500" in result.out


def test_image_run_resumes_exactly(cli, pm, tmp_path):
    args = [*IMAGE_RUN, "--checkpoint-every", "7", "--ema-decay", "0.9",
            "--metrics", "stacked_modes"]
    assert_resume_is_exact(cli, pm, tmp_path, args, stop_at=13)


@pytest.mark.parametrize(
    "composition",
    [
        ["--prior", "gmm", "--cond", "kmeans_d", "--cond-opt", "k=5", "--backbone", "biggan",
         "--loss", "hinge", "--d-steps", "2"],
        ["--prior", "gmm", "--prior-opt", "num_components=5", "--cond", "gmm",
         "--cond-opt", "samples_per_component=50", "--backbone", "resnet", "--loss", "hinge"],
        ["--prior", "uniform", "--cond", "none", "--backbone", "dcgan"],
    ],
    ids=["gmm-kmeans_d-biggan", "gmm-gmm-resnet", "uniform-none-dcgan"],
)
def test_every_backbone_composes_with_priors_and_conditioners(cli, tmp_path, composition):
    result = cli("run", *composition, "--dataset", "digits", "--backbone-opt", "width=8",
                 "--steps", "3", "--batch-size", "16", "--eval-samples", "200", "--no-progress",
                 "--threads", "1", "--metrics", "stacked_modes,cluster_agreement",
                 "--out", tmp_path)
    assert result.code == 0, result.err
    metrics = json.loads((only_run(tmp_path) / "metrics.json").read_text())
    assert 1 <= metrics["modes"] <= 10 and 0 <= metrics["cluster_nmi"] <= 1
