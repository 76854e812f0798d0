"""Aggregate run directories into a pandas leaderboard: one row per composition.

A run that cannot be used (unreadable files, an invalid config, metrics that are not finite
numbers, a repeat of an earlier run's composition and seed) is left out with a one-line
warning; the table is always built from the rest.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import reprlib
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from harness import results
from harness.config import ADDED_LATER, COMPONENT_FIELDS, NON_SCIENTIFIC, make_config
from harness.errors import HarnessError, one_line

ALWAYS_SHOWN = ("dataset", "cond", "prior", "backbone")
"""Shown in every printed table; other keys only where their defined values differ."""
RUN_COLUMNS = ("run_id", "seed", "status")
JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
              float: "number", type(None): "null"}
"""What ``json.loads`` returns -> its JSON name, for messages."""
DIGITS = re.compile(r"\d+")

Warn = Callable[[str], None]
"""Receives one line per run left out of the leaderboard (without the ``warning:`` prefix)."""


def warn_stderr(message: str) -> None:
    """Print ``warning: <message>`` on stderr (``load_runs``'s default ``warn``)."""
    print(f"warning: {one_line(message)}", file=sys.stderr)


class Unusable(Exception):
    """A run directory the leaderboard cannot count; the message names the file and why."""


def discover(paths: Iterable[Path]) -> list[Path]:
    """Run directories among ``paths``: each is a run dir or a folder of run dirs.

    A directory reached twice (e.g. through a folder and by name) is listed once.
    """
    found, seen = [], set()
    for path in map(Path, paths):
        if (path / results.RUN).exists():
            candidates = [path]
        elif path.is_dir():
            candidates = sorted(p.parent for p in path.glob(f"*/{results.RUN}"))
        else:
            raise HarnessError(f"not a run directory or a folder of runs: {path}")
        for run_dir in candidates:
            if os.path.realpath(run_dir) not in seen:
                seen.add(os.path.realpath(run_dir))
                found.append(run_dir)
    return found


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict, tuple)) else value


def _name(text: str) -> str:
    """A key or status found in a file, quoted and shortened unless short and printable."""
    return text if text.isprintable() and 0 < len(text) <= 40 else reprlib.repr(text)


def read_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``Unusable`` if it is missing, unreadable or not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Unusable(f"{path.name} is missing") from None
    except OSError as exc:
        raise Unusable(f"cannot read {path.name}: {exc.strerror or exc}") from None
    except ValueError as exc:  # also non-UTF-8 bytes and integers too long to parse
        raise Unusable(f"{path.name} is not valid JSON ({exc})") from None
    except RecursionError:
        raise Unusable(f"{path.name} is nested too deeply to read") from None
    if not isinstance(value, dict):
        raise Unusable(f"{path.name} holds a JSON {JSON_TYPES[type(value)]}, not an object")
    return value


def _options(resolved: dict[str, Any], key: str) -> dict[str, Any]:
    entry = resolved.get(key)
    if entry is None and ADDED_LATER.get(key) == "none":
        return {}  # a run from before this family existed used none of it
    options = entry.get("options") if isinstance(entry, dict) else None
    if not isinstance(options, dict):
        raise Unusable(f"{results.CONFIG} has no resolved options for {key}")
    return options


def run_row(run_dir: Path) -> dict[str, Any]:
    """One flat row: resolved config (component options as ``prior.sigma``).

    Raises ``Unusable`` when ``config.json`` is missing, unreadable, or not a valid
    ``RunConfig`` with every component's resolved options.
    """
    saved = read_object(run_dir / results.CONFIG)
    if not isinstance(saved.get("config"), dict):
        raise Unusable(f'{results.CONFIG} has no "config" object')
    try:
        config = make_config(saved["config"]).model_dump(mode="json", exclude=NON_SCIENTIFIC)
    except HarnessError as exc:
        raise Unusable(f"{results.CONFIG}: {exc}") from None
    resolved = saved.get("resolved")
    if not isinstance(resolved, dict):
        raise Unusable(f'{results.CONFIG} has no "resolved" object')
    metric_options = resolved.get("metrics", {})
    if not isinstance(metric_options, dict) or not all(
        isinstance(opts, dict) for opts in metric_options.values()
    ):
        raise Unusable(f"{results.CONFIG}: resolved metric options are not objects")
    row: dict[str, Any] = {"run_id": run_dir.name, "seed": config["seed"]}
    for key, value in sorted(config.items()):
        if key != "seed" and not key.endswith("_options"):
            row[key] = _cell(value)
    row["z_dim"] = _cell(resolved.get("z_dim", config["z_dim"]))
    for fld in COMPONENT_FIELDS:
        for opt, value in _options(resolved, fld).items():
            row[f"{fld}.{opt}"] = _cell(value)
    for metric, opts in metric_options.items():
        for opt, value in opts.items():
            row[f"{metric}.{opt}"] = _cell(value)
    return row


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond float's range
        return False


