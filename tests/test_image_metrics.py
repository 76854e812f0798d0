"""Image metrics: the digit classifier, fid_digits / fid_inception and stacked_modes."""

from __future__ import annotations

import contextlib
import math
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from harness.api import DataLocation, DataSpec, Generator, from_uint8
from harness.errors import ConfigError, MetricError, MetricUnavailable
from harness.manager import PluginManager
from harness_plugins.datasets.digits import load_digits_32
from harness_plugins.metrics import digit_classifier as dc
from harness_plugins.metrics.fidelity import (
    DigitsExtractorMixin,
    DigitsFidelity,
    InceptionFidelity,
    count_name,
    inception_layout,
    joint_log_probs,
    reference_cache_name,
    register_digits_extractor,
)
from harness_plugins.metrics.reconstruction import LPIPSReconstruction
from harness_plugins.metrics.stacked import StackedModes
from harness_plugins.priors.simple import Gaussian

DIGITS = DataSpec(shape=(1, 32, 32), num_classes=10, has_labels=True, domain="digits")
STACKED = DataSpec(shape=(3, 32, 32), num_classes=1000, has_labels=True, domain="digits")


@pytest.fixture(scope="module")
def classifier(harness_cache: Path) -> Path:
    """The scikit-learn-digits classifier, trained once into the session's cache directory."""
    assert dc.cache_dir() == harness_cache
    return dc.classifier_path("digits")


def make_run(x: torch.Tensor, spec: DataSpec, data_root: Path, eval_samples: int = 1000):
    return SimpleNamespace(
        dataset=SimpleNamespace(x=x, y=None, spec=spec),
        config=SimpleNamespace(eval_samples=eval_samples, seed=0, data_root=data_root),
        device=torch.device("cpu"),
    )


def sampler(images: torch.Tensor):
    """sample(n): the first n of ``images`` (uint8) in the generator's range."""
    return lambda n: (from_uint8(images[:n]), torch.zeros(n, dtype=torch.long))


def stacked_triples(n: int, seed: int = 0) -> torch.Tensor:
    """n images (3, 32, 32) of three random scikit-learn digits each."""
    images, _ = load_digits_32()
    index = torch.randint(len(images), (n, 3), generator=torch.Generator().manual_seed(seed))
    return images[index].squeeze(2)


# ----------------------------------------------------------------------------- classifier
def test_classifier_accurate_and_cached(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, accuracy = dc.load_classifier(classifier)
    assert accuracy >= 0.95
    assert not model.training
    assert classifier.parent == Path(dc.cache_dir()) and "digits" in classifier.name
    mtime = classifier.stat().st_mtime_ns

    def no_training(*args: object) -> None:
        raise AssertionError("retrained although the cached file exists")

    monkeypatch.setattr(dc, "train_classifier", no_training)
    assert dc.classifier_path("digits") == classifier
    assert dc.classifier_path("auto", tmp_path) == classifier  # no MNIST there: digits
    assert classifier.stat().st_mtime_ns == mtime


def test_training_is_seeded_and_leaves_global_rng_alone() -> None:
    images, labels = load_digits_32()
    recipe = dc.Recipe(epochs=1)
    state = torch.get_rng_state()
    first, _ = dc.train_classifier(images[:64], labels[:64], images[64:96], labels[64:96], recipe)
    assert torch.equal(torch.get_rng_state(), state)
    second, _ = dc.train_classifier(images[:64], labels[:64], images[64:96], labels[64:96], recipe)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def write_idx(path: Path, data: torch.Tensor) -> None:
    header = bytes([0, 0, 8, data.dim()]) + struct.pack(f">{data.dim()}I", *data.shape)
    path.write_bytes(header + data.to(torch.uint8).numpy().tobytes())


def write_small_mnist(root: Path) -> torch.Tensor:
    """80 scikit-learn digits at 28x28 as MNIST idx files under root (60 train, 20 test);
    returns their labels."""
    images, labels = load_digits_32()
    small = torch.nn.functional.interpolate(images[:80].float(), size=(28, 28)).squeeze(1)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, part in (("train", slice(0, 60)), ("t10k", slice(60, 80))):
        write_idx(raw / f"{split}-images-idx3-ubyte", small[part])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[part])
    return labels[:80]


