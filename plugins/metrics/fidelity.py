"""FID, KID, Inception Score and precision/recall through torch-fidelity.

``fid_digits`` reads images with the digit classifier (one digit per channel; extractor
``digits-cnn``), ``fid_inception`` with torch-fidelity's Inception-v3 (never downloaded).
Generated samples are torch-fidelity's input1, real training images (a seeded random
subset of at most ``samples``) its input2; with ``reference=test``, held-out images
(``Dataset.x_heldout``) instead. Result names carry the protocol:
``{fid,kid,is,precision,recall}_{extractor}_{samples}``, e.g. ``fid_inception_10k``, and
``..._{extractor}_test_{samples}`` against the held-out split.

``intra_fid_digits`` / ``intra_fid_inception`` (opt-in) are intra-FID (Miyato & Koyama 2018,
§4.1): the FID of each class of the conditioner against that class's real images, with its
mean and worst over the classes (``IntraFidelityMetric``).

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
    drop_if_damaged,
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
Reference = Literal["train", "test"]
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


def drop_damaged_caches(root: Path, key: str) -> None:
    """Delete torch-fidelity's cache files of ``key`` (features, statistics) that are damaged,
    so that it recomputes them instead of failing to read them."""
    for path in root.glob(f"{key}-*.pt"):
        drop_if_damaged(path)


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


def key_suffix(tag: str, reference: str, samples: int) -> str:
    """What follows ``fid_`` in a key: ``digits_10k`` against training images (the keys
    runs had before ``reference`` existed), ``digits_test_10k`` against held-out ones."""
    split = "" if reference == "train" else f"{reference}_"
    return f"{tag}_{split}{count_name(samples)}"


def reference_pool(dataset: Dataset, reference: str) -> torch.Tensor | None:
    """The real images of a reference split: the training images, or the held-out ones
    (``Dataset.x_heldout``; None when the dataset has none)."""
    return dataset.x if reference == "train" else getattr(dataset, "x_heldout", None)


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
    reference: Reference = Field(
        "train", description="real images compared with: train (training images) or test (the "
        "dataset's held-out split, Dataset.x_heldout; named in the keys: fid_digits_test_10k)"
    )

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

    @abstractmethod
    def tag(self, config: RunConfig) -> str:
        """The extractor's part of the metric names (``digits``, ``inception``)."""

    def keys(self, config: RunConfig) -> set[str] | None:
        """``fid_<tag>[_<reference>]_<samples>`` and its siblings, for ``options.metrics``."""
        suffix = key_suffix(self.tag(config), self.options.reference, self.options.samples)
        names = {"fid": [f"fid_{suffix}"], "kid": [f"kid_{suffix}", f"kid_{suffix}_std"],
                 "is": [f"is_{suffix}", f"is_{suffix}_std"],
                 "prc": [f"precision_{suffix}", f"recall_{suffix}"]}
        return {key for metric in self.options.metrics for key in names[metric]}

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images as the extractor takes them."""
        return images

    def resolved(self) -> dict[str, Any]:
        """The options; ``reference`` only when it is not ``train``, so that runs from before
        the option existed (which compared with training images) group with today's."""
        values = super().resolved()
        if values.get("reference") == "train":
            del values["reference"]
        return values

    def reference_images(self, run: Run) -> torch.Tensor:
        """Up to ``samples`` real images (uint8) of the ``reference`` split, a subset seeded by
        the run."""
        pool = reference_pool(run.dataset, self.options.reference)
        assert pool is not None  # check() refused a dataset without a held-out split
        generator = torch.Generator().manual_seed(run.config.seed + 11)
        order = torch.randperm(len(pool), generator=generator)
        return pool[order[: self.options.samples]]

    def check(self, dataset: Dataset) -> None:
        """The real side, min(samples, images of the reference split): a held-out split for
        ``reference=test``, FID and KID need 2 images, precision/recall more than
        ``prc_neighborhood``."""
        opts = self.options
        pool = reference_pool(dataset, opts.reference)
        if pool is None:
            raise ConfigError(
                f"invalid metric {self.plugin_name!r} option reference='test': the dataset has "
                "no held-out split (Dataset.x_heldout is None; e.g. heldout_fraction=0); valid: "
                "reference='train', or a dataset with held-out images"
            )
        split = "training" if opts.reference == "train" else "held-out"
        available = len(pool)
        real = min(opts.samples, available)
        source = f"{real} real images (samples={opts.samples}, {available} {split} images)"
        if {"fid", "kid"} & set(opts.metrics) and real < 2:
            raise ConfigError(
                f"metric {self.plugin_name!r}: FID and KID need at least 2 real images, the "
                f"dataset has {available} {split} images; valid: a dataset of 2 or more "
                f"{split} images, or metrics without fid and kid"
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
            drop_damaged_caches(root, key)
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
        return result_names(values, key_suffix(tag, opts.reference, opts.samples))


class DigitsFeatures:
    """Mixin of the metrics on the digit classifier's features (extractor ``digits-cnn``):
    digits data only; the key's tag names the classifier's training data (``digits`` or
    ``mnist``); the classifier must be present or trainable when the metric is built."""

    options: Any

    def __init__(self, options: Options) -> None:
        super().__init__(options)  # type: ignore[call-arg]
        require_classifier(self.options.source)

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.domain == "digits"

    def check(self, dataset: Dataset) -> None:
        super().check(dataset)  # type: ignore[misc]
        require_classifier(self.options.source, dataset.location.root)

    def tag(self, config: RunConfig) -> str:
        """The extractor's part of the keys: the classifier's training data."""
        return resolve_source(self.options.source, config.data_root)

    def extractor(self, run: Run) -> tuple[str, str, str]:
        register_digits_extractor()
        source = self.tag(run.config)
        return DIGITS_EXTRACTOR, str(classifier_path(source, run.config.data_root)), source


class DigitsFidelityOptions(FidelityOptions, SourceOptions):
    pass


class DigitsFidelity(DigitsFeatures, FidelityMetric):
    """{fid,kid,is,precision,recall}_{digits|mnist}_N with the digit classifier's features
    (the tag names the classifier's training data); IS is over the 10**C digit combinations."""

    Options = DigitsFidelityOptions
    plugin_name = "fid_digits"


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


class InceptionWeightsOptions(Options):
    weights: Path | None = Field(
        None,
        description=f"torch-fidelity Inception-v3 weights ({INCEPTION_FILE}); default: "
        f"${INCEPTION_WEIGHTS_ENV}, else the torch hub cache",
    )


class InceptionFeatures:
    """Mixin of the metrics on torch-fidelity's Inception-v3 (the TF-FID port): any images,
    gray ones repeated to RGB; weights are never downloaded, and are recorded by content."""

    options: Any

    def __init__(self, options: Options) -> None:
        super().__init__(options)  # type: ignore[call-arg]
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

    def tag(self, config: RunConfig) -> str:
        """The extractor's part of the keys."""
        return "inception"

    def extractor(self, run: Run) -> tuple[str, str, str]:
        return INCEPTION_EXTRACTOR, str(self.options.weights), self.tag(run.config)

    def resolved(self) -> dict[str, Any]:
        """The options with the weights named by their content (``sha256:<hex>``), not by
        their local path: runs on machines with different caches aggregate together, and
        runs with different weights never do."""
        return {**super().resolved(),  # type: ignore[misc]
                "weights": f"sha256:{file_sha256(self.options.weights)}"}

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class InceptionFidelityOptions(FidelityOptions, InceptionWeightsOptions):
    pass


class InceptionFidelity(InceptionFeatures, FidelityMetric):
    """{fid,kid,is,precision,recall}_inception_N with torch-fidelity's Inception-v3
    (the TF-FID port). Gray images are repeated to RGB. Weights are never downloaded."""

    Options = InceptionFidelityOptions
    plugin_name = "fid_inception"


# ----------------------------------------------------------------------------- intra-FID
INTRA_SEED = 12_000
"""Class c's generated images are drawn with ``harness.sampling`` and the seed
``config.seed + INTRA_SEED + c``: each class's noise is its own, whichever classes are scored."""
INTRA_SUBSET_SEED = 11
"""The real images partitioned are a subset seeded ``config.seed + 11``, as the FID family's."""


class IntraFidelityOptions(Options):
    samples: int = Field(
        1000, ge=2, le=200_000,
        description="generated images per class (and at most this many real ones of the "
        "class); default: --eval-samples, at most 1000",
    )
    min_real: int = Field(
        10, ge=2, le=200_000, description="classes with fewer real images are not scored"
    )
    subset: int | None = Field(
        None, ge=2, le=10_000_000,
        description="real training images partitioned into classes: a seeded random subset "
        "(default: all)",
    )
    per_class: bool = Field(
        False, description="also report every class's FID (keys ending _c<class>)"
    )
    batch_size: int = Field(128, ge=1, le=65_536, description="images per feature-extractor batch")

    @model_validator(mode="after")
    def _a_class_can_be_scored(self) -> IntraFidelityOptions:
        """At most ``samples`` real images of a class are used, so ``min_real`` must fit."""
        if self.min_real > self.samples:
            raise ValueError(
                f"min_real={self.min_real}: more than the samples={self.samples} real images a "
                f"class is compared with, so no class could be scored; valid: min_real <= "
                f"{self.samples}"
            )
        return self


class IntraFidelityMetric(FidelityMetric):
    """Intra-FID (Miyato & Koyama 2018, "cGANs with projection discriminator", §4.1): the FID
    of each class's generated images against the real images of that class, averaged over
    the classes. Keys ``intra_fid_{tag}_{samples}_mean`` and ``_worst`` (the largest class
    FID), ``_classes`` (how many classes were scored) and, with ``per_class``, ``_c<k>``.

    A class is the conditioner's: its real images are those the conditioner's partition
    (``Conditioner.partition``, as ``cluster_agreement`` scores it) puts in class c, so the
    true classes under ``--cond ground_truth`` and the clusters of a self-conditioned run
    (``kmeans_d``); its generated images are G(z, c), z ~ p(z|c), from the evaluation
    generator (``harness.sampling.generate``, seed ``config.seed + INTRA_SEED + c``), not
    the metric's sampler (whose labels are drawn from P(c)): ``harness tradeoff`` therefore
    reports it once, as a value the scale does not change.

    Real side: the training images (a seeded subset of ``subset``, default all) are
    partitioned, and each class keeps at most ``samples`` of its images (in the subset's
    order); classes with fewer than ``min_real`` are not scored (empty or tiny clusters).
    The features of the whole subset are extracted once and cached like the FID family's
    real features (the same key: exact images, extractor, weights, batch size, device,
    versions), so they serve every evaluation whatever the partition; each class's FID is
    torch-fidelity's (``fid_features_to_statistics`` and ``fid_statistics_to_metric``) on
    its rows. Costs one feature extraction of ``samples`` generated images per class.
    Raises ``MetricError`` when generated images are non-finite or no class has
    ``min_real`` real images.
    """

    def keys(self, config: RunConfig) -> set[str] | None:
        return None  # one key per class: known only once the classes are counted

    default = False
    better = {"intra_fid_*_classes": None, "intra_fid_*": "lower"}

    @classmethod
    def option_defaults(cls, config: RunConfig) -> dict[str, Any]:
        """``samples``: ``--eval-samples``, at most 1000 per class; ``min_real`` shrinks to
        fit a smaller ``samples``."""
        samples = max(2, min(cls.Options.model_fields["samples"].default, config.eval_samples))
        return {"samples": samples,
                "min_real": min(cls.Options.model_fields["min_real"].default, samples)}

    def check(self, dataset: Dataset) -> None:
        """The training set must hold ``min_real`` images for any class to be scored."""
        if len(dataset.x) < self.options.min_real:
            raise ConfigError(
                f"invalid metric {self.plugin_name!r} option min_real={self.options.min_real}: "
                f"the dataset has {len(dataset.x)} training images, so no class can have that "
                f"many; valid: min_real <= {len(dataset.x)}"
            )

    def real_classes(self, run: Run) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The partitioned real subset (dataset indices) and, per class with at least
        ``min_real`` of them, the positions in it of its first ``samples`` images."""
        opts = self.options
        generator = torch.Generator().manual_seed(run.config.seed + INTRA_SUBSET_SEED)
        index = torch.randperm(len(run.dataset.x), generator=generator)[: opts.subset]
        labels = run.conditioner.partition(run.models, index).cpu()
        members = {}
        for c in range(run.conditioner.num_classes):
            rows = (labels == c).nonzero().flatten()[: opts.samples]
            if len(rows) >= opts.min_real:
                members[c] = rows
        if not members:
            raise MetricError(
                f"{self.plugin_name}: no class of the conditioner has {opts.min_real} real "
                f"images among the {len(index)} partitioned (min_real={opts.min_real})"
            )
        return index, members

    def class_images(self, run: Run, c: int) -> torch.Tensor:
        """``samples`` generated images of class c as uint8; MetricError if any is
        non-finite."""
        from harness.sampling import generate

        labels = torch.full((self.options.samples,), c, dtype=torch.long)
        seed = run.config.seed + INTRA_SEED + c
        x = torch.cat([x for x, _ in generate(run, labels, seed)])
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        if bad:
            raise MetricError(f"{self.plugin_name}: {bad} of {len(x)} generated images of "
                              f"class {c} are non-finite")
        return to_uint8(x)

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        import torch_fidelity
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.utils import (
            create_feature_extractor,
            extract_featuresdict_from_input_id,
            extract_featuresdict_from_input_id_cached,
            resolve_feature_layer_for_metric,
        )

        opts = self.options
        name, weights, tag = self.extractor(run)
        index, members = self.real_classes(run)
        real = self.prepare_images(run.dataset.x[index])
        cuda = run.device.type == "cuda"
        kwargs: dict[str, Any] = {
            "fid": True, "feature_extractor": name, "feature_extractor_weights_path": weights,
            "cuda": cuda, "batch_size": opts.batch_size, "save_cpu_ram": True, "verbose": False,
            "input2": UInt8Images(real),
        }
        root = self.cache_root
        if root is not None and unwritable_reason(root) is None:
            key = reference_cache_name(real, name, Path(weights), opts.batch_size, run.device)
            kwargs.update(cache=True, cache_root=str(root), input2_cache_name=key)
            drop_damaged_caches(root, key)
        else:
            kwargs.update(cache=False)
        values: dict[int, float] = {}
        with torch.cuda.device(run.device) if cuda else contextlib.nullcontext():
            layer = resolve_feature_layer_for_metric("fid", **kwargs)
            extractor = create_feature_extractor(name, [layer], **kwargs)
            real_features = extract_featuresdict_from_input_id_cached(2, extractor, **kwargs)
            for c, rows in members.items():
                fake = UInt8Images(self.prepare_images(self.class_images(run, c)))
                fake_features = extract_featuresdict_from_input_id(
                    1, extractor, **{**kwargs, "input1": fake}
                )
                stats = [fid_features_to_statistics(features) for features in
                         (fake_features[layer], real_features[layer][rows])]
                values[c] = fid_statistics_to_metric(*stats, False)[torch_fidelity.KEY_METRIC_FID]
        prefix = f"intra_fid_{tag}_{count_name(opts.samples)}"
        scores = list(values.values())
        out = {f"{prefix}_mean": sum(scores) / len(scores), f"{prefix}_worst": max(scores),
               f"{prefix}_classes": float(len(scores))}
        if opts.per_class:
            out.update({f"{prefix}_c{c}": value for c, value in values.items()})
        return out


class DigitsIntraFidelityOptions(IntraFidelityOptions, SourceOptions):
    pass


class DigitsIntraFidelity(DigitsFeatures, IntraFidelityMetric):
    """intra_fid_{digits|mnist}_N_{mean,worst,classes}: intra-FID with the digit
    classifier's features (opt-in)."""

    Options = DigitsIntraFidelityOptions
    plugin_name = "intra_fid_digits"


class InceptionIntraFidelityOptions(IntraFidelityOptions, InceptionWeightsOptions):
    pass


class InceptionIntraFidelity(InceptionFeatures, IntraFidelityMetric):
    """intra_fid_inception_N_{mean,worst,classes}: intra-FID with torch-fidelity's
    Inception-v3 (opt-in; weights never downloaded)."""

    Options = InceptionIntraFidelityOptions
    plugin_name = "intra_fid_inception"
