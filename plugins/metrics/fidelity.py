"""FID, KID, Inception Score and precision/recall through torch-fidelity.

``fid_digits`` reads images with the digit classifier (one digit per channel; extractor
``digits-cnn``), ``fid_inception`` with torch-fidelity's Inception-v3 (never downloaded).
Generated samples are torch-fidelity's input1, real training images (a seeded random
subset of at most ``samples``) its input2. Result names carry the protocol:
``{fid,kid,is,precision,recall}_{extractor}_{samples}``, e.g. ``fid_inception_10k``.

Options are checked before training: IS needs ``isc_splits`` <= ``samples``, precision/recall
more images than ``prc_neighborhood`` on both sides, FID and KID two real images. Generated
images with NaN or infinity make the metric fail (``MetricError``) instead of being scored.

The real images' features (and FID statistics) are cached on disk by torch-fidelity's own
cache, in ``$HARNESS_CACHE_DIR/fidelity`` (default ``~/.cache/gan-harness/fidelity``), under
a name that digests every input of those features (:func:`reference_cache_name`): the exact
images (so the dataset, its options and split, the seeded subset and its count), the
extractor and the SHA-256 of its weights, the batch size, the device, and the torch and
torch-fidelity versions; torch-fidelity appends the feature layer. A second evaluation of a
run, and other runs on the same real subset, load them instead of re-extracting them; the
values are bit-identical. Files are written atomically (concurrent runs at worst compute an
entry twice) and never evicted: per 10k real images with IS on (features and logits),
about 55 MB for ``digits-cnn`` on stacked digits, 120 MB for Inception; delete the folder to
reclaim the space. An unwritable folder disables the cache.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from harness.api import Dataset, DataSpec, Metric, Options, Sampler, to_uint8
from harness.config import INCEPTION_WEIGHTS_ENV
from harness.errors import ConfigError, MetricError, MetricUnavailable
from harness.results import unwritable_reason
from harness_plugins.metrics.digit_classifier import (
    SIZE,
    SourceOptions,
    cache_dir,
    classifier_path,
    load_classifier,
    prepare,
    require_classifier,
    resolve_source,
)

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.run import Run

DIGITS_EXTRACTOR = "digits-cnn"
INCEPTION_EXTRACTOR = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
"""Basename of torch-fidelity's Inception-v3 URL: its file name in the torch hub cache."""
MetricName = Literal["fid", "kid", "is", "prc"]
FLAGS = {"fid": "fid", "kid": "kid", "is": "isc", "prc": "prc"}
"""Our metric names -> torch-fidelity's flags."""
CACHE_VERSION = 1
"""Bump when what the cached real features depend on changes in a way the key misses."""


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


def result_names(values: dict[str, Any], suffix: str) -> dict[str, float]:
    """torch-fidelity's results -> ours, e.g. ``frechet_inception_distance`` ->
    ``fid_{suffix}``; keys we do not report are dropped."""
    import torch_fidelity

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


