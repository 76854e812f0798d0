"""Suites: a paper's table as a grid of runs (rows x datasets x seeds) with its published numbers.

A suite lives in ``registry.toml`` under ``[suite.NAME]`` (see the comments there):

- ``rows``: the table's methods, each a partial ``RunConfig`` (``settings``) and the label
  the paper prints; ``datasets``: the table's datasets (``dataset_settings`` per dataset);
  ``settings``: what every run shares.
- ``profiles``: budgets. ``paper`` is the published schedule; ``quick`` finishes on
  2 CPU cores in about 20 minutes and says what it gives up (``note``). A profile sets the
  number of seeds and overrides settings for all runs, per dataset and per row.
- ``published``: ``published.<dataset>.<row>.<metric> = [mean, spread]`` (or a bare mean),
  the spread being the suite's ``statistic`` (``sem`` or ``std``) over ``trials`` runs; a
  metric name may be an ``fnmatch`` pattern (``fid_inception_*``). ``stand_ins`` maps an
  offline dataset of ours to the paper's (stacked digits for stacked MNIST).

A row's method (suite, dataset and row settings, without the profile's budget) is also how
published numbers are matched to any run: ``matching_rows`` finds the rows whose settings
a run's configuration contains.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
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

from harness.config import RunConfig, describe_validation_error, make_config
from harness.errors import ConfigError, HarnessError, describe

Settings = dict[str, Any]
"""A partial ``RunConfig``: field -> value, ``*_options`` as tables."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Row(Strict):
    label: str = Field(description="the row's name in the paper's table")
    settings: Settings = {}
    note: str = ""


class Profile(Strict):
    note: str = Field(description="what this budget is and what it gives up")
    seeds: int = Field(ge=1, le=1000)
    datasets: list[str] | None = None
    """The datasets run under this profile (default: the suite's), e.g. offline stand-ins."""
    settings: Settings = {}
    dataset_settings: dict[str, Settings] = {}
    rows: dict[str, Settings] = {}
    """Per-row settings of this budget (e.g. a shorter re-clustering period)."""


Published = dict[str, dict[str, dict[str, float | list[float]]]]


class Suite(Strict):
    name: str
    paper: str = Field(description="paper and table, e.g. 'Liu et al. 2020, ..., Table 1'")
    statistic: Literal["sem", "std"] = Field(description="what the published ± is")
    trials: int | None = Field(None, ge=1, description="runs behind each published number")
    datasets: list[str] = Field(min_length=1)
    rows: dict[str, Row] = Field(min_length=1)
    settings: Settings = {}
    dataset_settings: dict[str, Settings] = {}
    profiles: dict[str, Profile]
    published: Published = {}
    stand_ins: dict[str, str] = {}
    note: str = ""

    @model_validator(mode="after")
    def _has_paper_and_quick(self) -> Suite:
        missing = sorted({"paper", "quick"} - set(self.profiles))
        if missing:
            raise ValueError(f"needs profiles paper and quick (missing: {', '.join(missing)})")
        return self

    @field_validator("published")
    @classmethod
    def _published_cells(cls, v: Published) -> Published:
        for dataset, rows in v.items():
            for row, cells in rows.items():
                for metric, value in cells.items():
                    values = value if isinstance(value, list) else [value]
                    where = f"published.{dataset}.{row}.{metric} = {value!r}"
                    if not 1 <= len(values) <= 2:
                        raise ValueError(f"{where}: give a mean or [mean, spread]")
                    if not all(math.isfinite(x) for x in values):
                        raise ValueError(f"{where}: not a finite number")
                    if len(values) == 2 and values[1] < 0:
                        raise ValueError(f"{where}: a spread cannot be negative")
        return v

    def method(self, dataset: str, row: str) -> Settings:
        """The settings that define a row's method on ``dataset`` (no budget)."""
        return merge(self.settings, self.dataset_settings.get(dataset, {}),
                     self.rows[row].settings)

    def config_values(self, profile: str, dataset: str, row: str, seed: int) -> Settings:
        """A job's settings: the method, then the profile's budget, then dataset and seed."""
        chosen = self.profiles[profile]
        return merge(self.method(dataset, row), chosen.settings,
                     chosen.dataset_settings.get(dataset, {}), chosen.rows.get(row, {}),
                     {"dataset": dataset, "seed": seed})

    def profile_datasets(self, profile: str) -> list[str]:
        return self.profiles[profile].datasets or self.datasets

    def paper_dataset(self, dataset: str) -> str:
        return self.stand_ins.get(dataset, dataset)

    def published_row(self, dataset: str, row: str) -> dict[str, tuple[float, float]]:
        """``{metric pattern: (mean, spread)}`` for a row on (the paper's) ``dataset``; the
        spread is NaN when the paper gives none."""
        found = self.published.get(self.paper_dataset(dataset), {}).get(row, {})
        return {metric: spread_pair(value) for metric, value in found.items()}

    def size(self, profile: str, seeds: int | None = None) -> int:
        return (len(self.profile_datasets(profile)) * len(self.rows)
                * (seeds or self.profiles[profile].seeds))


