"""Run configuration: a pydantic model, loaded from TOML and CLI flags, validated up front."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import ConfigError

COMPONENT_FIELDS = {
    "prior": "priors",
    "cond": "conditioners",
    "backbone": "backbones",
    "dataset": "datasets",
    "loss": "losses",
    "reg": "regularizers",
    "augment": "augmentations",
}
"""Config field -> plugin family of the component it names."""

NON_SCIENTIFIC = {
    "out", "device", "threads", "log_every", "checkpoint_every", "sample_every", "progress",
    "data_root", "download", "keep_checkpoints", "best_metric", "log",
}
"""Fields that do not change a run's results: left out of its identity hash and grouping."""

RESUMABLE = {
    "steps", "progress", "threads", "device", "log_every", "checkpoint_every", "sample_every",
    "data_root", "download", "keep_checkpoints", "best_metric", "log",
}
"""Fields ``--resume`` may change: they extend (``steps``, never fewer) or observe a run."""
ADDED_LATER = {
    "reg": "none", "reg_options": {}, "augment": "none", "augment_options": {},
    "optimizer": "adam", "weight_decay": None, "betas_g": None, "betas_d": None,
}
"""Fields added after runs were first recorded, with their defaults: at these values they are
left out of the identity, so a run keeps its hash (and its checkpoints stay resumable)."""
MAX_SEED = 2**32 - 1
"""Largest seed: the run derives further seeds by adding small offsets (numpy's bound too)."""

INCEPTION_WEIGHTS_ENV = "HARNESS_INCEPTION_WEIGHTS"
"""Environment variable (set by ``--inception-weights``) with the Inception weights file."""


def no_bool_numbers(model: type[BaseModel], data: Any) -> Any:
    """Refuse ``true``/``false`` for a number field or a number inside a list or tuple field
    (pydantic would read them as 1 and 0)."""
    if isinstance(data, dict):
        for name, value in data.items():
            field = model.model_fields.get(name)
            if field is None or _accepts_bool(field.annotation):
                continue
            items = value if isinstance(value, list | tuple) else [value]
            if any(isinstance(item, bool) for item in items):
                raise ValueError(f"{name}={value!r}: a boolean is not a number")
    return data


def _accepts_bool(annotation: Any) -> bool:
    """Whether a boolean is a valid value of ``annotation`` or of its items: True for
    ``bool``, ``bool | None``, ``list[bool]``, and for annotations without numbers."""
    types = _types_in(annotation)
    return bool in types or not ({int, float} & types)


def _types_in(annotation: Any) -> set[Any]:
    """``annotation`` and every type nested in its arguments (unions, lists, tuples)."""
    found = {annotation}
    for arg in getattr(annotation, "__args__", ()):
        found |= _types_in(arg)
    return found


