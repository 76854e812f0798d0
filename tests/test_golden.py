"""Every existing composition trains and evaluates as at the recorded commit: bit for bit
(metrics, losses, final weights) on the kernels that recorded it, within the recorded
tolerances on any other CPU (``tests/golden.py`` records both and says how)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from harness_plugins.metrics.modes import mode_statistics
from tests.golden import (
    COMPOSITIONS,
    THREADS,
    compare,
    kernel_fingerprint,
    resolution,
    run_composition,
)

GOLDEN = json.loads((Path(__file__).parent / "data" / "golden_runs.json").read_text())
SAME_KERNELS = GOLDEN["environment"] == kernel_fingerprint()


def run(args: list[str], out: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return run_composition(args, out)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_composition_reproduces_its_recorded_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got, want = run(COMPOSITIONS[name], tmp_path / "out"), GOLDEN["runs"][name]
    if SAME_KERNELS:
        assert {k: got[k] for k in ("metrics", "losses", "weights")} == \
            {k: want[k] for k in ("metrics", "losses", "weights")}
    else:
        assert compare(got, want, GOLDEN["loss_tolerance"]) == []


@pytest.mark.parametrize(("name", "change"), [
    ("ring-none", ["--lr-g", "1.1e-4"]),  # 10% off G's learning rate
    ("ring-kmeans-recluster", ["--cond-opt", "fake_labels=prior"]),
    ("grid-gmm-learned-ema", ["--ema-decay", "0.95"]),
    ("digits-dcgan-kmeans", ["--lr-d", "1.1e-4"]),
])
def test_the_tolerances_still_catch_a_changed_composition(name, change, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = run([*COMPOSITIONS[name], *change], tmp_path / "out")
    assert compare(got, GOLDEN["runs"][name], GOLDEN["loss_tolerance"]) != []


def test_plain_kernels_are_not_the_recording_kernels():
    """Under ATEN_CPU_CAPABILITY=default the golden tests take the tolerant path (.ci/run
    runs them so), whatever the machine."""
    code = "import json; from tests.golden import kernel_fingerprint as f; print(json.dumps(f()))"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "ATEN_CPU_CAPABILITY": "default"}, check=True,
                           cwd=Path(__file__).parent.parent)
    assert json.loads(plain.stdout) != GOLDEN["environment"]


def test_every_recorded_metric_has_its_tolerance_beside_it():
    assert GOLDEN["loss_tolerance"] > 0
    for name, record in GOLDEN["runs"].items():
        assert record["tolerance"].keys() == record["metrics"].keys(), name
        for key, bound in record["tolerance"].items():
            assert bound["tolerance"] >= bound["resolution"], (name, key)
        assert record["losses"], f"{name} logs no loss to compare"


def test_one_sample_moves_rkl_by_at_most_its_resolution():
    rng = np.random.default_rng(0)
    centers = torch.tensor([[np.cos(a), np.sin(a)] for a in np.linspace(0, 6, 8)])
    for n in (50, 1000):
        for _ in range(200):
            counts = rng.multinomial(n, rng.dirichlet(np.full(8, 0.3)))
            labels = np.repeat(np.arange(8), counts)
            moved = labels.copy()
            moved[rng.integers(n)] = rng.integers(8)
            rkl = [mode_statistics(centers[torch.as_tensor(y)], centers, 0.01)["rkl"]
                   for y in (labels, moved)]
            assert abs(rkl[0] - rkl[1]) <= resolution("rkl", n, n) + 1e-12


def test_one_point_moves_nmi_and_ari_by_at_most_3_over_n():
    rng = np.random.default_rng(0)
    for n, true_k, k in [(200, 10, 3), (200, 10, 10), (1000, 25, 5), (1000, 8, 50)]:
        for _ in range(100):
            true = rng.integers(0, true_k, n)
            found = np.where(rng.random(n) < rng.random(), true % k, rng.integers(0, k, n))
            moved = found.copy()
            moved[rng.integers(n)] = rng.integers(k)
            for score, key in ((normalized_mutual_info_score, "cluster_nmi"),
                               (adjusted_rand_score, "cluster_ari")):
                change = abs(score(true, found) - score(true, moved))
                assert change <= resolution(key, n, n), (n, true_k, k, key)
