"""The FID variants: intra-FID (per class of the conditioner, mean and worst) and FID against
the held-out split (``reference=test``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from harness.api import DataLocation, DataSpec, Generator, from_uint8
from harness.errors import ConfigError, MetricError, MetricUnavailable
from harness.sampling import sampler
from harness_plugins.datasets.digits import load_digits_32
from harness_plugins.metrics.fidelity import (
    DigitsFidelity,
    DigitsIntraFidelity,
    InceptionIntraFidelity,
    UInt8Images,
    file_sha256,
    inception_layout,
    reference_cache_name,
)
from tests.conftest import only_run

DIGITS = DataSpec(shape=(1, 32, 32), num_classes=10, has_labels=True, domain="digits")


class Lookup(Generator):
    """G(z, y): a digit of class ``shift(y)`` from a pool of real digits, chosen by z."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int) -> None:
        super().__init__()
        self.pool = [from_uint8(images[labels == c]) for c in range(10)]
        self.shift = shift

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pick = (z[:, 0].abs() * 1e4).long()
        return torch.stack([self.pool[(int(c) + self.shift) % 10][int(k) % len(
            self.pool[(int(c) + self.shift) % 10])] for c, k in zip(y, pick, strict=True)])


def lookup_run(data_root: Path, shift: int) -> SimpleNamespace:
    """A run whose conditioner is the true digit class, whose real side is half of
    scikit-learn's digits and whose G returns digits of the other half: of its own class
    (shift 0) or of the next class (shift 1; the same mixture of digits overall)."""
    images, labels = load_digits_32()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    real, pool = order[:900], order[900:]

    @contextlib.contextmanager
    def seeded(seed: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    conditioner = SimpleNamespace(
        num_classes=10, partition=lambda models, index: labels[real][index],
        sample_labels=lambda n, rng: torch.randint(10, (n,), generator=rng),
    )
    return SimpleNamespace(
        dataset=SimpleNamespace(x=images[real], y=labels[real], spec=DIGITS,
                                location=DataLocation(data_root)),
        config=SimpleNamespace(seed=0, data_root=data_root),
        device=torch.device("cpu"), conditioner=conditioner, models=None, seeded=seeded,
        prior=SimpleNamespace(sample=lambda n, y: torch.randn(n, 2)),
        eval_generator=Lookup(images[pool], labels[pool], shift), net_labels=lambda y: y,
    )


def test_intra_fid_is_torch_fidelity_per_class_and_sees_swapped_classes(tmp_path):
    import torch_fidelity

    options = DigitsIntraFidelity.Options(samples=30, per_class=True)
    metric = DigitsIntraFidelity(options)
    metric.cache_root = tmp_path / "cache"
    right, swapped = lookup_run(tmp_path, 0), lookup_run(tmp_path, 1)
    own = metric.compute(None, right)
    other = metric.compute(None, swapped)
    assert set(own) == {"intra_fid_digits_30_mean", "intra_fid_digits_30_worst",
                        "intra_fid_digits_30_classes", *(f"intra_fid_digits_30_c{c}"
                                                         for c in range(10))}
    scores = [own[f"intra_fid_digits_30_c{c}"] for c in range(10)]
    assert own["intra_fid_digits_30_mean"] == pytest.approx(sum(scores) / 10)
    assert own["intra_fid_digits_30_worst"] == max(scores)
    assert own["intra_fid_digits_30_classes"] == 10
    assert other["intra_fid_digits_30_mean"] > 10 * own["intra_fid_digits_30_mean"]

    # each class's value is torch-fidelity's FID between that class's two image sets
    index, members = metric.real_classes(right)
    name, weights, _ = metric.extractor(right)
    fid = torch_fidelity.calculate_metrics(
        input1=UInt8Images(metric.class_images(right, 3)),
        input2=UInt8Images(right.dataset.x[index][members[3]]), fid=True,
        feature_extractor=name, feature_extractor_weights_path=weights, cuda=False,
        batch_size=options.batch_size, save_cpu_ram=True, verbose=False,
    )[torch_fidelity.KEY_METRIC_FID]
    # equal up to rounding: the cached real features were extracted in other batches
    assert fid == pytest.approx(own["intra_fid_digits_30_c3"], rel=1e-6)

    # the whole-data FID cannot tell the two generators apart: the same digits overall
    plain = DigitsFidelity(DigitsFidelity.Options(samples=300, metrics=["fid"]))
    plain.cache_root = None
    fids = [plain.compute(sampler(run, seed=0), run)["fid_digits_300"]
            for run in (right, swapped)]
    assert abs(fids[0] - fids[1]) < 0.35 * fids[0]  # two draws of 300 images: their noise
    assert other["intra_fid_digits_30_mean"] > 5 * max(fids)

    # one cached file (the real subset's features) serves both runs: no per-class entries
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_intra_fid_options_check_and_unscored_classes(tmp_path):
    with pytest.raises(ValidationError, match="min_real=50: more than the samples=20"):
        DigitsIntraFidelity.Options(samples=20, min_real=50)
    metric = DigitsIntraFidelity(DigitsIntraFidelity.Options(samples=20, min_real=15))
    images, _ = load_digits_32()
    with pytest.raises(ConfigError) as info:
        metric.check(SimpleNamespace(x=images[:9], location=DataLocation(tmp_path)))
    assert str(info.value) == (
        "invalid metric 'intra_fid_digits' option min_real=15: the dataset has 9 training "
        "images, so no class can have that many; valid: min_real <= 9")
    run = lookup_run(tmp_path, 0)
    metric.options.subset = 120  # about 12 real images per class: some fall below min_real
    _, members = metric.real_classes(run)
    assert 0 < len(members) < 10 and all(len(rows) >= 15 for rows in members.values())
    metric.cache_root = None
    values = metric.compute(None, run)
    assert values["intra_fid_digits_20_classes"] == len(members)
    metric.options.subset = 20
    with pytest.raises(MetricError, match="no class of the conditioner has 15 real images"):
        metric.compute(None, run)
    config = SimpleNamespace(eval_samples=100)
    assert DigitsIntraFidelity.option_defaults(config) == {"samples": 100, "min_real": 10}
    config.eval_samples = 5
    assert DigitsIntraFidelity.option_defaults(config) == {"samples": 5, "min_real": 5}


def test_intra_fid_inception_needs_its_weights_and_records_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MetricUnavailable, match="--inception-weights PATH"):
        InceptionIntraFidelity(InceptionIntraFidelity.Options())
    weights = tmp_path / "inception.pth"
    torch.save({k: torch.zeros(()).expand(v) for k, v in inception_layout().items()}, weights)
    monkeypatch.setenv("HARNESS_INCEPTION_WEIGHTS", str(weights))
    metric = InceptionIntraFidelity(InceptionIntraFidelity.Options())
    assert metric.resolved()["weights"] == f"sha256:{file_sha256(weights.resolve())}"
    assert metric.supports(DataSpec(shape=(3, 32, 32))) and not metric.supports(DataSpec((2,)))
    assert metric.prepare_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape[1] == 3
    assert not metric.default and metric.direction("intra_fid_inception_1k_mean") == "lower"
    assert metric.direction("intra_fid_inception_1k_classes") is None