class RunConfig(BaseModel):
    """Everything that defines one run. Component options are validated by their plugins."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prior: str = "gaussian"
    cond: str = "kmeans_d"
    backbone: str = "mlp"
    dataset: str = "ring"
    loss: str = "bce"
    reg: str = Field(default="none", description="regulariser plugin (e.g. r1)")
    augment: str = Field(default="none", description="augmentation of D's inputs (e.g. diffaug)")
    metrics: list[str] | None = Field(
        default=None, description="metric plugins to run; default: all that support the dataset"
    )
    prior_options: dict[str, Any] = {}
    cond_options: dict[str, Any] = {}
    backbone_options: dict[str, Any] = {}
    dataset_options: dict[str, Any] = {}
    loss_options: dict[str, Any] = {}
    reg_options: dict[str, Any] = {}
    augment_options: dict[str, Any] = {}
    metric_options: dict[str, dict[str, Any]] = {}

    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    steps: int = Field(default=1500, ge=1, le=10**9, description="training iterations (G updates)")
    batch_size: int = Field(default=100, ge=1, le=65_536)
    d_steps: int = Field(default=1, ge=1, le=100, description="D updates per G update")
    z_dim: int | None = Field(default=None, ge=1, le=16_384, description="default: the backbone's")
    lr_g: float = Field(default=1e-4, gt=0, le=1e30)  # larger overflows float32 in the step
    lr_d: float = Field(default=1e-4, gt=0, le=1e30)
    betas: tuple[float, float] = (0.8, 0.999)
    betas_g: tuple[float, float] | None = Field(default=None, description="G's; default: betas")
    betas_d: tuple[float, float] | None = Field(default=None, description="D's; default: betas")
    optimizer: Literal["adam", "adamw"] = Field(
        default="adam", description="optimiser of every network (torch.optim.Adam / AdamW)"
    )
    weight_decay: float | None = Field(
        default=None, ge=0, le=1, description="default: the optimiser's (Adam 0, AdamW 0.01)"
    )
    eval_samples: int = Field(default=50_000, ge=1)
    ema_decay: float | None = Field(
        default=None, ge=0, lt=1, description="EMA of G's weights for evaluation (e.g. 0.999)"
    )
    ema_start: int = Field(default=0, ge=0, description="steps before the EMA starts averaging")
    eval_every: int = Field(
        default=0, ge=0, description="steps between intermediate evaluations; 0: only at the end"
    )

    out: Path = Path("results")
    data_root: Path = Field(
        default=Path("data"), description="folder of file-backed datasets (MNIST, CIFAR-10, ...)"
    )
    download: bool = Field(default=False, description="let torchvision download missing data")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch CPU threads (1 per run for parallel runs)"
    )
    log_every: int = Field(default=100, ge=1)
    log: list[str] = Field(
        default=[], description="loggers to enable (--log tensorboard,wandb; harness plugins "
        "lists them under loggers)"
    )
    checkpoint_every: int = Field(default=1000, ge=1)
    keep_checkpoints: int = Field(
        default=0, ge=0, le=10**9, description="steps between checkpoints also kept as "
        "checkpoints/step-<N>.pt (a multiple of checkpoint_every); 0: only the last"
    )
    best_metric: str | None = Field(
        default=None, min_length=1, max_length=200, description="metric key whose best "
        "evaluation is kept as checkpoints/best.pt, e.g. fid_digits_10k (needs eval_every)"
    )
    sample_every: int = Field(default=0, ge=0, description="steps between sample grids; 0: end")
    progress: bool = True

    _no_bool_numbers = model_validator(mode="before")(classmethod(no_bool_numbers))

    @field_validator("metrics", "log")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else list(dict.fromkeys(v))  # a repeat names the same plugin

    @field_validator("log", mode="before")
    @classmethod
    def _comma_separated(cls, v: Any) -> Any:
        """``--log tensorboard,wandb`` gives the names as one string; one that names no
        logger (``--log ,``) is refused, as ``--metrics ,`` is."""
        if not isinstance(v, str):
            return v
        names = [name.strip() for name in v.split(",") if name.strip()]
        if not names:
            raise ValueError("names no logger (valid: comma-separated loggers, e.g. "
                             "tensorboard,wandb; harness plugins lists them)")
        return names

    @field_validator("out", "data_root")
    @classmethod
    def _no_nul(cls, v: Path) -> Path:
        if "\x00" in str(v):
            raise ValueError("a path cannot contain a NUL byte")
        return v

    @model_validator(mode="after")
    def _kept_checkpoints_are_written(self) -> RunConfig:
        if self.keep_checkpoints % self.checkpoint_every:
            raise ValueError(
                f"keep_checkpoints={self.keep_checkpoints}: checkpoints are written every "
                f"checkpoint_every={self.checkpoint_every} steps (valid: a multiple of it, "
                "or 0)")
        return self

    @field_validator("betas", "betas_g", "betas_d")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {v}")
        return v

    def network_betas(self, network: Literal["g", "d"]) -> tuple[float, float]:
        """Adam's betas of G (``"g"``, also the prior's) or D (``"d"``)."""
        own = self.betas_g if network == "g" else self.betas_d
        return own if own is not None else self.betas

    def identity(self) -> dict[str, Any]:
        """The fields that determine the results (all but output/logging settings; fields
        of ``ADDED_LATER`` only when they differ from their defaults)."""
        values = self.model_dump(mode="json", exclude=NON_SCIENTIFIC)
        for name, default in ADDED_LATER.items():
            if values[name] == default:
                del values[name]
        return values

    def short_hash(self) -> str:
        """8 hex digits of the identity: part of the run directory's name."""
        return _hash(self.identity())

    def trajectory_hash(self) -> str:
        """8 hex digits of what determines the training trajectory step by step: the
        identity without ``steps`` (a checkpoint at step s is the same for any longer run)."""
        return _hash({k: v for k, v in self.identity().items() if k != "steps"})


def _hash(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def load_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML file, or from a run's ``config.json`` (its ``config`` object).

    Raises ``ConfigError`` (one line naming the file) for a missing, unreadable, non-UTF-8 or
    malformed file, and for content that is not a table of settings.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a directory (valid: a .toml file or a config.json)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason} at byte "
                          f"{exc.start} (valid: a .toml file or a config.json)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"invalid JSON in {path}: {exc}") from None
        if isinstance(values, dict) and "config" in values:
            values = values["config"]
    else:
        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML in {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} holds a JSON {type(values).__name__}, not an "
                          "object of settings (valid: a .toml file or a run's config.json)")
    for key in [*(f"{f}_options" for f in COMPONENT_FIELDS), "metric_options"]:
        if key in values and not isinstance(values[key], dict):
            raise ConfigError(f"{key} in {path} must be a table of options, got "
                              f"{values[key]!r} (e.g. [{key}] with key = value lines)")
    metric_options = values.get("metric_options", {})
    for metric, opts in metric_options.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"metric_options.{metric} in {path} must be a table of options, "
                              f"got {opts!r}")
    return values


def parse_assignments(pairs: list[str], flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` -> dict; values are read as JSON when they parse, else kept as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


def parse_metric_options(
    pairs: list[str], owners: Callable[[str], list[str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``--metric-opt METRIC.KEY=VALUE`` pairs -> ``{metric: {key: value}}`` (values as in
    ``parse_assignments``). ``ConfigError`` (one line) for a pair without its metric;
    ``owners(key)``, when given, names the metrics that have an option ``key``, to suggest
    the pair with its metric."""
    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        ((key, value),) = parse_assignments([pair], "--metric-opt").items()
        metric, dot, option = key.partition(".")
        if not dot or not metric or not option:
            raw = pair.partition("=")[2]
            suggested = [f"{name}.{key}={raw}" for name in (owners(key) if owners else [])]
            raise ConfigError(f"--metric-opt expects METRIC.KEY=VALUE, got {pair!r} (valid: "
                              + (" or ".join(suggested) or "e.g. fid_digits.samples=5000")
                              + ")")
        options.setdefault(metric, {})[option] = value
    return options


def describe_validation_error(exc: ValidationError, what: str, fields: list[str]) -> str:
    """One line naming the bad value and the valid choices."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "value"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown option {loc!r} (valid: {', '.join(fields) or 'none'})")
        elif not err["loc"]:  # a check across several fields names them itself
            parts.append(message)
        else:
            parts.append(f"{loc}={err.get('input')!r}: {message}")
    return f"invalid {what}: " + "; ".join(parts)


def make_config(values: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(
            describe_validation_error(exc, "run config", list(RunConfig.model_fields))
        ) from None
