"""FID, KID, Inception Score and precision/recall through torch-fidelity.

``fid_digits`` reads images with the digit classifier (one digit per channel; extractor
``digits-cnn``), ``fid_inception`` with torch-fidelity's Inception-v3 (never downloaded).
Generated samples are torch-fidelity's input1, real training images (a seeded random
subset of at most ``samples``) its input2. Result names carry the protocol:
``{fid,kid,is,precision,recall}_{extractor}_{samples}``, e.g. ``fid_inception_10k``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field

from harness.api import DataSpec, Metric, Options, Sampler, to_uint8
from harness.config import INCEPTION_WEIGHTS_ENV
from harness.errors import MetricUnavailable
from harness_plugins.metrics.digit_classifier import (
    SIZE,
    SourceOptions,
    classifier_path,
    load_classifier,
    prepare,
    resolve_source,
)

if TYPE_CHECKING:
    from harness.trainer import Run

DIGITS_EXTRACTOR = "digits-cnn"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""Basename of torch-fidelity's Inception-v3 URL: its file name in the torch hub cache."""
MetricName = Literal["fid", "kid", "is", "prc"]
FLAGS = {"fid": "fid", "kid": "kid", "is": "isc", "prc": "prc"}
"""Our metric names -> torch-fidelity's flags."""


# ----------------------------------------------------------------------------- extractor
def joint_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Per-channel digit logits (n, C, 10) -> log-probabilities (n, 10**C) of the digit
    combination, channel 0 most significant: IS over the 10**C stacked classes."""
    log_p = logits.log_softmax(-1)
    joint = log_p[:, 0]
    for k in range(1, log_p.shape[1]):
        joint = (joint[:, :, None] + log_p[:, k, None, :]).flatten(1)
    return joint


class DigitsExtractorMixin:
    """torch-fidelity extractor ``digits-cnn``: uint8 (N, C, H, W), one digit per channel.

    Features: ``features``, the classifier's penultimate layer of every channel, concatenated
    (N, 128 C), for FID, KID and PRC; ``logits``, :func:`joint_log_probs` (N, 10**C), for IS.
    Weights: ``feature_extractor_weights_path``, else the cached scikit-learn-digits classifier.
    Mixed into ``FeatureExtractorBase`` by :func:`register_digits_extractor`, so that
    torch-fidelity is imported only when an image metric is used.
    """

    def __init__(
        self, name: str, features_list: list[str],
        feature_extractor_weights_path: str | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(name, features_list)
        path = feature_extractor_weights_path or classifier_path("digits")
        self.classifier = load_classifier(Path(path))[0]

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "logits" if metric == "isc" else "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, c = x.shape[:2]
        features, logits = self.classifier(prepare(x.reshape(n * c, 1, *x.shape[2:])))
        out = {"features": features.reshape(n, -1)}
        if "logits" in self.features_list:
            out["logits"] = joint_log_probs(logits.reshape(n, c, -1))
        return tuple(out[name] for name in self.features_list)


def register_digits_extractor() -> type:
    """Register ``digits-cnn`` with torch-fidelity (idempotent); return its class."""
    from torch_fidelity import FeatureExtractorBase, register_feature_extractor
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        cls = type("DigitsFeatureExtractor", (DigitsExtractorMixin, FeatureExtractorBase), {})
        register_feature_extractor(DIGITS_EXTRACTOR, cls)
    return FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR]


# ----------------------------------------------------------------------------- metrics
def count_name(n: int) -> str:
    """10000 -> "10k", 500 -> "500"."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


class UInt8Images(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) as the Dataset torch-fidelity reads (one tensor per item)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class FidelityOptions(Options):
    samples: int = Field(10_000, ge=2, description="generated images (and at most this many real)")
    metrics: list[MetricName] = Field(
        ["fid", "kid", "is", "prc"], min_length=1, description="which of fid, kid, is, prc"
    )
    kid_subsets: int = Field(100, ge=1, description="KID: number of random subsets")
    kid_subset_size: int = Field(
        1000, ge=2, description="KID: subset size (capped at the number of images)"
    )
    isc_splits: int = Field(10, ge=1, description="IS: number of splits")
    prc_neighborhood: int = Field(3, ge=1, description="precision/recall: k of the k-NN radius")
    batch_size: int = Field(128, ge=1, description="images per feature-extractor batch")