def test_fid_against_the_held_out_split(tmp_path):
    images, _ = load_digits_32()
    train, held = images[:1000], images[1000:1400]
    dataset = SimpleNamespace(x=train, x_heldout=held, spec=DIGITS,
                              location=DataLocation(tmp_path))
    run = SimpleNamespace(dataset=dataset, config=SimpleNamespace(seed=0, data_root=tmp_path),
                          device=torch.device("cpu"))
    test = DigitsFidelity(DigitsFidelity.Options(samples=150, metrics=["fid"],
                                                 reference="test"))
    test.check(dataset)
    rows = {bytes(row) for row in held.flatten(1).numpy()}
    assert all(bytes(row) in rows for row in test.reference_images(run).flatten(1).numpy())
    fake = lambda n: (from_uint8(images[1400:1400 + n]), torch.zeros(n, dtype=torch.long))  # noqa: E731
    assert list(test.compute(fake, run)) == ["fid_digits_test_150"]
    trained = DigitsFidelity(DigitsFidelity.Options(samples=150, metrics=["fid"]))
    assert list(trained.compute(fake, run)) == ["fid_digits_150"]  # today's key, unchanged
    assert "reference" not in trained.resolved() and test.resolved()["reference"] == "test"
    name, weights, _ = test.extractor(run)
    names = {reference_cache_name(m.reference_images(run), name, Path(weights), 128,
                                  torch.device("cpu")) for m in (test, trained)}
    assert len(names) == 2  # the split is part of the cached statistics' name
    with pytest.raises(ConfigError) as info:
        test.check(SimpleNamespace(x=train, x_heldout=None, location=DataLocation(tmp_path)))
    assert str(info.value).startswith(
        "invalid metric 'fid_digits' option reference='test': the dataset has no held-out split")


def test_cli_run_with_intra_fid_and_held_out_fid(cli, tmp_path):
    base = ["run", "--dataset", "digits", "--backbone", "dcgan", "--backbone-opt", "width=8",
            "--z-dim", "16", "--cond", "kmeans_d", "--cond-opt", "k=3", "--cond-opt",
            "subset=300", "--cond-opt", "n_init=1", "--batch-size", "16", "--steps", "3",
            "--eval-samples", "100", "--no-progress", "--threads", "1",
            "--metrics", "intra_fid_digits,fid_digits", "--metric-opt",
            'fid_digits.metrics=["fid"]', "--metric-opt", "fid_digits.reference=test"]
    threads = torch.get_num_threads()
    try:
        refused = cli(*base, "--dataset-opt", "heldout_fraction=0", "--out", tmp_path / "no")
        result = cli(*base, "--metric-opt", "intra_fid_digits.samples=20",
                     "--out", tmp_path / "yes")
    finally:
        torch.set_num_threads(threads)
    assert refused.code == 2 and not (tmp_path / "no").exists()
    assert "reference='test': the dataset has no held-out split" in refused.err
    assert result.code == 0, result.err
    run_dir = only_run(tmp_path / "yes")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"fid_digits_test_100", "intra_fid_digits_20_mean", "intra_fid_digits_20_worst",
            "intra_fid_digits_20_classes"} <= set(metrics)
    assert 1 <= metrics["intra_fid_digits_20_classes"] <= 3
    assert metrics["intra_fid_digits_20_worst"] >= metrics["intra_fid_digits_20_mean"] > 0
    resolved = json.loads((run_dir / "config.json").read_text())["resolved"]["metrics"]
    assert resolved["fid_digits"]["reference"] == "test"
    assert resolved["intra_fid_digits"]["samples"] == 20