def test_auto_source_uses_mnist_files_when_present(classifier: Path, tmp_path: Path) -> None:
    labels = write_small_mnist(tmp_path)
    raw = tmp_path / "MNIST" / "raw"
    assert dc.resolve_source("auto", tmp_path) == "mnist"
    train_x, train_y, test_x, test_y = dc.load_mnist(tmp_path)
    assert train_x.shape == (60, 1, 32, 32) and train_x.dtype == torch.uint8
    assert torch.equal(test_y, labels[60:80])
    path = dc.classifier_path("auto", tmp_path)
    assert "mnist" in path.name and path != classifier
    write_idx(raw / "train-labels-idx1-ubyte", labels[1:61])  # other files: other classifier
    assert dc.classifier_path("auto", tmp_path) != path
    with pytest.raises(MetricUnavailable, match="MNIST files"):
        dc.load_mnist(tmp_path / "elsewhere")


@pytest.mark.parametrize("cls", [DigitsFidelity, StackedModes])
def test_unwritable_cache_is_found_when_the_metric_is_built(
    cls: type, classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("a regular file")
    for cache in (tmp_path / "file" / "cache", tmp_path / "file"):  # unwritable even for root
        monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
        with pytest.raises(MetricUnavailable) as info:
            cls(cls.Options())
        assert str(info.value) == (
            f"the digit classifier (auto) is not cached and cannot be trained into the cache "
            f"folder {cache} ({tmp_path / 'file'} is not a folder); set HARNESS_CACHE_DIR to a "
            "writable folder"
        )
    cache = tmp_path / "new" / "cache"  # missing but creatable
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(cache))
    cls(cls.Options()).check(SimpleNamespace(x=torch.zeros(10, 1, 32, 32), location=DataLocation()))
    assert not cache.exists()  # nothing is created before it is needed
    # a read-only cache holding only the digits classifier serves `auto` without MNIST only
    cache.mkdir(parents=True)
    (cache / classifier.name).write_bytes(classifier.read_bytes())
    monkeypatch.setattr(dc, "unwritable_reason", lambda folder: f"{folder} is read-only")
    metric = cls(cls.Options())
    metric.check(SimpleNamespace(x=torch.zeros(10, 1, 32, 32), location=DataLocation(tmp_path)))
    write_small_mnist(tmp_path)
    with pytest.raises(MetricUnavailable, match=f"{cache} is read-only"):
        metric.check(SimpleNamespace(x=torch.zeros(10, 1, 32, 32), location=DataLocation(tmp_path)))


# ----------------------------------------------------------------------------- torch-fidelity
def test_count_names_and_joint_log_probs() -> None:
    assert [count_name(n) for n in (10_000, 50_000, 500, 898)] == ["10k", "50k", "500", "898"]
    logits = torch.full((1, 3, 10), -30.0)
    logits[0, 0, 4], logits[0, 1, 0], logits[0, 2, 7] = 30.0, 30.0, 30.0
    joint = joint_log_probs(logits)
    assert joint.shape == (1, 1000) and joint.exp().sum().item() == pytest.approx(1.0)
    assert joint.argmax().item() == 407


def test_extractor_concatenates_channels(classifier: Path) -> None:
    cls = register_digits_extractor()
    assert register_digits_extractor() is cls
    extractor = cls("digits-cnn", ["features", "logits"], str(classifier))
    features, logits = extractor(stacked_triples(4))
    assert features.shape == (4, 3 * dc.DigitClassifier.feature_dim) and logits.shape == (4, 1000)


