"""``harness report RESULTS_DIR --out report.html``: one static HTML page of a results
folder (``harness/report.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


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
    from harness import report, results
    from harness.cli import shipped_suites
    from harness.manager import get_plugin_manager

    run_dirs = report.find_runs(args.results_dir)
    out = Path(args.out) if args.out is not None else args.results_dir / "report.html"
    reason = f"{out} is a folder" if out.is_dir() else results.unwritable_reason(out.parent)
    if reason:
        raise HarnessError(f"--out {out}: cannot write the report: {reason} (valid: a file "
                           "path in a writable folder)")
    suites = shipped_suites(args.compare) if args.compare else None
    text = report.build(args.results_dir, run_dirs, suites, get_plugin_manager(), args.stat)
    try:
        results.atomic_write_bytes(out, text.encode())
    except OSError as exc:
        raise HarnessError(f"--out {out}: cannot write the report: "
                           f"{exc.strerror or type(exc).__name__} (valid: a file path in a "
                           "writable folder)") from None
    print(f"wrote {out} ({len(run_dirs)} runs, {len(text.encode()) / 1e6:.1f} MB)",
          file=sys.stderr)
    return 0