def read_metrics(run_dir: Path) -> dict[str, int | float]:
    """``metrics.json``; ``Unusable`` unless it is an object of finite numbers."""
    metrics = read_object(run_dir / results.METRICS)
    bad = [f"{_name(k)}={reprlib.repr(v)}" for k, v in metrics.items() if not _is_finite_number(v)]
    if bad:
        raise Unusable(f"{results.METRICS} has values that are not finite numbers: "
                       + ", ".join(bad))
    if not set(metrics) - {"eval_samples"}:
        raise Unusable(f"{results.METRICS} holds no metric values")
    return {key: metrics[key] for key in natural_order(metrics)}


def natural_order(names: Iterable[str]) -> list[str]:
    """``names`` (each once) with every family of names that differ only in their numbers in
    numeric order, at the place of the family's first name: ``intra_fid_digits_30_c2``
    before ``_c10`` (not after, as text sorts them), ``fid_digits_2k`` before
    ``fid_digits_10k``; names of different families keep their order."""
    unique = list(dict.fromkeys(names))
    families: dict[str, int] = {}
    for name in unique:
        families.setdefault(DIGITS.sub("#", name), len(families))

    def key(name: str) -> tuple[int, list[tuple[int, str]]]:
        numbers = [digits.lstrip("0") for digits in DIGITS.findall(name)]
        return families[DIGITS.sub("#", name)], [(len(n), n) for n in numbers]

    return sorted(unique, key=key)


def evaluation_columns(run_dir: Path, info: dict[str, Any]
                       ) -> tuple[dict[str, float], int | None]:
    """Metric columns from the run's ``harness eval`` records (``evaluations/``), the newest
    record winning per column: one of the run's final checkpoint (the step ``run.json``
    records) gives its keys under their own names (``load_runs`` keeps ``metrics.json``'s
    value of a key both have: the original evaluation), one of ``--checkpoint best`` of the
    best checkpoint ``run.json`` records gives ``<key>@best``, any other checkpoint
    ``<key>@step<N>``. Values that are not finite numbers are left out. Also returns the
    sample count (``eval_samples``) of the newest record of the final checkpoint (None: no
    such record)."""
    from harness.evaluation import read_evaluations

    best = info.get("best_checkpoint")
    best_step = best.get("step") if isinstance(best, dict) else None
    columns: dict[str, float] = {}
    final_samples = None
    for record in read_evaluations(run_dir):
        step = record["step"]
        suffix = ("@best" if record.get("checkpoint") == "best" and step == best_step
                  else "" if step == info.get("step") else f"@step{step}")
        columns.update({f"{key}{suffix}": value for key, value in record["metrics"].items()
                        if _is_finite_number(value)})
        if not suffix:
            final_samples = record.get("eval_samples")
    return columns, final_samples


def _started(info: dict[str, Any]) -> float:
    """``run.json``'s start time as a POSIX timestamp; infinity when absent or invalid."""
    try:
        return datetime.fromisoformat(info["started"]).timestamp()
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return math.inf