def test_fid_digits_real_vs_real_small_noise_large(classifier: Path, tmp_path: Path) -> None:
    images, _ = load_digits_32()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    half_a, half_b = images[order[:898]], images[order[898:]]
    run = make_run(half_a, DIGITS, tmp_path)
    options = DigitsFidelity.Options(samples=800, kid_subsets=20, kid_subset_size=400)
    metric = DigitsFidelity(options)
    real = metric.compute(sampler(half_b), run)
    assert set(real) == {
        f"{name}_digits_800{std}"
        for name, std in [("fid", ""), ("kid", ""), ("kid", "_std"), ("is", ""), ("is", "_std"),
                          ("precision", ""), ("recall", "")]
    }
    noise = torch.randint(0, 256, (800, 1, 32, 32), dtype=torch.uint8)
    fake = metric.compute(sampler(noise), run)
    collapsed = metric.compute(sampler(half_b[:1].expand(800, -1, -1, -1)), run)
    assert fake["fid_digits_800"] > 20 * real["fid_digits_800"]
    assert collapsed["fid_digits_800"] > 5 * real["fid_digits_800"]
    assert fake["kid_digits_800"] > 20 * abs(real["kid_digits_800"])
    assert real["is_digits_800"] > 7 and collapsed["is_digits_800"] < 1.01
    assert real["precision_digits_800"] > 0.5 and real["recall_digits_800"] > 0.5
    assert collapsed["recall_digits_800"] < 0.1
    only = DigitsFidelity(DigitsFidelity.Options(samples=800, metrics=["fid"]))
    assert only.compute(sampler(half_b), run) == {"fid_digits_800": real["fid_digits_800"]}


def test_fid_digits_caches_the_real_features_bit_identically(
    classifier: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, _ = load_digits_32()
    run = make_run(images[:500], DIGITS, tmp_path)
    fake = images[500:900].roll(2, dims=3)
    extracted: list[int] = []  # images per extractor call
    forward = DigitsExtractorMixin.forward

    def counting(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        extracted.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(DigitsExtractorMixin, "forward", counting)

    def compute(root: Path | None, **options: object) -> tuple[dict[str, float], int]:
        metric = DigitsFidelity(DigitsFidelity.Options(
            samples=400, kid_subsets=10, kid_subset_size=200, isc_splits=4, batch_size=400,
            **options,
        ))
        metric.cache_root = root
        extracted.clear()
        return metric.compute(sampler(fake), run), sum(extracted)

    root = tmp_path / "cache"
    uncached, n_uncached = compute(None)
    first, n_first = compute(root)  # miss: extracts and stores the real side
    second, n_second = compute(root)  # hit: only the generated side is extracted
    assert (n_uncached, n_first, n_second) == (800, 800, 400)
    assert first == uncached and second == uncached  # exactly, every value
    entries = sorted(p.name.split("-digits-cnn-")[1] for p in root.iterdir())
    # features per layer (KID and PRC read them), FID statistics; no temporary files left
    assert entries == ["features-features.pt", "features-logits.pt", "stat-fid-features.pt"]
    fid, n_fid = compute(root, metrics=["fid"])  # torch-fidelity's FID-only path: statistics
    assert fid == {"fid_digits_400": uncached["fid_digits_400"]} and n_fid == 400
    for damaged in root.iterdir():  # cut short, or one byte changed: rebuilt, same values
        data = damaged.read_bytes()
        damaged.write_bytes(data[:100])
        assert compute(root)[0] == uncached
        middle = len(data) // 2  # inside the stored tensors: a checksum fails
        damaged.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])
        assert compute(root)[0] == uncached
    (tmp_path / "file").touch()
    unwritable, _ = compute(tmp_path / "file" / "cache")  # a folder that cannot be: no cache
    assert unwritable == uncached


