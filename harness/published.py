"""Published numbers beside measured ones: one line per (dataset, method, metric).

Each leaderboard group (a composition's runs over seeds) is matched to the suite rows whose
method it follows (``harness.suites.matching_rows``); each published metric of that row is
put beside the group's mean ± the statistic the paper reports (s.e. or std over seeds),
with the difference, which way is better, the budget against the paper's, and a verdict
when the measured mean lies outside the published mean ± spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from harness.config import RunConfig
from harness.errors import HarnessError
from harness.leaderboard import mean_std
from harness.manager import PluginManager
from harness.suites import Match, Suite, matching_rows, metric_for

STATISTICS = {"sem": "s.e.", "std": "std"}
COLUMNS = ["dataset", "method", "seeds", "budget", "metric", "better", "measured", "paper",
           "difference", "verdict"]
"""The printed comparison; the CSV has the numbers behind them (``*_mean``, ``*_spread``)."""


def steps_text(steps: float) -> str:
    """1500 -> ``1.5k``, 100000 -> ``100k``, 40 -> ``40``."""
    return f"{steps / 1000:g}k" if steps >= 1000 else f"{steps:g}"


def paper_steps(suite: Suite, dataset: str, row: str) -> int:
    values = suite.config_values("paper", dataset, row, 0)
    return int(values.get("steps", RunConfig.model_fields["steps"].default))


def verdict(difference: float, spread: float, better: str | None) -> str:
    """``""`` inside the published mean ± spread (no spread: equal), else ``better`` or
    ``worse`` by the metric's direction (``outside`` when it has none)."""
    if abs(difference) <= (0.0 if math.isnan(spread) else spread) * (1 + 1e-9):
        return ""
    if better is None:
        return "outside"
    return "better" if (difference > 0) == (better == "higher") else "worse"


def compare(table: pd.DataFrame, metrics: list[str], suites: Iterable[Suite],
            directions: dict[str, str | None],
            assign: Callable[[dict[str, Any]], Iterable[Match]] | None = None) -> pd.DataFrame:
    """The comparison of an aggregated leaderboard ``table`` (``leaderboard.aggregate``)
    with the published rows of ``suites``; empty when no group has published numbers.

    ``directions``: metric -> ``"higher"`` / ``"lower"`` / None (``Metric.direction``).
    ``assign``: a group's columns -> the suite rows it is measured for; default: the rows
    whose method it follows (``matching_rows``). Lines follow the table's groups, then the
    published metrics of each row.
    """
    suites = list(suites)
    assign = assign or (lambda columns: matching_rows(columns, suites))
    lines: list[dict[str, Any]] = []
    for _, group in table.iterrows():
        columns = group.to_dict()
        for match in assign(columns):
            suite, row = match.suite, match.suite.rows[match.row]
            stat, n = suite.statistic, int(columns["n_seeds"])
            steps, paper = columns.get("steps", math.nan), paper_steps(suite, match.dataset,
                                                                         match.row)
            for pattern, (mean, spread) in suite.published_row(match.dataset, match.row).items():
                metric = metric_for(pattern, metrics)
                measured = columns.get(f"{metric}_mean", math.nan) if metric else math.nan
                measured_spread = columns.get(f"{metric}_{stat}", math.nan) if metric else math.nan
                better = directions.get(metric) if metric else None
                difference = measured - mean
                lines.append({
                    "dataset": match.dataset, "paper_dataset": suite.paper_dataset(match.dataset),
                    "method": row.label, "row": match.row, "seeds": n,
                    "steps": steps, "paper_steps": paper,
                    "budget": f"{steps_text(steps)} of {steps_text(paper)} steps",
                    "metric": metric or pattern, "better": better or "",
                    "measured_mean": measured, "measured_spread": measured_spread,
                    "published_mean": mean, "published_spread": spread,
                    "statistic": stat, "trials": suite.trials, "difference": difference,
                    "measured": mean_std(measured, measured_spread if n > 1 else math.nan),
                    "paper": mean_std(mean, spread),
                    "verdict": "" if math.isnan(measured) else verdict(difference, spread, better),
                    "source": suite.paper, "suite": suite.name,
                })
    return pd.DataFrame(lines)


def statistic_line(part: pd.DataFrame) -> str:
    """What the ± of one suite's lines mean, e.g. ``paper: mean ± s.e. over 10 trials``."""
    first = part.iloc[0]
    stat = STATISTICS[first["statistic"]]
    trials = f" over {int(first['trials'])} trials" if pd.notna(first["trials"]) else ""
    paper = (f"mean ± {stat}{trials}" if part["published_spread"].notna().any()
             else "single values" + trials)
    return f"paper: {paper}; measured: mean ± {stat} over seeds"


def render(comparison: pd.DataFrame) -> str:
    """The comparison as text: a header per suite (source, statistic, trials), then its
    lines; the dataset column shows the paper's dataset for a stand-in."""
    if comparison.empty:
        return ""
    blocks = []
    for suite_name, part in comparison.groupby("suite", sort=False):
        header = f"{suite_name}: {part.iloc[0]['source']}\n{statistic_line(part)}"
        view = part.copy()
        view["dataset"] = [d if d == p else f"{d} (for {p})"
                           for d, p in zip(part["dataset"], part["paper_dataset"], strict=True)]
        view["difference"] = [f"{d:+.3g}" if not math.isnan(d) else "" for d in part["difference"]]
        missing = sorted(set(part.loc[part["measured_mean"].isna(), "metric"]))
        footer = (f"\n(no run measured {', '.join(missing)}: a metric this composition does "
                  "not compute, or a published name that matches none)" if missing else "")
        blocks.append(header + "\n" + view[COLUMNS].to_string(index=False) + footer)
    return "\n\n".join(blocks)


def to_markdown(comparison: pd.DataFrame) -> str:
    """The printed comparison as a Markdown table per suite (GitHub pipe tables)."""
    blocks = []
    for suite_name, part in comparison.groupby("suite", sort=False):
        view = part.copy()
        view["difference"] = [f"{d:+.3g}" if not math.isnan(d) else "" for d in part["difference"]]
        blocks.append(f"## {suite_name}\n\n{part.iloc[0]['source']}.\n{statistic_line(part)}."
                      "\n\n" + view[COLUMNS].to_markdown(index=False))
    return "\n\n".join(blocks) + "\n"


def directions(metrics: Iterable[str], pm: PluginManager) -> dict[str, str | None]:
    """Which way each metric key improves, asked of every installed metric plugin
    (``Metric.direction``); None when no plugin knows the key."""
    classes = []
    for entry in pm.registry("metrics").values():
        try:
            classes.append(entry.load())
        except HarnessError:  # a broken plugin is reported by every command already
            continue
    return {m: next((way for cls in classes if (way := cls.direction(m))), None)
            for m in metrics}