def reference_cache_name(
    images: torch.Tensor, extractor: str, weights: Path, batch_size: int, device: torch.device
) -> str:
    """torch-fidelity's ``input2_cache_name`` for the real ``images`` (uint8 (N, C, H, W), as
    the extractor reads them): a SHA-256 over their bytes, shape and order and over whatever
    else changes their features' bits. Features depend on the batch size (oneDNN and cuDNN
    pick kernels by shape), the device and the library versions, so all are part of it."""
    import torch_fidelity

    key = {
        "version": CACHE_VERSION, "extractor": extractor, "weights": file_sha256(weights),
        "batch_size": batch_size, "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "torch_fidelity": torch_fidelity.__version__,
        "shape": list(images.shape), "dtype": str(images.dtype),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    digest.update(memoryview(images.contiguous().numpy()).cast("B"))
    return f"gan-harness-real-{digest.hexdigest()[:32]}"


DEFAULT_SAMPLES = 10_000
"""Generated images (and at most as many real) when neither ``samples`` nor a smaller
``--eval-samples`` is given: the count the papers' FID protocols use on CIFAR-scale data."""


class FidelityOptions(Options):
    samples: int = Field(
        DEFAULT_SAMPLES, ge=2, le=200_000,
        description="generated images (and at most this many real); default: --eval-samples, "
        f"at most {DEFAULT_SAMPLES}",
    )
    metrics: list[MetricName] = Field(
        ["fid", "kid", "is", "prc"], min_length=1, description="which of fid, kid, is, prc"
    )
    kid_subsets: int = Field(100, ge=1, le=10_000, description="KID: number of random subsets")
    kid_subset_size: int = Field(
        1000, ge=2, description="KID: subset size (capped at the number of images)"
    )
    isc_splits: int = Field(
        10, ge=1, le=200_000, description="IS: number of splits (at most samples)"
    )
    prc_neighborhood: int = Field(
        3, ge=1, description="precision/recall: k of the k-NN radius (below the image counts)"
    )
    batch_size: int = Field(128, ge=1, le=65_536, description="images per feature-extractor batch")

    @model_validator(mode="after")
    def _fit_the_generated_images(self) -> FidelityOptions:
        """IS splits and the PRC neighbourhood against the ``samples`` generated images (the
        real side depends on the dataset: ``FidelityMetric.check``)."""
        if "is" in self.metrics and self.isc_splits > self.samples:
            raise ValueError(
                f"isc_splits={self.isc_splits}: more IS splits than the samples={self.samples} "
                f"generated images; valid: isc_splits <= {self.samples}"
            )
        if "prc" in self.metrics and self.prc_neighborhood >= self.samples:
            raise ValueError(
                f"prc_neighborhood={self.prc_neighborhood}: precision/recall needs more "
                f"generated images (samples={self.samples}) than neighbours; valid: "
                f"prc_neighborhood < {self.samples}"
            )
        return self


class FidelityMetric(Metric):
    """Shared implementation; subclasses name the extractor and its weights."""

    better = {"*_std": None, "fid_*": "lower", "kid_*": "lower", "is_*": "higher",
              "precision_*": "higher", "recall_*": "higher"}

    extractor_tag: ClassVar[str]
    plugin_name: ClassVar[str]
    """The name the metric is registered under, for messages."""

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        if importlib.util.find_spec("torch_fidelity") is None:
            raise MetricUnavailable(
                f"{type(self).__name__} needs torch-fidelity: pip install torch-fidelity"
            )
        self.cache_root: Path | None = cache_dir() / "fidelity"
        """Where the real images' features are cached; None: extracted at every call."""

    @classmethod
    def option_defaults(cls, config: RunConfig) -> dict[str, Any]:
        """``samples``: ``--eval-samples``, at most 10000, so that a quick run evaluates
        quickly (the count is part of every result's name: ``fid_digits_500``); IS splits
        and the PRC neighbourhood shrink with it when fewer samples leave them invalid."""
        samples = max(2, min(DEFAULT_SAMPLES, config.eval_samples))
        fields = cls.Options.model_fields
        return {"samples": samples,
                "isc_splits": min(fields["isc_splits"].default, samples),
                "prc_neighborhood": min(fields["prc_neighborhood"].default, samples - 1)}

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

    def check(self, dataset: Dataset) -> None:
        """The real side, min(samples, training images): FID and KID need 2 images,
        precision/recall more than ``prc_neighborhood``."""
        opts = self.options
        available = len(dataset.x)
        real = min(opts.samples, available)
        source = f"{real} real images (samples={opts.samples}, {available} training images)"
        if {"fid", "kid"} & set(opts.metrics) and real < 2:
            raise ConfigError(
                f"metric {self.plugin_name!r}: FID and KID need at least 2 real images, the "
                f"dataset has {available}; valid: a dataset of 2 or more training images, or "
                "metrics without fid and kid"
            )
        if "prc" in opts.metrics and opts.prc_neighborhood >= real:
            raise ConfigError(
                f"invalid metric {self.plugin_name!r} option prc_neighborhood="
                f"{opts.prc_neighborhood}: precision/recall needs more than that many "
                f"neighbours among the {source}; valid: prc_neighborhood < {real}"
            )

    def generated_images(self, sample: Sampler) -> torch.Tensor:
        """``samples`` generated images as uint8; MetricError if any holds NaN or infinity."""
        x = sample(self.options.samples)[0]
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        if bad:
            raise MetricError(
                f"{self.plugin_name}: {bad} of {len(x)} generated images are non-finite"
            )
        return to_uint8(x)

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        import torch_fidelity

        opts = self.options
        name, weights, tag = self.extractor(run)
        fake = self.prepare_images(self.generated_images(sample))
        real = self.prepare_images(self.reference_images(run))
        cuda = run.device.type == "cuda"
        flags = {FLAGS[m]: m in opts.metrics for m in FLAGS}
        root = self.cache_root
        if root is not None and unwritable_reason(root) is None:
            key = reference_cache_name(real, name, Path(weights), opts.batch_size, run.device)
            # only input2 has a cache name: input1 (not a registered input) is never cached
            cache = {"cache": True, "cache_root": str(root), "input2_cache_name": key}
        else:
            cache = {"cache": False}
        with torch.cuda.device(run.device) if cuda else contextlib.nullcontext():
            values = torch_fidelity.calculate_metrics(
                input1=UInt8Images(fake),
                input2=UInt8Images(real),
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
                **cache,
                verbose=False,
            )
        return result_names(values, f"{tag}_{count_name(opts.samples)}")


class DigitsFidelityOptions(FidelityOptions, SourceOptions):
    pass


class DigitsFidelity(FidelityMetric):
    """{fid,kid,is,precision,recall}_{digits|mnist}_N with the digit classifier's features
    (the tag names the classifier's training data); IS is over the 10**C digit combinations."""

    Options = DigitsFidelityOptions
    plugin_name = "fid_digits"

    def __init__(self, options: Options) -> None:
        super().__init__(options)
        require_classifier(self.options.source)

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.domain == "digits"

    def check(self, dataset: Dataset) -> None:
        super().check(dataset)
        require_classifier(self.options.source, dataset.location.root)

    def extractor(self, run: Run) -> tuple[str, str, str]:
        register_digits_extractor()
        source = resolve_source(self.options.source, run.config.data_root)
        return DIGITS_EXTRACTOR, str(classifier_path(source, run.config.data_root)), source


def inception_cache_path() -> Path:
    """Where torch-fidelity would download its Inception-v3 weights (torch hub cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_layout() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of torch-fidelity's Inception-v3, from the network built
    on the meta device with weight loading skipped (no memory, nothing read)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Layout(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args: Any, **kwargs: Any) -> None:
            """Skipped: only the architecture is wanted."""

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.device("meta"):
        net = Layout(INCEPTION_EXTRACTOR, ["2048"], feature_extractor_weights_path=empty)
    return {name: tuple(tensor.shape) for name, tensor in net.state_dict().items()}


@functools.cache
def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks; cached per path in a process)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_inception_weights(path: Path) -> None:
    """MetricUnavailable unless ``path`` holds a state dict with the names and shapes of
    torch-fidelity's Inception-v3 (BatchNorm's ``num_batches_tracked`` may be absent)."""
    fix = (
        f"pass --inception-weights PATH or set {INCEPTION_WEIGHTS_ENV}=PATH to a copy of "
        f"torch-fidelity's {INCEPTION_FILE}"
    )
    try:
        with warnings.catch_warnings():  # torch's notes on foreign pickles
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MetricUnavailable(
            f"Inception-v3 weights {path} are not a torch state dict of tensors "
            f"(torch.load(weights_only=True) failed: {type(exc).__name__}); {fix}"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise MetricUnavailable(
            f"Inception-v3 weights {path} hold a {type(state).__name__}, not a state dict of "
            f"tensors; {fix}"
        )
    layout = inception_layout()
    missing = [k for k in layout if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in layout]
    wrong = [k for k in layout if k in state and tuple(state[k].shape) != layout[k]]
    for problem, keys in [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)]:
        if keys:
            raise MetricUnavailable(
                f"Inception-v3 weights {path} are not torch-fidelity's Inception-v3: "
                f"{len(keys)} tensors {problem} (e.g. {keys[0]}); {fix}"
            )


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
    plugin_name = "fid_inception"

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
        check_inception_weights(path)
        self.options.weights = path.resolve()

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.is_image

    def extractor(self, run: Run) -> tuple[str, str, str]:
        return INCEPTION_EXTRACTOR, str(self.options.weights), "inception"

    def resolved(self) -> dict[str, Any]:
        """The options with the weights named by their content (``sha256:<hex>``), not by
        their local path: runs on machines with different caches aggregate together, and
        runs with different weights never do."""
        return {**super().resolved(), "weights": f"sha256:{file_sha256(self.options.weights)}"}

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