def test_a_damaged_cached_classifier_is_rebuilt(classifier: Path, capsys) -> None:
    good = classifier.read_bytes()
    classifier.write_bytes(good[:100])
    assert dc.classifier_path("digits") == classifier
    assert f"cache file {classifier} is damaged" in capsys.readouterr().err
    model, accuracy = dc.load_classifier(classifier)  # retrained: the same recipe
    assert classifier.read_bytes() == good and accuracy > 0.9
    torch.save({"a": 1}, classifier)  # whole, but no classifier
    assert dc.classifier_path("digits") == classifier
    assert f"cache file {classifier} holds no digit classifier" in capsys.readouterr().err
    assert classifier.read_bytes() == good


def test_reference_cache_name_covers_what_the_features_depend_on(
    classifier: Path, tmp_path: Path
) -> None:
    images = stacked_triples(20)
    other_weights = tmp_path / "other.pt"
    other_weights.write_bytes(classifier.read_bytes() + b"\0")
    base = {"images": images, "extractor": "digits-cnn", "weights": classifier,
            "batch_size": 128, "device": torch.device("cpu")}

    def name(**changes: object) -> str:
        return reference_cache_name(**{**base, **changes})

    changed = images.clone()
    changed[3, 1, 10, 10] += 1
    names = [
        name(), name(images=changed), name(images=images.flip(0)), name(images=images[:19]),
        name(extractor="inception-v3-compat"), name(weights=other_weights),
        name(batch_size=64), name(device=torch.device("meta")),
    ]
    assert len(set(names)) == len(names)
    assert name() == name(images=images.clone()) and name().startswith("gan-harness-real-")


def inception_like() -> dict[str, torch.Tensor]:
    """A state dict with torch-fidelity's Inception-v3 names and shapes, each tensor one
    stored zero (expanded), so the file is small."""
    return {k: torch.zeros(()).expand(shape) for k, shape in inception_layout().items()}


def test_fid_inception_needs_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(MetricUnavailable, match="--inception-weights PATH") as info:
        InceptionFidelity(InceptionFidelity.Options())
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)
    assert "\n" not in str(info.value)
    monkeypatch.setenv("HARNESS_INCEPTION_WEIGHTS", str(tmp_path / "missing.pth"))
    with pytest.raises(MetricUnavailable, match="missing.pth"):
        InceptionFidelity(InceptionFidelity.Options())
    weights = tmp_path / "inception.pth"
    torch.save(inception_like(), weights)
    monkeypatch.setenv("HARNESS_INCEPTION_WEIGHTS", str(weights))
    assert InceptionFidelity(InceptionFidelity.Options()).options.weights == weights.resolve()


def test_fid_inception_refuses_garbage_weights(tmp_path: Path) -> None:
    layout = inception_like()
    files = {
        "empty.pth": b"",
        "garbage.pth": b"not a checkpoint",
        "counter.pth": {"fc.weight": 1},
        "no-fc.pth": {k: v for k, v in layout.items() if not k.startswith("fc.")},
        "fc-1000.pth": {**layout, "fc.weight": torch.zeros(1000, 2048)},
        "extra.pth": {**layout, "AuxLogits.fc.weight": torch.zeros(1)},
    }
    reasons = {
        "empty.pth": "not a torch state dict of tensors",
        "garbage.pth": "not a torch state dict of tensors",
        "counter.pth": "hold a dict, not a state dict of tensors",
        "no-fc.pth": "2 tensors missing (e.g. fc.weight)",
        "fc-1000.pth": "1 tensors wrong shape (e.g. fc.weight)",
        "extra.pth": "1 tensors unexpected (e.g. AuxLogits.fc.weight)",
    }
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        with pytest.raises(MetricUnavailable) as info:
            InceptionFidelity(InceptionFidelity.Options(weights=path))
        message = str(info.value)
        assert str(path) in message and reasons[name] in message and "\n" not in message
        assert "--inception-weights PATH" in message
    no_counts = {k: v for k, v in layout.items() if not k.endswith("num_batches_tracked")}
    torch.save(no_counts, tmp_path / "old.pth")  # BatchNorm counters may be absent
    InceptionFidelity(InceptionFidelity.Options(weights=tmp_path / "old.pth"))


