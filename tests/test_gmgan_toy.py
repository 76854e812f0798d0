"""GM-GAN's 9-Gaussian toy dataset (`gmgan_toy`): shape, modes, labels, determinism, the
`modes_2d` metric on its real points, and a tiny run through the CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from harness.manager import get_plugin_manager
from harness_plugins.metrics.modes import mode_statistics
from tests.conftest import only_run


def make(seed: int = 0, **opts: object) -> Any:
    cls = get_plugin_manager().get("datasets", "gmgan_toy").load()
    return cls(cls.Options(**opts), seed=seed)


def test_defaults_are_the_papers_size_and_nine_modes_on_a_3x3_grid():
    data = make()
    assert data.x.shape == (5000, 2) and data.x.dtype == torch.float32
    assert data.y.shape == (5000,) and data.y.dtype == torch.int64
    spec = data.spec
    assert spec.shape == (2,) and spec.num_classes == 9 and spec.has_labels
    assert spec.modes is not None and spec.modes.std == 0.05
    ticks = {-2.0, 0.0, 2.0}
    centers = spec.modes.centers
    assert centers.shape == (9, 2)
    assert {tuple(c) for c in centers.tolist()} == {(a, b) for a in ticks for b in ticks}


def test_labels_cover_all_modes_and_points_lie_near_their_mode():
    data = make()
    counts = torch.bincount(data.y, minlength=9)
    assert len(counts) == 9 and counts.min() > 400  # ~556 each
    centers = data.spec.modes.centers
    offset = data.x - centers[data.y]
    assert offset.abs().max() < 6 * 0.05
    assert abs(offset.std().item() - 0.05) < 0.003
    assert torch.equal(torch.cdist(data.x, centers).argmin(1), data.y)


def test_options_change_spacing_std_and_size():
    data = make(size=900, std=0.1, spacing=3.0)
    assert data.x.shape == (900, 2) and data.spec.modes.std == 0.1
    assert data.spec.modes.centers.abs().max() == 3.0
    with pytest.raises(ValueError):
        make(spacing=0)
    with pytest.raises(ValueError):
        make(side=5)  # always 3x3: `grid` is the dataset with a side option


def test_same_seed_same_points_other_seed_other_points():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)


def test_modes_2d_on_the_real_points_finds_all_nine_at_full_quality():
    data = make()
    stats = mode_statistics(data.x, data.spec.modes.centers, data.spec.modes.std)
    assert stats["modes"] == 9
    assert stats["hq_pct"] > 99  # both coordinates within 3 std: 0.9973^2 = 99.46%
    assert stats["rkl"] < 0.01


def test_a_tiny_run_through_the_cli(cli, tmp_path):
    result = cli("run", "--dataset", "gmgan_toy", "--steps", "20", "--eval-samples", "500",
                 "--threads", "1", "--no-progress", "--out", tmp_path)
    assert result.code == 0, result.err
    run_dir = only_run(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"modes", "hq_pct", "rkl"} <= set(metrics) and metrics["eval_samples"] == 500
    assert 0 <= metrics["modes"] <= 9
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["dataset"] == "gmgan_toy"
    assert "gmgan_toy" in result.out


def test_a_bad_option_is_refused_before_anything_is_written(cli, tmp_path):
    result = cli("run", "--dataset", "gmgan_toy", "--dataset-opt", "std=-1", "--steps", "1",
                 "--no-progress", "--out", tmp_path)
    assert result.code == 2 and "std" in result.err
    assert not any(tmp_path.iterdir())
