"""``harness report RESULTS_DIR --out report.html``: one static HTML page of a results
folder (``harness/report.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(commands: Any) -> None:
    from harness.cli import path_arg

    report = commands.add_parser(
        "report", help="one static HTML page of a results folder, readable offline",
        description="Write one self-contained HTML page (no server, no script, images "
        "embedded) of a results folder: the leaderboard, the published numbers beside the "
        "measured ones, quality-diversity and cluster-quality plots across its rows, and per "
        "run its status, settings, metrics, latest sample grid, training curves and the "
        "results of harness tradeoff and harness cluster.",
    )
    report.add_argument("results_dir", type=path_arg, metavar="RESULTS_DIR",
                        help="a folder of run directories (harness run/suite --out) or one run")
    report.add_argument("--out", type=path_arg, metavar="PATH",
                        help="the HTML file to write (default: RESULTS_DIR/report.html)")
    report.add_argument("--compare", metavar="SUITE",
                        help="put this suite's published numbers beside the leaderboard "
                        "(registry.toml suites, or 'all'; default: the comparison.csv that "
                        "harness suite wrote into RESULTS_DIR, else every shipped suite)")
    report.add_argument("--stat", choices=["std", "sem"], default="std",
                        help="spread over seeds shown after ± (default: std)")
    report.set_defaults(handler=command)


def command(args: argparse.Namespace) -> int:
    from harness import report, signals
    from harness.cli import shipped_suites
    from harness.manager import get_plugin_manager

    since = signals.stops_so_far()
    run_dirs = report.find_runs(args.results_dir)
    out = Path(args.out) if args.out is not None else args.results_dir / "report.html"
    report.check_out(out)
    suites = shipped_suites(args.compare) if args.compare else None
    text = report.build(args.results_dir, run_dirs, suites, get_plugin_manager(), args.stat)
    report.write(out, text, since)
    runs = f"{len(run_dirs)} run{'s' * (len(run_dirs) != 1)}"
    print(f"wrote {out} ({runs}, {len(text.encode()) / 1e6:.1f} MB)", file=sys.stderr)
    return 0