def load_runs(paths: Iterable[Path], warn: Warn = warn_stderr,
              evaluation: Literal["original", "latest"] = "original",
              ) -> tuple[pd.DataFrame, list[str]]:
    """Finished runs as a frame, one per composition and seed, and its metric column names.

    Each run left out is reported to ``warn`` in one line: an unusable one (with the reason),
    a duplicate (same composition and seed as an earlier-started run, which is the one kept);
    runs not finished (running, interrupted, failed) are summed up in one line by status.
    A ``metrics.json`` key that names a config column (``eval_samples``) is not a metric.
    ``harness eval``'s results add columns (``evaluation_columns``); ``evaluation``
    ``"latest"`` lets the latest one's values of the final checkpoint replace the run's own
    (``metrics.json``) for the keys both have, ``"original"`` keeps the run's own.
    """
    loaded: list[tuple[tuple[float, str, str], dict[str, Any], dict[str, Any]]] = []
    unfinished: Counter[str] = Counter()
    for run_dir in discover(paths):
        try:
            info = read_object(run_dir / results.RUN)
            status = info.get("status")
            if not isinstance(status, str):
                raise Unusable(f"{results.RUN} has no status (found {reprlib.repr(status)})")
            if status != "finished":
                unfinished[status] += 1
                continue
            row, metrics = run_row(run_dir), read_metrics(run_dir)
            evaluated, samples = evaluation_columns(run_dir, info)
            latest = evaluation == "latest" and samples is not None
            if latest and samples != row.get("eval_samples"):
                warn(f"{run_dir}: its latest evaluation used {samples} samples, the run "
                     f"{row.get('eval_samples')} (eval_samples): keys without a sample count "
                     "(modes, rkl, ...) are of the latest")
            metrics.update({k: v for k, v in evaluated.items() if k not in metrics or latest})
        except Unusable as exc:
            warn(f"{run_dir}: {exc}; skipped")
            continue
        loaded.append(((_started(info), run_dir.name, str(run_dir)), row, metrics))
    if unfinished:
        total = sum(unfinished.values())
        counts = ", ".join(f"{n} {_name(s)}" for s, n in sorted(unfinished.items()))
        warn(f"skipped {total} unfinished run{'s' * (total > 1)}: {counts}")
    kept: dict[str, str] = {}
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for (_, run_id, where), row, metrics in sorted(loaded, key=lambda item: item[0]):
        # None and absent group alike (as NaN), so they must not tell runs apart here either
        composition = {k: v for k, v in row.items() if k != "run_id" and v is not None}
        key = json.dumps(composition, sort_keys=True)
        if key in kept:
            warn(f"{where}: duplicate of {kept[key]} (same composition and seed "
                 f"{row['seed']}); not counted")
            continue
        kept[key] = run_id
        rows.append((row, metrics))
    config_columns = {key for row, _ in rows for key in row} | set(RUN_COLUMNS)
    metric_names = natural_order(
        name for _, metrics in rows for name in metrics if name not in config_columns
    )
    frame = pd.DataFrame([
        {**row, **{k: v for k, v in metrics.items() if k not in config_columns}}
        for row, metrics in rows
    ])
    return frame, metric_names


STATS = ("std", "sem")
"""The spreads over seeds ``aggregate`` gives: sample standard deviation and standard error."""


def within_run_spreads(metrics: list[str]) -> dict[str, str]:
    """Keys that are a run's own spread of another metric (``kid_digits_10k_std``, the std
    of KID over subsets; ``kid_digits_10k_std@best`` of ``kid_digits_10k@best``) -> that
    metric. They are not metrics to average over seeds."""
    spreads = {}
    for m in metrics:
        key, at, where = m.partition("@")
        metric = key.removesuffix("_std") + at + where
        if key.endswith("_std") and metric in metrics:
            spreads[m] = metric
    return spreads


def group_keys(frame: pd.DataFrame, metrics: list[str], group_by: list[str] | None = None
               ) -> list[str]:
    """The columns ``aggregate`` groups ``frame`` by: ``group_by``, or every config column.
    Raises HarnessError naming a ``group_by`` column the frame lacks."""
    valid = [c for c in frame.columns if c not in metrics and c not in RUN_COLUMNS]
    keys = list(dict.fromkeys(group_by)) if group_by else valid
    missing = [k for k in keys if k not in valid]
    if missing:
        raise HarnessError(f"unknown --group-by column(s) {missing} (valid: {', '.join(valid)})")
    return keys


def aggregate(
    frame: pd.DataFrame, metrics: list[str], group_by: list[str] | None = None
) -> pd.DataFrame:
    """Mean, std and s.e. of each metric per group; ``group_by`` defaults to every config
    column.

    ``n_seeds`` counts a group's runs: by default its distinct seeds, since ``load_runs``
    keeps one run per composition and seed. A run's own spread of a metric (``X_std`` beside
    ``X``) is pooled, not averaged: ``X_run_std`` is the root mean square of the runs' values.
    """
    if frame.empty:
        return frame
    keys = group_keys(frame, metrics, group_by)
    spreads = within_run_spreads(metrics)
    numeric = [m for m in metrics if pd.api.types.is_numeric_dtype(frame[m])]
    values = [m for m in numeric if m not in spreads]
    grouped = frame.groupby(keys, sort=True, dropna=False)
    stats = grouped[values].agg(["mean", "std", "sem"])
    stats.columns = [f"{m}_{stat}" for m, stat in stats.columns]
    pooled = {f"{metric}_run_std": grouped[spread].agg(lambda v: math.sqrt((v**2).mean()))
              for spread, metric in spreads.items() if spread in numeric}
    # every column at once: one insert per column leaves a wide table fragmented (pandas'
    # PerformanceWarning), the group keys' columns too (not reset_index's one per key)
    by_group = pd.DataFrame({"n_seeds": grouped.size(), **dict(stats.items()), **pooled})
    return pd.concat([by_group.index.to_frame(index=False), by_group.reset_index(drop=True)],
                     axis=1)


