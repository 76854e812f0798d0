"""``harness eval RUN_DIR``: evaluate a saved checkpoint of a run, without training.

Any applicable metrics (``--metrics``, default the run's own), on the last, best or a kept
checkpoint; the results go into a new file in ``RUN_DIR/evaluations/`` (``harness.evaluation``),
never into ``metrics.json``. Safe while the run trains.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from typing import Any


def add_parser(commands: Any) -> None:
    from harness.cli import int_arg, path_arg

    evaluate = commands.add_parser(
        "eval", help="evaluate a saved checkpoint of a run with any applicable metrics",
        description="Evaluate a checkpoint of a run (finished or not, even while it trains) "
        "with its own metrics or others that apply to its dataset, with the run's fixed "
        "evaluation seeds. Writes RUN_DIR/evaluations/<time>-[last-|best-]step<N>.json; "
        "metrics.json (the run's own evaluation) is never changed. The leaderboard adds the "
        "new keys of the final checkpoint as columns, and <key>@best / <key>@step<N> for "
        "other checkpoints.",
        epilog="Metric names and options: harness plugins --verbose",
    )
    evaluate.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="a run directory")
    evaluate.add_argument("--metrics", help="comma-separated metric plugins (default: the "
                          "run's own)")
    evaluate.add_argument("--metric-opt", action="append", default=[],
                          metavar="METRIC.KEY=VALUE",
                          help="option of a metric plugin (repeatable; default: the run's)")
    evaluate.add_argument("--eval-samples", type=int_arg(1, 10**9), metavar="N",
                          help="generated samples per metric (default: the run's)")
    evaluate.add_argument("--checkpoint", default="last", metavar="last|best|STEP",
                          help="last (default), best (--best-metric) or the step of a kept "
                          "checkpoint (--keep-checkpoints)")
    evaluate.add_argument("--device", choices=["cpu", "cuda", "auto"],
                          help="where to run G and the metrics (default: the run's device)")
    evaluate.add_argument("--data-root", type=path_arg,
                          help="folder of file-backed datasets (default: the run's)")
    evaluate.add_argument("--threads", type=int_arg(1, 1024), help="torch CPU threads")
    evaluate.set_defaults(handler=command_eval)


def command_eval(args: argparse.Namespace) -> int:
    from harness import evaluation, restore
    from harness.errors import HarnessError, MetricCrashed, one_line

    what, directory = "harness eval", args.run_dir
    saved = restore.read_saved_config(directory, what)
    metrics = None
    if args.metrics is not None:
        metrics = list(dict.fromkeys(m.strip() for m in args.metrics.split(",") if m.strip()))
        if not metrics:
            raise HarnessError(f"--metrics {args.metrics!r} names no metric (valid: "
                               "comma-separated metric plugins; harness plugins lists them)")
    settings = evaluation.overrides(saved, metrics, args.metric_opt, args.eval_samples)
    settings.update({name: getattr(args, name) for name in ("device", "data_root", "threads")
                     if getattr(args, name) is not None})
    try:
        record = evaluation.evaluate(directory, args.checkpoint, settings, what)
    except MetricCrashed as exc:  # a bug in a metric: one line, its traceback kept aside
        with tempfile.NamedTemporaryFile("w", prefix="harness-eval-", suffix=".txt",
                                         delete=False) as trace:
            trace.write(traceback.format_exc())
        print(f"error: {what}: {one_line(exc)} (nothing written; traceback in {trace.name})",
              file=sys.stderr)
        return 1
    path = evaluation.write(directory, record)
    if record["run_status"] != "finished":
        print(f"note: the run's status is {record['run_status'] or 'unknown'}: this evaluates its "
              f"checkpoint of step {record['step']}", file=sys.stderr)
    print(evaluation.format_record(record, directory))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if record["metrics"] else 1
