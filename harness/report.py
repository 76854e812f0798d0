"""``harness report``: one static HTML page of a results folder, readable offline.

The page holds the leaderboard (``harness leaderboard``'s groups, mean ± spread over seeds),
the published numbers beside the measured ones, two plots across the leaderboard's groups
(quality against diversity; the cluster quality of the conditioners' partitions) and one
section per run directory: status, settings, metrics, the latest sample grid, training
curves and the results of ``harness tradeoff`` and ``harness cluster``.

Images are the PNGs the run directories already hold (the ``figures`` plugin's grids and
``curves.png``, ``tradeoff.png``), embedded as ``data:`` URIs; only what no file holds is
drawn here with matplotlib: the curves of a run without ``curves.png`` (from its
``log.jsonl``), the two plots across groups and ``harness cluster``'s cluster sizes. The page
has no script and loads nothing: its Content-Security-Policy allows only its own inline
style and ``data:`` images. Every text read from a results folder is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness import __version__, leaderboard, published, results, signals
from harness.errors import HarnessError, one_line
from harness.leaderboard import Unusable, read_object

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.manager import PluginManager
    from harness.suites import Suite

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMPARISON_CSV = "comparison.csv"
"""Written by ``harness suite`` into its results folder: its rows' published numbers."""
CLUSTER_SCORES = ("cluster_acc", "cluster_nmi", "cluster_purity", "cluster_ari")
"""``cluster_agreement``'s scores of a conditioner's partition against the true labels."""
ALGORITHM2_SCORES = ("acc", "nmi", "purity", "ari")
"""``harness cluster``'s scores (``cluster.json``)."""
SUMMARY_FIELDS = ("dataset", "prior", "cond", "backbone", "loss", "steps", "batch_size", "seed")
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
GENERATOR = '<meta name="generator" content="gan-harness'
"""How every page begins its ``generator`` meta: the mark of a report ``--out`` may replace."""
OLD_TITLE = "<title>harness report: "
"""How the title of every page ``build`` makes begins: the mark of a report written before
``GENERATOR`` was added."""
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
section.run { border-top: 1px solid #ddd; padding-top: 0.5em; }
figure { display: inline-block; max-width: 100%; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figcaption { color: #555; font-size: 0.9em; } img { max-width: 100%; }
.status-finished { color: #176117; } .status-failed { color: #a11; }
.status-interrupted, .status-running, .status-unreadable { color: #a60; }
.note { color: #555; } .warning { color: #a60; }
.scroll { overflow-x: auto; max-width: 100%; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
nav ol { columns: 2; font-size: 0.9em; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table_html(frame: pd.DataFrame, table_id: str | None = None) -> str:
    """``frame`` as an escaped HTML table (numbers in 4 significant digits) in a box that
    scrolls sideways when the table is wider than the page."""
    return ('<div class="scroll">' + frame.to_html(
        index=False, escape=True, border=0, na_rep="", table_id=table_id,
        float_format=lambda x: f"{x:.4g}") + "</div>")


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_html(png: bytes, caption: str) -> str:
    """An embedded PNG with its caption (``caption`` is escaped)."""
    return (f'<figure><img src="{png_uri(png)}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def read_png(path: Path) -> bytes:
    """The bytes of the PNG at ``path``; ``Unusable`` if unreadable or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Unusable(f"cannot read {path.name}: {exc.strerror or exc}") from None
    if not data.startswith(PNG_SIGNATURE):
        raise Unusable(f"{path.name} is not a PNG image")
    return data


def figure_png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- leaderboard
@dataclass
class Board:
    """The leaderboard of a results folder and what was left out of it."""

    frame: pd.DataFrame
    """One row per counted run (``leaderboard.load_runs``)."""
    metrics: list[str]
    table: pd.DataFrame
    """One row per composition (``leaderboard.aggregate``), numbered from 1 in that order."""
    warnings: list[str] = field(default_factory=list)

    def group_of(self) -> dict[str, int]:
        """Counted run directory name -> the number of its leaderboard row."""
        if self.frame.empty:
            return {}
        keys = [c for c in self.frame.columns
                if c not in self.metrics and c not in leaderboard.RUN_COLUMNS]
        numbers = self.frame.groupby(keys, sort=True, dropna=False).ngroup() + 1
        return dict(zip(self.frame["run_id"], numbers, strict=True))


def load_board(run_dirs: list[Path]) -> Board:
    """``harness leaderboard``'s table of ``run_dirs``; each run left out is warned about on
    stderr and kept for the page."""
    warnings: list[str] = []

    def warn(message: str) -> None:
        leaderboard.warn_stderr(message)
        warnings.append(message)

    frame, metrics = leaderboard.load_runs(run_dirs, warn)
    return Board(frame, metrics, leaderboard.aggregate(frame, metrics), warnings)


def board_view(table: pd.DataFrame, metrics: list[str], stat: str) -> pd.DataFrame:
    """``leaderboard.render``'s columns as a frame: the row number, the keys every table
    shows, the keys that vary, the seeds, and ``mean ± <stat>`` per metric."""
    suffixes = tuple(f"_{s}" for s in ("mean", *leaderboard.STATS, "run_std"))
    keys = [c for c in table.columns if c != "n_seeds" and not c.endswith(suffixes)]
    varying = [k for k in keys
               if k not in leaderboard.ALWAYS_SHOWN and table[k].dropna().nunique() > 1]
    columns: dict[str, Any] = {"#": range(1, len(table) + 1)}
    columns.update({k: table[k] for k in
                    [k for k in leaderboard.ALWAYS_SHOWN if k in table] + varying})
    columns["seeds"] = table["n_seeds"]
    columns.update({metric: leaderboard.mean_std_column(table, metric, stat)
                    for metric in metrics if f"{metric}_mean" in table})
    return pd.DataFrame(columns, index=table.index)  # built at once: not fragmented


# ----------------------------------------------------------------------------- published
COMPARISON_NEEDS = {*published.COLUMNS, "suite", "source", "statistic", "trials",
                    "paper_dataset", "published_spread", "measured_mean"}


def suite_comparison(results_dir: Path) -> tuple[pd.DataFrame | None, str | None]:
    """``harness suite``'s ``comparison.csv`` in ``results_dir``: (frame, None); (None,
    why it cannot be used) when it is unreadable; (None, None) when there is none."""
    path = results_dir / COMPARISON_CSV
    if not path.is_file():
        return None, None
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame(), None  # the suite had nothing to compare
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return None, f"{path}: cannot be read ({one_line(exc)})"
    missing = sorted(COMPARISON_NEEDS - set(frame.columns))
    if missing:
        return None, f"{path}: lacks the columns {', '.join(missing)}"
    unknown = sorted(set(frame["statistic"].astype(str)) - set(published.STATISTICS))
    if unknown:
        return None, (f"{path}: unknown statistic {', '.join(unknown)} (valid: "
                      f"{', '.join(published.STATISTICS)})")
    for column in ("difference", "measured_mean", "published_spread", "trials"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    for column in ("verdict", "better", "measured", "paper"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame, None


def comparison_html(comparison: pd.DataFrame) -> str:
    """``published.render``'s blocks as HTML: per suite its source, what ± means, a table."""
    blocks = []
    for suite_name, part in comparison.groupby("suite", sort=False):
        view = part.copy()
        view["dataset"] = [d if d == p else f"{d} (for {p})"
                           for d, p in zip(part["dataset"], part["paper_dataset"], strict=True)]
        view["difference"] = [f"{d:+.3g}" if not math.isnan(d) else ""
                              for d in part["difference"].astype(float)]
        missing = sorted(set(part.loc[part["measured_mean"].isna(), "metric"].astype(str)))
        footer = (f'<p class="note">No run measured {esc(", ".join(missing))}: a metric this '
                  "composition does not compute, or a published name that matches none.</p>"
                  if missing else "")
        blocks.append(f"<h3>{esc(suite_name)}</h3><p>{esc(part.iloc[0]['source'])}<br>"
                      f"{esc(published.statistic_line(part))}</p>"
                      + table_html(view[published.COLUMNS]) + footer)
    return "\n".join(blocks)


# ----------------------------------------------------------------------------- plots
def tradeoff_plot(table: pd.DataFrame, metrics: list[str], stat: str) -> bytes | None:
    """Quality against diversity over the leaderboard's rows (the pairs ``harness tradeoff``
    plots: % HQ against modes and reverse KL; precision against recall, FID, modes, rKL),
    each row a point at its means with ± ``stat`` bars, labelled with its number; None
    when the table has no such pair."""
    from matplotlib.figure import Figure

    from harness.analysis import axis_label, curve_panels

    measured = [m for m in metrics if f"{m}_mean" in table]
    pairs = curve_panels(measured)
    if table.empty or not pairs:
        return None
    fig = Figure(figsize=(4.5 * len(pairs), 3.8), layout="constrained")
    for ax, (y_key, x_key) in zip(fig.subplots(1, len(pairs), squeeze=False)[0], pairs,
                                  strict=True):
        for number, (_, row) in enumerate(table.iterrows(), 1):
            x, y = row[f"{x_key}_mean"], row[f"{y_key}_mean"]
            if math.isnan(x) or math.isnan(y):
                continue
            ax.errorbar(x, y, xerr=_bar(row[f"{x_key}_{stat}"]), yerr=_bar(row[f"{y_key}_{stat}"]),
                        fmt="o", capsize=3)
            ax.annotate(f"#{number}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize="small")
        ax.set_xlabel(axis_label(x_key))
        ax.set_ylabel(axis_label(y_key))
        ax.grid(alpha=0.3)
    fig.suptitle(f"quality against diversity: leaderboard rows, mean ± {stat} over seeds",
                 fontsize="medium")
    return figure_png(fig)


def _bar(spread: float) -> float | None:
    return None if math.isnan(spread) else spread


def cluster_plot(table: pd.DataFrame, stat: str) -> bytes | None:
    """``cluster_agreement``'s scores of each leaderboard row as bars (mean ± ``stat``);
    None when no row has them."""
    from matplotlib.figure import Figure

    scores = [s for s in CLUSTER_SCORES if f"{s}_mean" in table]
    if table.empty or not scores:
        return None
    fig = Figure(figsize=(max(5.0, 1.2 * len(table) + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(scores)
    for i, score in enumerate(scores):
        offsets = [n + (i - (len(scores) - 1) / 2) * width for n in range(1, len(table) + 1)]
        spread = table[f"{score}_{stat}"].fillna(0.0)
        ax.bar(offsets, table[f"{score}_mean"].fillna(0.0), width, yerr=spread, capsize=2,
               label=score.removeprefix("cluster_"))
    ax.set_xticks(range(1, len(table) + 1), [f"#{n}" for n in range(1, len(table) + 1)])
    ax.set_xlabel("leaderboard row")
    ax.set_ylabel("score against the true labels")
    ax.legend(fontsize="small", ncols=len(scores))
    ax.set_title(f"cluster quality of the conditioner's partition, mean ± {stat} over seeds",
                 fontsize="medium")
    return figure_png(fig)


def cluster_sizes_plot(sizes: list[int]) -> bytes:
    """``harness cluster``'s real examples per cluster, as bars."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(sizes)), sizes)
    ax.set_xlabel("cluster (Gaussian of the prior)")
    ax.set_ylabel("real examples")
    return figure_png(fig)


# ----------------------------------------------------------------------------- run sections
def latest_grid(run_dir: Path) -> Path | None:
    """The sample grid of the latest step (``samples/step_XXXXXXX.png``), or None."""
    grids = sorted((run_dir / "samples").glob("step_*.png"), key=lambda p: (len(p.name), p.name))
    return grids[-1] if grids else None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of ``log.jsonl`` that have a step; lines that do not parse (the last
    line of a run still writing) are skipped."""
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int | float):
            records.append(record)
    return records


def curves(run_dir: Path) -> tuple[bytes | None, str]:
    """The run's training curves and their caption: ``curves.png`` when the ``figures``
    plugin wrote it, else drawn here from ``log.jsonl`` with the same function."""
    try:
        return read_png(run_dir / "curves.png"), "training curves (curves.png)"
    except Unusable as exc:
        if (run_dir / "curves.png").exists():
            return None, str(exc)
    if not (run_dir / results.LOG).is_file():
        return None, "no curves.png and no log.jsonl"
    from harness_plugins.figures import curves_png

    try:
        png = curves_png(read_log(run_dir / results.LOG))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return None, f"curves not drawn from {results.LOG}: {one_line(exc)}"
    if png is None:
        return None, f"no training curves: {results.LOG} holds no losses"
    return png, f"training curves (drawn from {results.LOG})"


def cluster_html(run_dir: Path) -> str:
    """``harness cluster``'s scores, settings and cluster sizes (``cluster.json``)."""
    from harness.analysis import CLUSTER_JSON

    if not (run_dir / CLUSTER_JSON).exists():
        return ""
    try:
        summary = read_object(run_dir / CLUSTER_JSON)
    except Unusable as exc:
        return f'<p class="warning">{esc(exc)}</p>'
    scores = summary.get("scores")
    parts = [f"<h4>{esc(summary.get('algorithm', 'harness cluster'))}</h4>"]
    if isinstance(scores, dict):
        row = {name: scores.get(name) for name in ALGORITHM2_SCORES if name in scores}
        parts.append(table_html(pd.DataFrame([row])))
    else:
        parts.append('<p class="note">No true labels in this dataset: no scores.</p>')
    settings = {k: summary[k] for k in ("components", "samples_per_component", "examples",
                                        "nonempty_clusters", "step") if k in summary}
    parts.append(f'<p class="note">{esc(json.dumps(settings))}'
                 + (f"<br>{esc(summary['note'])}" if "note" in summary else "") + "</p>")
    sizes = summary.get("cluster_sizes")
    if isinstance(sizes, list) and sizes and all(
            isinstance(s, int) and not isinstance(s, bool) for s in sizes):
        parts.append(figure_html(cluster_sizes_plot(sizes), "cluster sizes (cluster.json)"))
    return "\n".join(parts)


def tradeoff_html(run_dir: Path) -> str:
    """``harness tradeoff``'s curve (``tradeoff.png``) and numbers (``tradeoff.csv``)."""
    from harness.analysis import TRADEOFF_CSV, TRADEOFF_PNG

    parts = []
    if (run_dir / TRADEOFF_PNG).exists():
        try:
            parts.append(figure_html(read_png(run_dir / TRADEOFF_PNG),
                                     "quality–diversity trade-off over the sampling scale σ "
                                     "(tradeoff.png)"))
        except Unusable as exc:
            parts.append(f'<p class="warning">{esc(exc)}</p>')
    if (run_dir / TRADEOFF_CSV).is_file():
        try:
            parts.append(table_html(pd.read_csv(run_dir / TRADEOFF_CSV)))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            parts.append(f'<p class="warning">{TRADEOFF_CSV}: {esc(exc)}</p>')
    return "\n".join(parts)


def run_section(run_dir: Path, anchor: str, group: int | None) -> str:
    """One run's section: status, settings, metrics and figures; what cannot be read is
    named in the section instead."""
    notes: list[str] = []
    try:
        info = read_object(run_dir / results.RUN)
        status = str(info.get("status", "unknown"))
    except Unusable as exc:
        info, status = {}, "unreadable"
        notes.append(str(exc))
    head = [f'<section class="run" id="{anchor}"><h3>{esc(run_dir.name)}</h3>',
            f'<p><span class="status-{esc(status)}">{esc(status)}</span>']
    if group is not None:
        head.append(f' · leaderboard row <a href="#board">#{group}</a>')
    if info.get("error"):
        notes.append(f"error: {info['error']}")
    if isinstance(info.get("metric_errors"), dict):
        notes += [f"metric {name} not computed: {why}"
                  for name, why in info["metric_errors"].items()]
    try:
        config = read_object(run_dir / results.CONFIG).get("config")
        if not isinstance(config, dict):
            raise Unusable(f'{results.CONFIG} has no "config" object')
        head.append(" · " + esc(", ".join(f"{k} {config[k]}" for k in SUMMARY_FIELDS
                                           if k in config)))
        settings = (f"<details><summary>settings (config.json)</summary>"
                    f"<pre>{esc(json.dumps(config, indent=1, sort_keys=True))}</pre></details>")
    except Unusable as exc:
        notes.append(str(exc))
        settings = ""
    head.append("</p>")
    body = [settings]
    if (run_dir / results.METRICS).exists():
        try:
            body.append(table_html(pd.DataFrame([leaderboard.read_metrics(run_dir)])))
        except Unusable as exc:
            notes.append(str(exc))
    figures = []
    grid = latest_grid(run_dir)
    if grid is not None:
        try:
            step = grid.stem.removeprefix("step_").lstrip("0") or "0"
            figures.append(figure_html(read_png(grid), f"samples at step {step} ({grid.name})"))
        except Unusable as exc:
            notes.append(str(exc))
    png, caption = curves(run_dir)
    if png is not None:
        figures.append(figure_html(png, caption))
    else:
        notes.append(caption)
    body += ["<div>" + "".join(figures) + "</div>", tradeoff_html(run_dir), cluster_html(run_dir)]
    note_html = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
    return "".join(head) + note_html + "\n".join(b for b in body if b) + "</section>"


# ----------------------------------------------------------------------------- the page
def build(results_dir: Path, run_dirs: list[Path], suites: list[Suite] | None,
          pm: PluginManager, stat: str = "std") -> str:
    """The page of ``run_dirs`` (found in ``results_dir``) as HTML text.

    ``suites``: whose published numbers to put beside the leaderboard; None for the
    ``comparison.csv`` that ``harness suite`` wrote into ``results_dir`` (its own rows) if
    there is one, else every shipped suite (``harness run``'s default). ``stat``: the spread
    over seeds shown after ± (``std`` or ``sem``).
    """
    from harness.suites import registry_suites

    board = load_board(run_dirs)
    table, metrics = board.table, board.metrics
    comparison, source = None, ""
    if suites is None:
        comparison, why = suite_comparison(results_dir)
        if why:
            leaderboard.warn_stderr(f"{why}; comparing with every shipped suite instead")
            board.warnings.append(f"{why}; compared with every shipped suite instead")
        source = f"from {COMPARISON_CSV}, written by harness suite"
    if comparison is None:
        chosen = suites if suites is not None else list(registry_suites().values())
        comparison = (pd.DataFrame() if table.empty else published.compare(
            board.frame, metrics, chosen, published.directions(metrics, pm)))
        source = "the published rows of " + ", ".join(s.name for s in chosen) + \
            " that the leaderboard's rows follow"
    anchors = {run_dir: f"run-{n}" for n, run_dir in enumerate(run_dirs, 1)}
    groups = board.group_of()

    parts = [f"<h1>Results: {esc(results_dir)}</h1>",
             f'<p class="note">{len(run_dirs)} run director{"ies" if len(run_dirs) > 1 else "y"}'
             f", {len(board.frame)} counted in the leaderboard; written "
             f"{datetime.now().astimezone().isoformat(timespec='seconds')} by gan-harness "
             f"{esc(__version__)} (harness report)</p>"]
    if board.warnings:
        parts.append("<h3>Left out of the leaderboard</h3><ul>"
                     + "".join(f'<li class="warning">{esc(w)}</li>' for w in board.warnings)
                     + "</ul>")
    parts.append(f'<h2 id="board">Leaderboard</h2><p class="note">One row per composition; '
                 f"metrics as mean ± {esc(stat)} over seeds (one seed: the value).</p>")
    parts.append("<p>(no finished runs)</p>" if table.empty
                 else table_html(board_view(table, metrics, stat), "leaderboard"))
    if not table.empty:
        parts.append("<details><summary>every column (as harness leaderboard --csv)</summary>"
                     + table_html(pd.concat([pd.DataFrame({"#": range(1, len(table) + 1)},
                                                          index=table.index), table], axis=1))
                     + "</details>")
    parts.append('<h2 id="published">Published beside measured</h2>')
    if comparison.empty:
        parts.append(f'<p class="note">No leaderboard row follows a published row ({esc(source)}'
                     ").</p>")
    else:
        parts.append(f'<p class="note">{esc(source)}.</p>' + comparison_html(comparison))
    plots = [(tradeoff_plot(table, metrics, stat), "quality against diversity"),
             (cluster_plot(table, stat), "cluster quality")]
    if any(png for png, _ in plots):
        parts.append('<h2 id="plots">Across the leaderboard</h2>')
        parts += [figure_html(png, caption) for png, caption in plots if png]
    parts.append('<h2 id="runs">Runs</h2><nav><ol>' + "".join(
        f'<li><a href="#{anchors[d]}">{esc(d.name)}</a></li>' for d in run_dirs) + "</ol></nav>")
    parts += [run_section(d, anchors[d], groups.get(d.name)) for d in run_dirs]
    return page(f"harness report: {results_dir}", "\n".join(parts))


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'{GENERATOR} {esc(__version__)} (harness report)">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n"
            "</body></html>\n")


def is_report(path: Path) -> bool:
    """Whether ``path`` holds a page ``harness report`` wrote: its head has the page's
    ``generator`` meta, or its title (a page written before that meta)."""
    head = leaderboard.first_text(path).partition("</head>")[0]
    return head.startswith("<!DOCTYPE html>") and (GENERATOR in head or OLD_TITLE in head)


def check_out(out: Path) -> None:
    """``HarnessError`` (one line) unless the report may be written to ``out``: a new file
    or an earlier report, in a writable folder, in no run directory but directly in one as
    an ``.html`` file (one run's ``RUN/report.html``)."""
    leaderboard.check_output("--out", out, "the report", is_report,
                             "a report harness report wrote", run_suffix=".html")


def write(out: Path, text: str, since: int) -> None:
    """Write the page ``text`` to ``out`` atomically, unless a stop signal came after the
    point ``since`` (``signals.stops_so_far``): then ``KeyboardInterrupt``, even when the
    signal's own was swallowed while the page was built (matplotlib's import catches it),
    and nothing written. ``out`` is checked again (``check_out``): a file may have appeared
    there meanwhile."""
    signals.raise_if_stopped(since)
    check_out(out)
    try:
        results.atomic_write_bytes(out, text.encode())
    except OSError as exc:
        raise HarnessError(f"--out {out}: cannot write the report: "
                           f"{exc.strerror or type(exc).__name__} (valid: a file path in a "
                           "writable folder)") from None


def find_runs(results_dir: Path) -> list[Path]:
    """The run directories of ``results_dir`` (itself one, or a folder of them).

    Raises ``HarnessError`` when it does not exist, is not a folder or holds no run."""
    valid = "valid: a folder of run directories, such as harness run --out writes, or one run"
    if not results_dir.exists():
        raise HarnessError(f"RESULTS_DIR {results_dir} does not exist ({valid})")
    if not results_dir.is_dir():
        raise HarnessError(f"RESULTS_DIR {results_dir} is not a folder ({valid})")
    run_dirs = leaderboard.discover([results_dir])
    if not run_dirs:
        raise HarnessError(f"RESULTS_DIR {results_dir} holds no run directory (no */"
                           f"{results.RUN}; {valid})")
    return run_dirs