def cell_text(cell: Any) -> str:
    """A leaderboard cell as the command line writes it: ``50``, ``0.0001``, ``kmeans_d``."""
    if isinstance(cell, float) and cell.is_integer():
        return str(int(cell))
    return "" if cell is None or isinstance(cell, float) and math.isnan(cell) else str(cell)


def improvements(frame: pd.DataFrame, metrics: list[str], directions: dict[str, str | None],
                 baseline: str, group_by: list[str] | None = None) -> pd.DataFrame:
    """The probability that each group improves on its baseline, per metric with a
    direction, with its 95 % bootstrap interval (``statistics.probability_of_improvement``).

    ``baseline`` ``COLUMN=VALUE``: the groups whose grouping column COLUMN holds VALUE; each
    other group is held against the baseline group that shares all its other grouping
    columns but COLUMN's own options (``cond.k`` for ``cond``: kmeans_d's differ from
    none's) (none: it is left out). Raises HarnessError for a malformed ``baseline``, a
    column that is not a grouping column, or a value no group has.
    """
    from harness.statistics import probability_of_improvement

    column, _, value = baseline.partition("=")
    keys = group_keys(frame, metrics, group_by)
    if column not in keys:
        raise HarnessError(f"--improvement-over {baseline!r}: give COLUMN=VALUE with a "
                           f"grouping column (valid: {', '.join(keys)})")
    groups = {key if isinstance(key, tuple) else (key,): part
              for key, part in frame.groupby(keys, sort=True, dropna=False)}
    at = keys.index(column)
    found = sorted({cell_text(key[at]) for key in groups})
    if value not in found:
        raise HarnessError(f"--improvement-over {baseline!r}: no run has {column}={value} "
                           f"(valid: {', '.join(found)})")

    own = {i for i, k in enumerate(keys) if k == column or k.startswith(f"{column}.")}

    def others(key: tuple[Any, ...]) -> list[str]:
        return [cell_text(cell) for i, cell in enumerate(key) if i not in own]

    bases = {tuple(others(key)): part for key, part in groups.items()
             if cell_text(key[at]) == value}
    varying = [k for i, k in enumerate(keys)
               if i not in own and frame[k].nunique(dropna=False) > 1]
    lines = []
    for key, part in groups.items():
        base = bases.get(tuple(others(key)))
        if cell_text(key[at]) == value or base is None:
            continue
        for metric in metrics:
            better = directions.get(metric)
            x, y = part[metric].dropna(), base[metric].dropna()
            if better is None or not len(x) or not len(y):
                continue
            p, low, high = probability_of_improvement(x.to_numpy(float), y.to_numpy(float),
                                                      better)
            lines.append({**{k: cell_text(key[keys.index(k)]) for k in varying},
                          column: cell_text(key[at]), "over": value, "metric": metric,
                          "better": better, "seeds": f"{len(x)} vs {len(y)}",
                          "p_improvement": p, "ci95_low": low, "ci95_high": high})
    return pd.DataFrame(lines)


def render_improvements(table: pd.DataFrame) -> str:
    """``improvements`` as text: ``P(X > Y)`` with its interval."""
    if table.empty:
        return "(no group has a baseline group with the same other settings)"
    view = table.drop(columns=["p_improvement", "ci95_low", "ci95_high"])
    view["P(improvement)"] = [f"{p:.2f} [{lo:.2f}, {hi:.2f}]" for p, lo, hi in zip(
        table["p_improvement"], table["ci95_low"], table["ci95_high"], strict=True)]
    return ("probability that a seed of the group beats a seed of its baseline (ties half), "
            "95% bootstrap interval\n" + view.to_string(index=False))


def render(table: pd.DataFrame, metrics: list[str], stat: str = "std") -> str:
    """A readable text table: varying keys, ``mean ± <stat>`` per metric (std or sem)."""
    if table.empty:
        return "(no finished runs)"
    suffixes = tuple(f"_{s}" for s in ("mean", *STATS, "run_std"))
    keys = [c for c in table.columns if c != "n_seeds" and not c.endswith(suffixes)]
    varying = [k for k in keys if k not in ALWAYS_SHOWN and table[k].dropna().nunique() > 1]
    columns = {k: table[k] for k in [k for k in ALWAYS_SHOWN if k in table] + varying}
    columns["seeds"] = table["n_seeds"]
    columns.update({metric: mean_std_column(table, metric, stat) for metric in metrics
                    if f"{metric}_mean" in table})
    return pd.DataFrame(columns).to_string(index=False)  # built at once: not fragmented