class FidelityMetric(Metric):
    """Shared implementation; subclasses name the extractor and its weights."""

    extractor_tag: ClassVar[str]

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        if importlib.util.find_spec("torch_fidelity") is None:
            raise MetricUnavailable(
                f"{type(self).__name__} needs torch-fidelity: pip install torch-fidelity"
            )

    @abstractmethod
    def extractor(self, run: Run) -> tuple[str, str, str]:
        """(torch-fidelity extractor name, weights path, tag for the metric names)."""

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images as the extractor takes them."""
        return images

    def reference_images(self, run: Run) -> torch.Tensor:
        """Up to ``samples`` real training images (uint8), a subset seeded by the run."""
        generator = torch.Generator().manual_seed(run.config.seed + 11)
        order = torch.randperm(len(run.dataset.x), generator=generator)
        return run.dataset.x[order[: self.options.samples]]

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        import torch_fidelity

        opts = self.options
        name, weights, tag = self.extractor(run)
        fake = to_uint8(sample(opts.samples)[0])
        real = self.reference_images(run)
        cuda = run.device.type == "cuda"
        flags = {FLAGS[m]: m in opts.metrics for m in FLAGS}
        with torch.cuda.device(run.device) if cuda else contextlib.nullcontext():
            values = torch_fidelity.calculate_metrics(
                input1=UInt8Images(self.prepare_images(fake)),
                input2=UInt8Images(self.prepare_images(real)),
                **flags,
                feature_extractor=name,
                feature_extractor_weights_path=weights,
                cuda=cuda,
                batch_size=opts.batch_size,
                kid_subsets=opts.kid_subsets,
                kid_subset_size=min(opts.kid_subset_size, len(fake), len(real)),
                isc_splits=opts.isc_splits,
                prc_neighborhood=opts.prc_neighborhood,
                rng_seed=run.config.seed,
                save_cpu_ram=True,  # no DataLoader worker processes; k-NN radii in blocks
                cache=False,
                verbose=False,
            )
        suffix = f"{tag}_{count_name(opts.samples)}"
        names = {
            torch_fidelity.KEY_METRIC_FID: f"fid_{suffix}",
            torch_fidelity.KEY_METRIC_KID_MEAN: f"kid_{suffix}",
            torch_fidelity.KEY_METRIC_KID_STD: f"kid_{suffix}_std",
            torch_fidelity.KEY_METRIC_ISC_MEAN: f"is_{suffix}",
            torch_fidelity.KEY_METRIC_ISC_STD: f"is_{suffix}_std",
            torch_fidelity.KEY_METRIC_PRECISION: f"precision_{suffix}",
            torch_fidelity.KEY_METRIC_RECALL: f"recall_{suffix}",
        }
        return {names[key]: float(value) for key, value in values.items() if key in names}


class DigitsFidelityOptions(FidelityOptions, SourceOptions):
    pass


class DigitsFidelity(FidelityMetric):
    """{fid,kid,is,precision,recall}_{digits|mnist}_N with the digit classifier's features
    (the tag names the classifier's training data); IS is over the 10**C digit combinations."""

    Options = DigitsFidelityOptions

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.domain == "digits"

    def extractor(self, run: Run) -> tuple[str, str, str]:
        register_digits_extractor()
        source = resolve_source(self.options.source, run.config.data_root)
        return DIGITS_EXTRACTOR, str(classifier_path(source, run.config.data_root)), source


def inception_cache_path() -> Path:
    """Where torch-fidelity would download its Inception-v3 weights (torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


class InceptionFidelityOptions(FidelityOptions):
    weights: Path | None = Field(
        None,
        description=f"torch-fidelity Inception-v3 weights ({INCEPTION_FILE}); default: "
        f"${INCEPTION_WEIGHTS_ENV}, else the torch hub cache",
    )


class InceptionFidelity(FidelityMetric):
    """{fid,kid,is,precision,recall}_inception_N with torch-fidelity's Inception-v3
    (the TF-FID port). Gray images are repeated to RGB. Weights are never downloaded."""

    Options = InceptionFidelityOptions

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        env = os.environ.get(INCEPTION_WEIGHTS_ENV)
        path = self.options.weights or (Path(env) if env else inception_cache_path())
        if not path.is_file():
            raise MetricUnavailable(
                f"no Inception-v3 weights at {path} (nothing is downloaded); pass "
                f"--inception-weights PATH or set {INCEPTION_WEIGHTS_ENV}=PATH to a copy of "
                f"torch-fidelity's {INCEPTION_FILE}"
            )
        self.options.weights = path.resolve()

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.is_image

    def extractor(self, run: Run) -> tuple[str, str, str]:
        return INCEPTION_EXTRACTOR, str(self.options.weights), "inception"

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