def test_fidelity_options_fit_the_generated_images() -> None:
    def error(**opts: object) -> str:
        with pytest.raises(ValidationError) as info:
            DigitsFidelity.Options(**opts)
        return info.value.errors()[0]["msg"]

    assert error(samples=5) == (
        "Value error, isc_splits=10: more IS splits than the samples=5 generated images; "
        "valid: isc_splits <= 5"
    )
    assert error(samples=3, isc_splits=3) == (
        "Value error, prc_neighborhood=3: precision/recall needs more generated images "
        "(samples=3) than neighbours; valid: prc_neighborhood < 3"
    )
    DigitsFidelity.Options(samples=5, metrics=["fid", "kid", "prc"])  # no IS: splits unused
    DigitsFidelity.Options(samples=3, isc_splits=3, metrics=["fid", "is"])  # no PRC


def test_fidelity_check_fits_the_real_images(classifier: Path, tmp_path: Path) -> None:
    images, _ = load_digits_32()
    metric = DigitsFidelity(DigitsFidelity.Options(samples=10, isc_splits=2, kid_subsets=2))
    with pytest.raises(ConfigError) as info:
        metric.check(SimpleNamespace(x=images[:3], location=DataLocation(tmp_path)))
    assert str(info.value) == (
        "invalid metric 'fid_digits' option prc_neighborhood=3: precision/recall needs more "
        "than that many neighbours among the 3 real images (samples=10, 3 training images); "
        "valid: prc_neighborhood < 3"
    )
    only_fid = DigitsFidelity(DigitsFidelity.Options(samples=10, isc_splits=2, metrics=["fid"]))
    with pytest.raises(ConfigError, match="FID and KID need at least 2 real images, the dataset"):
        only_fid.check(SimpleNamespace(x=images[:1], location=DataLocation(tmp_path)))
    metric.check(SimpleNamespace(x=images[:4], location=DataLocation(tmp_path)))  # k=3 fits
    run = make_run(images[:4], DIGITS, tmp_path)
    values = metric.compute(sampler(images[4:14]), run)
    assert len(values) == 7 and all(math.isfinite(v) for v in values.values())


def test_fidelity_refuses_non_finite_images(classifier: Path, tmp_path: Path) -> None:
    images, _ = load_digits_32()
    fake = from_uint8(images[:10])
    fake[2, 0, 5, 5], fake[7] = float("nan"), float("inf")
    metric = DigitsFidelity(DigitsFidelity.Options(samples=10, isc_splits=2))
    run = make_run(images[:10], DIGITS, tmp_path)
    with pytest.raises(MetricError, match="^fid_digits: 2 of 10 generated images are non-finite$"):
        metric.compute(lambda n: (fake[:n], torch.zeros(n, dtype=torch.long)), run)


def test_supports_and_registration(pm: PluginManager) -> None:
    flat, rgb = DataSpec(shape=(2,)), DataSpec(shape=(3, 32, 32))
    for name, expected in [
        ("fid_digits", (False, False, True, True)),
        ("fid_inception", (False, True, True, True)),
        ("stacked_modes", (False, False, True, True)),
    ]:
        cls = pm.get("metrics", name).load()
        assert tuple(cls.supports(s) for s in (flat, rgb, DIGITS, STACKED)) == expected


