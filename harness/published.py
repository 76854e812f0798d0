"""Published numbers beside measured ones: one line per (dataset, method, metric).

Each leaderboard group (a composition's runs over seeds) is matched to the suite rows whose
method it follows (``harness.suites.matching_rows``); each published metric of that row is
put beside the group's mean ± the statistic the paper reports (s.e. or std over seeds),
the 95 % bootstrap interval of that mean, the difference, which way is better, the budget
against the paper's, and a verdict (``harness.statistics.verdict``: Welch's t-test against
the published mean, spread and trials). No verdict, and the line says why, for a group
trained for fewer steps than the paper (``n/a: 1.5k of 100k steps``), on a stand-in
dataset, with settings that differ from the paper's protocol (``settings differ:
dataset.std=0.3``), or with fewer than 3 seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from harness import statistics
from harness.config import NON_SCIENTIFIC, RunConfig, make_config
from harness.errors import HarnessError
from harness.leaderboard import aggregate, cell_text, group_keys, mean_std
from harness.manager import PluginManager
from harness.suites import Match, Suite, flatten, matching_rows, metric_for, same

STATISTICS = {"sem": "s.e.", "std": "std"}
COLUMNS = ["dataset", "method", "seeds", "budget", "metric", "better", "measured", "ci95",
           "paper", "difference", "p", "verdict"]
"""The printed comparison; the CSV has the numbers behind them (``*_mean``, ``*_spread``)."""

NOT_PROTOCOL = NON_SCIENTIFIC | {"seed", "steps", "eval_every"}
"""Config fields a run may change and still follow the paper's protocol: the budget
(``steps``, shown beside every line), the seed, and what never changes results."""


def steps_text(steps: float) -> str:
    """1500 -> ``1.5k``, 100000 -> ``100k``, 40 -> ``40``."""
    return f"{steps / 1000:g}k" if steps >= 1000 else f"{steps:g}"


def paper_steps(suite: Suite, dataset: str, row: str) -> int:
    values = suite.config_values("paper", dataset, row, 0)
    return int(values.get("steps", RunConfig.model_fields["steps"].default))


def paper_settings(suite: Suite, dataset: str, row: str) -> dict[str, Any]:
    """The leaderboard columns of a run of the paper's protocol for a row: every config
    field but ``NOT_PROTOCOL`` (the default where the suite names none; not those a
    component decides, such as ``z_dim``) and the component options the suite names."""
    values = suite.config_values("paper", dataset, row, 0)
    config = make_config(values).model_dump(mode="json", exclude=NOT_PROTOCOL)
    wanted = {k: v for k, v in config.items() if not k.endswith("_options") and v is not None}
    wanted.update(flatten({k: v for k, v in values.items() if k.endswith("_options")}))
    return wanted


def differing_settings(wanted: dict[str, Any], runs: pd.DataFrame) -> list[str]:
    """``column=value`` for each of ``wanted``'s settings some of ``runs`` do not share (a
    setting the runs do not record is not counted)."""
    found = []
    for key, value in wanted.items():
        if key not in runs:
            continue
        other = [cell_text(c) for c in dict.fromkeys(runs[key].tolist())
                 if cell_text(c) and not same(value, c)]
        if other:
            found.append(f"{key}={'/'.join(other)}")
    return found


def no_verdict(suite: Suite, match: Match, runs: pd.DataFrame, steps: float,
               paper: int) -> str:
    """Why a group gets no verdict against a row: its budget, a stand-in dataset, settings
    that differ from the paper's protocol; empty when nothing stands in the way."""
    reasons = []
    if not steps >= paper:
        reasons.append(f"n/a: {steps_text(steps)} of {steps_text(paper)} steps")
    if suite.paper_dataset(match.dataset) != match.dataset:
        reasons.append(f"stand-in for {suite.paper_dataset(match.dataset)}")
    differ = differing_settings(paper_settings(suite, match.dataset, match.row), runs)
    if differ:
        reasons.append("settings differ: " + ", ".join(differ))
    return "; ".join(reasons)


def compare(runs: pd.DataFrame, metrics: list[str], suites: Iterable[Suite],
            directions: dict[str, str | None], group_by: list[str] | None = None,
            assign: Callable[[dict[str, Any]], Iterable[Match]] | None = None) -> pd.DataFrame:
    """The comparison of finished ``runs`` (``leaderboard.load_runs``), grouped as
    ``leaderboard.aggregate`` groups them, with the published rows of ``suites``; empty when
    no group has published numbers.

    ``directions``: metric -> ``"higher"`` / ``"lower"`` / None (``Metric.direction``).
    ``assign``: a group's columns -> the suite rows it is measured for; default: the rows
    whose method it follows (``matching_rows``). Lines follow the groups, then the
    published metrics of each row.
    """
    suites = list(suites)
    assign = assign or (lambda columns: matching_rows(columns, suites))
    if runs.empty:
        return pd.DataFrame()
    table = aggregate(runs, metrics, group_by)
    keys = group_keys(runs, metrics, group_by)
    members = [part for _, part in runs.groupby(keys, sort=True, dropna=False)]
    lines: list[dict[str, Any]] = []
    for (_, group), seeds in zip(table.iterrows(), members, strict=True):
        columns = group.to_dict()
        for match in assign(columns):
            suite, row = match.suite, match.suite.rows[match.row]
            stat, n = suite.statistic, int(columns["n_seeds"])
            steps, paper = columns.get("steps", math.nan), paper_steps(suite, match.dataset,
                                                                         match.row)
            why_not = no_verdict(suite, match, seeds, steps, paper)
            for pattern, (mean, spread) in suite.published_row(match.dataset, match.row).items():
                metric = metric_for(pattern, metrics)
                values = seeds[metric].dropna().to_numpy(float) if metric else np.empty(0)
                measured = columns.get(f"{metric}_mean", math.nan) if metric else math.nan
                measured_spread = columns.get(f"{metric}_{stat}", math.nan) if metric else math.nan
                better = directions.get(metric) if metric else None
                low, high = (statistics.confidence_interval(values) if len(values) > 1
                             else (math.nan, math.nan))
                verdict, p = (why_not, math.nan) if why_not or not len(values) else \
                    statistics.verdict(values, mean, spread, stat, suite.trials, better)
                lines.append({
                    "dataset": match.dataset, "paper_dataset": suite.paper_dataset(match.dataset),
                    "method": row.label, "row": match.row, "seeds": n,
                    "steps": steps, "paper_steps": paper,
                    "budget": f"{steps_text(steps)} of {steps_text(paper)} steps",
                    "metric": metric or pattern, "better": better or "",
                    "measured_mean": measured, "measured_spread": measured_spread,
                    "ci95_low": low, "ci95_high": high,
                    "published_mean": mean, "published_spread": spread,
                    "statistic": stat, "trials": suite.trials, "difference": measured - mean,
                    "measured": mean_std(measured, measured_spread if n > 1 else math.nan),
                    "ci95": "" if math.isnan(low) else f"[{low:.4g}, {high:.4g}]",
                    "paper": mean_std(mean, spread), "p_value": p,
                    "p": "" if math.isnan(p) else f"{p:.2g}", "verdict": verdict,
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