def spread_pair(value: float | list[float]) -> tuple[float, float]:
    """A published cell, ``mean`` or ``[mean, spread]``, as ``(mean, spread or NaN)``."""
    if isinstance(value, list):
        return (float(value[0]), float(value[1]) if len(value) > 1 else math.nan)
    return float(value), math.nan


def merge(*layers: Settings) -> Settings:
    """Settings layered left to right; ``*_options`` tables are merged key by key."""
    merged: Settings = {}
    for layer in layers:
        for key, value in layer.items():
            if key.endswith("_options") and isinstance(value, dict):
                if key == "metric_options":
                    old = merged.get(key, {})
                    merged[key] = {m: {**old.get(m, {}), **o} for m, o in {**old, **value}.items()
                                   if isinstance(o, dict)}
                else:
                    merged[key] = {**merged.get(key, {}), **value}
            else:
                merged[key] = value
    return merged


def load_suites(text: str) -> dict[str, Suite]:
    """Every ``[suite.*]`` table of a registry's TOML text, validated.

    Raises ``ConfigError`` (one line naming the suite and the bad key) for a malformed suite:
    unknown keys, a row, dataset or profile referred to but not defined, settings that are
    not ``RunConfig`` fields.
    """
    raw = tomllib.loads(text).get("suite", {})
    suites = {}
    for name, table in raw.items():
        try:
            suite = Suite.model_validate({"name": name, **table})
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, f"suite {name!r}",
                                                        list(Suite.model_fields))) from None
        check_references(suite)
        suites[name] = suite
    return suites


def check_references(suite: Suite) -> None:
    """Every row, dataset and setting a suite names exists (components are checked later,
    against the installed plugins, by ``harness suite``)."""
    where = f"suite {suite.name!r}"
    datasets = {d for p in suite.profiles for d in suite.profile_datasets(p)}
    for dataset, rows in suite.published.items():
        if dataset not in datasets | set(suite.stand_ins.values()):
            raise ConfigError(f"{where}: published numbers for dataset {dataset!r}, which no "
                              f"profile runs (valid: {', '.join(sorted(datasets))})")
        for row in rows:
            if row not in suite.rows:
                raise ConfigError(f"{where}: published numbers for {dataset}/{row}, which is not"
                                  f" a row (valid: {', '.join(suite.rows)})")
    layers = [("settings", suite.settings)]
    layers += [(f"dataset_settings.{d}", v) for d, v in suite.dataset_settings.items()]
    layers += [(f"rows.{r}.settings", row.settings) for r, row in suite.rows.items()]
    for name, profile in suite.profiles.items():
        for row in profile.rows:
            if row not in suite.rows:
                raise ConfigError(f"{where}: profile {name!r} sets row {row!r}, which is "
                                  f"not a row (valid: {', '.join(suite.rows)})")
        layers += [(f"profiles.{name}.settings", profile.settings)]
        layers += [(f"profiles.{name}.dataset_settings.{d}", v)
                   for d, v in profile.dataset_settings.items()]
        layers += [(f"profiles.{name}.rows.{r}", v) for r, v in profile.rows.items()]
    for layer, settings in layers:
        unknown = set(settings) - set(RunConfig.model_fields)
        if unknown:
            raise ConfigError(f"{where}: {layer}: unknown setting(s) "
                              f"{', '.join(sorted(unknown))} (valid: the fields of harness run "
                              "--help, e.g. steps, cond, cond_options)")
    for name in suite.profiles:
        for dataset in suite.profile_datasets(name):
            for row in suite.rows:
                try:
                    make_config(suite.config_values(name, dataset, row, 0))
                except ConfigError as exc:
                    raise ConfigError(f"{where}, profile {name!r}, {dataset}/{row}: "
                                      f"{exc}") from None