def mean_std_column(table: pd.DataFrame, metric: str, stat: str) -> list[str]:
    """``mean_std`` of ``metric`` in each row of an ``aggregate`` table."""
    return [mean_std(m, s) for m, s in
            zip(table[f"{metric}_mean"], table[f"{metric}_{stat}"], strict=True)]


def mean_std(mean: float, std: float) -> str:
    """``mean ± std`` in 4 and 2 significant digits; only the mean for one seed (no std),
    empty when no run has the metric. A spread below float rounding of the mean (``1 ±
    1.1e-16``) is 0."""
    if math.isnan(mean):
        return ""
    if math.isnan(std):
        return f"{mean:.4g}"
    return f"{mean:.4g} ± {0.0 if std < 1e-12 * abs(mean) else std:.2g}"


# ----------------------------------------------------------------------------- output files
HEAD_BYTES = 65536
"""How much of an existing file ``check_output`` reads to tell whether the command wrote it."""


def first_text(path: Path) -> str:
    """The beginning of the file at ``path`` as text (undecodable bytes replaced); empty when
    it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def check_output(flag: str, path: Path, what: str, ours: Callable[[Path], bool], kind: str,
                 run_suffix: str | None = None) -> None:
    """``HarnessError`` (one line naming ``flag`` and ``path``) unless ``what`` may be written
    to ``path``: not a folder, in a writable folder, in no run directory (whose results it
    could replace; ``run_suffix``: but a file of that suffix directly in one), and new or a
    file this command wrote before (``ours``; ``kind`` names such a file)."""
    path = Path(path)
    reason = f"{path} is a folder" if path.is_dir() else results.unwritable_reason(path.parent)
    if reason:
        raise HarnessError(f"{flag} {path}: cannot write {what}: {reason} (valid: a file path "
                           "in a writable folder)")
    run_dir = results.run_dir_above(path)
    if run_dir is not None and not (
            run_suffix and path.suffix == run_suffix
            and os.path.realpath(path.parent) == os.path.realpath(run_dir)):
        but = f", or a {run_suffix} file directly in one" if run_suffix else ""
        raise HarnessError(f"{flag} {path}: cannot write {what}: it is inside the run directory "
                           f"{run_dir}, whose files must not be replaced (valid: a path outside "
                           f"every run directory{but})")
    if (path.exists() or path.is_symlink()) and not ours(path):
        raise HarnessError(f"{flag} {path}: cannot write {what}: the existing file {path} is "
                           f"not {kind}, so it is not overwritten (valid: another {flag} "
                           "path, or delete the file first)")


def is_table_header(columns: list[str]) -> bool:
    """Whether ``columns`` are an ``aggregate`` table's: the group keys, ``n_seeds``, then
    only statistics (``<metric>_mean``, ``_std``, ``_sem``, ``_run_std``)."""
    stats = tuple(f"_{s}" for s in ("mean", *STATS, "run_std"))
    return "n_seeds" in columns and all(
        c.endswith(stats) for c in columns[columns.index("n_seeds") + 1:])


def is_leaderboard_csv(path: Path) -> bool:
    """Whether ``path`` is a file ``--csv`` wrote (whatever its name): its header is a
    leaderboard's (``is_table_header``), or it is blank (an empty leaderboard's)."""
    text = first_text(path)
    header = next(csv.reader([text.partition("\n")[0]]), [])
    return not text.strip() or is_table_header(header)


def is_leaderboard_markdown(path: Path) -> bool:
    """Whether ``path`` is a file ``--markdown`` wrote (whatever its name): its first line is
    the header of a leaderboard's table (``is_table_header``), or it is blank (an empty
    leaderboard's)."""
    text = first_text(path)
    header = text.partition("\n")[0].strip()
    cells = [c.strip() for c in header.removeprefix("|").removesuffix("|").split("|")]
    return not text.strip() or (header.startswith("|") and is_table_header(cells))


EXPORTS = {"--csv": (is_leaderboard_csv, "a leaderboard CSV that --csv wrote (a header of "
                                         "group keys, n_seeds, statistics)"),
           "--markdown": (is_leaderboard_markdown, "a leaderboard that --markdown wrote (a "
                                                   "table whose header has group keys, "
                                                   "n_seeds, statistics)")}
"""``harness leaderboard``'s export flags -> how to recognise its earlier file, and its name."""


def check_export(flag: str, path: Path) -> None:
    """``check_output`` for the table an export flag (``EXPORTS``) writes to ``path``."""
    ours, kind = EXPORTS[flag]
    check_output(flag, path, "the table", ours, kind)
