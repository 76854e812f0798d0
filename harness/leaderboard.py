"""Aggregate run directories into a pandas leaderboard: one row per composition."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness import results
from harness.config import COMPONENT_FIELDS, NON_SCIENTIFIC
from harness.errors import HarnessError

ALWAYS_SHOWN = ("dataset", "cond", "prior", "backbone")
"""Shown in every printed table; other keys only where their defined values differ."""
RUN_COLUMNS = ("run_id", "seed", "status")


def discover(paths: Iterable[Path]) -> list[Path]:
    """Run directories among ``paths``: each is a run dir or a folder of run dirs."""
    found = []
    for path in map(Path, paths):
        if (path / results.RUN).exists():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p.parent for p in path.glob(f"*/{results.RUN}")))
        else:
            raise HarnessError(f"not a run directory or a folder of runs: {path}")
    return found


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict, tuple)) else value


def run_row(run_dir: Path) -> dict[str, Any]:
    """One flat row: resolved config (component options as ``prior.sigma``), then metrics."""
    saved = results.read_json(run_dir / results.CONFIG)
    config, resolved = saved["config"], saved["resolved"]
    row: dict[str, Any] = {"run_id": run_dir.name, "seed": config["seed"]}
    for key, value in config.items():
        if key in NON_SCIENTIFIC or key == "seed" or key.endswith("_options"):
            continue
        row[key] = _cell(value)
    row["z_dim"] = resolved.get("z_dim", config.get("z_dim"))
    for fld in COMPONENT_FIELDS:
        for opt, value in resolved[fld]["options"].items():
            row[f"{fld}.{opt}"] = _cell(value)
    for metric, opts in resolved.get("metrics", {}).items():
        for opt, value in opts.items():
            row[f"{metric}.{opt}"] = _cell(value)
    return row


def load_runs(paths: Iterable[Path]) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs as a frame, and the names of its metric columns."""
    rows, metric_names = [], []
    for run_dir in discover(paths):
        if not results.is_finished(run_dir):
            continue
        row = run_row(run_dir)
        metrics = results.read_json(run_dir / results.METRICS)
        for name, value in metrics.items():
            if name not in metric_names:
                metric_names.append(name)
            row[name] = value
        rows.append(row)
    return pd.DataFrame(rows), metric_names


def aggregate(
    frame: pd.DataFrame, metrics: list[str], group_by: list[str] | None = None
) -> pd.DataFrame:
    """Mean and std over seeds per composition; ``group_by`` defaults to every config column."""
    if frame.empty:
        return frame
    keys = group_by or [c for c in frame.columns if c not in metrics and c not in RUN_COLUMNS]
    missing = [k for k in keys if k not in frame.columns]
    if missing:
        valid = [c for c in frame.columns if c not in metrics]
        raise HarnessError(f"unknown --group-by column(s) {missing} (valid: {', '.join(valid)})")
    values = [m for m in metrics if pd.api.types.is_numeric_dtype(frame[m])]
    grouped = frame.groupby(keys, sort=True, dropna=False)
    table = grouped[values].agg(["mean", "std"])
    table.columns = [f"{m}_{stat}" for m, stat in table.columns]
    table.insert(0, "n_seeds", grouped.size())
    return table.reset_index()


def render(
    table: pd.DataFrame, metrics: list[str], suite: dict[str, Any] | None = None
) -> str:
    """A readable text table: varying keys, ``mean ± std`` per metric, paper numbers if any."""
    if table.empty:
        return "(no finished runs)"
    keys = [c for c in table.columns if c != "n_seeds" and not c.endswith(("_mean", "_std"))]
    varying = [k for k in keys if k not in ALWAYS_SHOWN and table[k].dropna().nunique() > 1]
    view = table[[k for k in ALWAYS_SHOWN if k in table] + varying].copy()
    view["seeds"] = table["n_seeds"]
    for metric in metrics:
        if f"{metric}_mean" not in table or metric == "eval_samples":
            continue
        mean, std = table[f"{metric}_mean"], table[f"{metric}_std"].fillna(0.0)
        view[metric] = [f"{m:.4g} ± {s:.2g}" for m, s in zip(mean, std, strict=True)]
    if suite is not None:
        add_published(view, table, suite)
    return view.to_string(index=False)


def published_numbers(suite: str) -> dict[str, Any]:
    """A paper table of ``registry.toml``: ``{dataset: {cond: [[mean, se], ...]}}`` + columns."""
    registry = Path(__file__).resolve().parents[1] / "registry.toml"
    if not registry.exists():
        raise HarnessError(f"--compare needs registry.toml beside the harness package: {registry}")
    suites = tomllib.loads(registry.read_text()).get("suite", {})
    if suite not in suites:
        raise HarnessError(f"unknown suite {suite!r} (valid: {', '.join(suites) or 'none'})")
    return suites[suite]


def add_published(view: pd.DataFrame, table: pd.DataFrame, suite: dict[str, Any]) -> None:
    """Insert ``<metric> (paper)`` columns beside the measured ones, by dataset and cond
    (a suite's ``stand_ins`` map our dataset to the paper's, e.g. stacked digits -> MNIST)."""
    for position, metric in enumerate(suite["columns"]):
        if metric not in view:
            continue
        cells = []
        for dataset, cond in zip(table["dataset"], table["cond"], strict=True):
            paper_dataset = suite.get("stand_ins", {}).get(dataset, dataset)
            row = suite["published"].get(paper_dataset, {}).get(cond)
            mean, se = row[position] if row else (math.nan, math.nan)
            cells.append("" if math.isnan(mean) else f"{mean:.4g}" + (
                "" if math.isnan(se) else f" ± {se:.2g}"))
        view.insert(view.columns.get_loc(metric) + 1, f"{metric} (paper)", cells)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    results.atomic_write_bytes(Path(path), table.to_csv(index=False).encode())