REGISTRY = importlib.resources.files("harness") / "registry.toml"
"""The catalogue of built-in plugins and published tables, shipped inside the package."""


def registry_suites() -> dict[str, Suite]:
    """The suites shipped in the package's ``registry.toml``."""
    return load_suites(REGISTRY.read_text(encoding="utf-8"))


def suites_file(path: Path) -> dict[str, Suite]:
    """The suites of a TOML file; ``ConfigError`` (one line) if it cannot be read or holds
    an invalid or no suite."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or describe(exc)
        raise ConfigError(f"--file {path}: cannot read it: {reason} (valid: a TOML file of "
                          "[suite.NAME] tables)") from None
    try:
        suites = load_suites(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--file {path}: invalid TOML: {exc}") from None
    if not suites:
        raise ConfigError(f"--file {path} holds no [suite.NAME] table")
    return suites


def get_suite(name: str, suites: dict[str, Suite] | None = None) -> Suite:
    suites = registry_suites() if suites is None else suites
    if name not in suites:
        raise HarnessError(f"unknown suite {name!r} (valid: {', '.join(suites) or 'none'})")
    return suites[name]


# ----------------------------------------------------------------------------- matching runs
def flatten(settings: Settings) -> dict[str, Any]:
    """Settings as leaderboard columns: ``cond_options = {k = 50}`` -> ``{"cond.k": 50}``,
    ``metric_options = {m = {x = 1}}`` -> ``{"m.x": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if key == "metric_options":
            for metric, options in value.items():
                flat.update({f"{metric}.{opt}": v for opt, v in options.items()})
        elif key.endswith("_options"):
            prefix = key.removesuffix("_options")
            flat.update({f"{prefix}.{opt}": v for opt, v in value.items()})
        else:
            flat[key] = value
    return flat


def same(wanted: Any, found: Any) -> bool:
    """A setting against a leaderboard cell (lists are JSON text there)."""
    if isinstance(wanted, (list, dict)):
        return json.dumps(wanted, sort_keys=True) == found
    if isinstance(wanted, bool) or isinstance(found, bool):
        return wanted is found or wanted == found and type(wanted) is type(found)
    if isinstance(wanted, (int, float)) and isinstance(found, (int, float)):
        return math.isclose(wanted, found, rel_tol=1e-9, abs_tol=0.0)
    return wanted == found


@dataclass(frozen=True)
class Match:
    """A suite row whose method a group of runs follows."""

    suite: Suite
    dataset: str
    row: str


COMPONENTS = ("prior", "cond", "backbone", "loss")
"""What a row's method always fixes: its components, from the row or the suite's settings."""


def method_columns(suite: Suite, dataset: str, row: str) -> dict[str, Any]:
    """The leaderboard columns a run must have to follow a row's method: the row's own
    settings and its components (a component no setting names is at its default)."""
    defaults = RunConfig().model_dump(mode="json")
    merged = suite.method(dataset, row)
    return {**{k: merged.get(k, defaults[k]) for k in COMPONENTS},
            **flatten(suite.rows[row].settings), "dataset": dataset}


def matching_rows(columns: dict[str, Any], suites: Iterable[Suite]) -> Iterator[Match]:
    """The suite rows whose method a leaderboard row (``columns``) follows."""
    for suite in suites:
        datasets = {d for p in suite.profiles for d in suite.profile_datasets(p)}
        if columns.get("dataset") not in datasets:
            continue
        for row in suite.rows:
            wanted = method_columns(suite, columns["dataset"], row)
            if all(same(v, columns.get(k)) for k, v in wanted.items()):
                yield Match(suite, columns["dataset"], row)


def metric_for(pattern: str, names: Iterable[str]) -> str | None:
    """The first metric of ``names`` a published metric name (or pattern) stands for."""
    return next((name for name in names if fnmatch(name, pattern)), None)