# ----------------------------------------------------------------------------- stacked modes
def test_stacked_modes_real_vs_collapsed(classifier: Path, tmp_path: Path) -> None:
    triples = stacked_triples(8000)
    run = make_run(triples, STACKED, tmp_path, eval_samples=8000)
    metric = StackedModes(StackedModes.Options())
    real = metric.compute(sampler(triples), run)
    assert real["modes"] >= 990 and real["rkl"] < 0.15
    assert real["classifier_acc"] >= 0.95
    run.config.eval_samples = 500
    collapsed = metric.compute(sampler(triples[:1].expand(500, -1, -1, -1)), run)
    assert collapsed["modes"] == 1 and collapsed["rkl"] == pytest.approx(math.log(1000))


def test_stacked_modes_refuses_non_finite_images(classifier: Path, tmp_path: Path) -> None:
    fake = from_uint8(stacked_triples(50))
    fake[[3, 9, 40], 1, 0, 0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    run = make_run(fake, STACKED, tmp_path, eval_samples=50)
    metric = StackedModes(StackedModes.Options())
    with pytest.raises(MetricError) as info:
        metric.compute(lambda n: (fake[:n], torch.zeros(n, dtype=torch.long)), run)
    assert str(info.value) == "stacked_modes: 3 of 50 generated images are non-finite"


class NaNAfter(Generator):
    """x = tanh(A z) (1x8x8), NaN in every other image from its ``after``-th call on."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.a = nn.Linear(4, 64)
        self.after, self.calls = after, 0

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.a(z)).view(-1, 1, 8, 8)
        self.calls += 1
        if self.calls <= self.after:
            return x
        return x.index_fill(0, torch.arange(0, len(x), 2), float("nan"))


@pytest.mark.parametrize(
    ("after", "message"),
    [
        (0, "lpips_recon: 4 of 8 generated images of an encoder training batch are non-finite"),
        (3, "lpips_recon: 2 of 4 reconstructions are non-finite (lpips_recon_alex_random_train)"),
    ],
)
def test_lpips_recon_refuses_non_finite_generated_images(after: int, message: str) -> None:
    pytest.importorskip("lpips")
    prior = Gaussian(Gaussian.Options(), 4, 1)
    dataset = SimpleNamespace(
        x=torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8), x_heldout=None,
        spec=DataSpec((1, 8, 8)),
    )
    run = SimpleNamespace(
        eval_generator=NaNAfter(after), prior=prior, dataset=dataset, device=torch.device("cpu"),
        conditioner=SimpleNamespace(
            conditions_networks=False, sample_labels=lambda n, g: torch.zeros(n, dtype=torch.long)
        ),
        config=SimpleNamespace(seed=0), net_labels=torch.zeros_like,
        seeded=lambda seed: contextlib.nullcontext(),
    )
    options = {"images": 4, "encoder_steps": 3, "latent_steps": 1, "batch": 8, "min_size": 32}
    metric = LPIPSReconstruction(LPIPSReconstruction.Options(pretrained=False, **options))
    with pytest.raises(MetricError) as info:
        metric.compute(None, run)
    assert str(info.value) == message


def test_fidelity_samples_follow_eval_samples_unless_given(pm: PluginManager) -> None:
    from harness.build import build_run
    from harness.config import make_config

    def resolved(eval_samples: int, given: dict | None = None) -> dict:
        config = make_config({"dataset": "digits", "metrics": ["fid_digits"],
                              "eval_samples": eval_samples, "progress": False,
                              "metric_options": {"fid_digits": given or {}}})
        options = build_run(config, pm).resolved["metrics"]["fid_digits"]
        return {k: options[k] for k in ("samples", "isc_splits", "prc_neighborhood")}

    assert resolved(50_000) == {"samples": 10_000, "isc_splits": 10, "prc_neighborhood": 3}
    assert resolved(500) == {"samples": 500, "isc_splits": 10, "prc_neighborhood": 3}
    assert resolved(3) == {"samples": 3, "isc_splits": 3, "prc_neighborhood": 2}
    assert resolved(500, {"samples": 2000}) == {"samples": 2000, "isc_splits": 10,
                                                "prc_neighborhood": 3}
