"""The ``harness`` command: run, plugins, leaderboard."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness import __version__, results
from harness.config import (
    INCEPTION_WEIGHTS_ENV,
    RunConfig,
    load_toml,
    make_config,
    parse_assignments,
)
from harness.errors import HarnessError
from harness.manager import get_plugin_manager

RUN_FLAGS = {  # flag -> (RunConfig field, type, help)
    "--prior": ("prior", str, "latent prior plugin (default: gaussian)"),
    "--cond": ("cond", str, "conditioning source plugin (default: kmeans_d)"),
    "--backbone": ("backbone", str, "GAN backbone plugin (default: mlp)"),
    "--dataset": ("dataset", str, "dataset plugin (default: ring)"),
    "--loss": ("loss", str, "adversarial loss plugin (default: bce)"),
    "--seed": ("seed", int, "random seed (default: 0)"),
    "--steps": ("steps", int, "training iterations (default: 1500)"),
    "--batch-size": ("batch_size", int, "batch size (default: 100)"),
    "--d-steps": ("d_steps", int, "D updates per G update (default: 1)"),
    "--z-dim": ("z_dim", int, "latent size (default: the backbone's)"),
    "--lr-g": ("lr_g", float, "G learning rate (default: 1e-4)"),
    "--lr-d": ("lr_d", float, "D learning rate (default: 1e-4)"),
    "--eval-samples": ("eval_samples", int, "generated samples for metrics (default: 50000)"),
    "--out": ("out", Path, "results folder (default: results)"),
    "--device": ("device", str, "cpu, cuda or auto (default: cpu)"),
    "--threads": ("threads", int, "torch CPU threads (default: torch's choice)"),
    "--log-every": ("log_every", int, "steps between log.jsonl records (default: 100)"),
    "--checkpoint-every": ("checkpoint_every", int, "steps between checkpoints (default: 1000)"),
    "--sample-every": ("sample_every", int, "steps between sample grids (default: 0, at the end)"),
    "--eval-every": ("eval_every", int, "steps between evaluations (default: 0, at the end)"),
    "--ema-decay": ("ema_decay", float, "evaluate an EMA of G's weights (e.g. 0.999)"),
    "--ema-start": ("ema_start", int, "steps before the EMA starts averaging (default: 0)"),
    "--data-root": ("data_root", Path, "folder of MNIST / CIFAR-10 / image data (default: data)"),
}
OPTION_FLAGS = ("prior", "cond", "backbone", "dataset", "loss")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness", description="Benchmark harness for conditioned GANs."
    )
    parser.add_argument("--version", action="version", version=f"gan-harness {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="train and evaluate one composition",
        description="Train and evaluate one composition, e.g. "
        "harness run --prior gaussian --cond kmeans_d --backbone mlp --dataset ring --seed 0",
        epilog="Plugin names and their options: harness plugins --verbose",
    )
    run.add_argument(
        "--config", type=Path, help="TOML file of run settings, or a run's config.json"
    )
    for flag, (_, kind, text) in RUN_FLAGS.items():
        run.add_argument(flag, type=kind, default=None, help=text)
    run.add_argument("--metrics", help="comma-separated metric plugins (default: all that apply, "
                     "except opt-in ones such as lpips_recon)")
    for name in OPTION_FLAGS:
        run.add_argument(f"--{name}-opt", action="append", default=[], metavar="KEY=VALUE",
                         help=f"option of the {name} plugin (repeatable)")
    run.add_argument("--metric-opt", action="append", default=[], metavar="METRIC.KEY=VALUE",
                     help="option of a metric plugin (repeatable)")
    run.add_argument("--download", action="store_true",
                     help="let torchvision download a missing dataset into --data-root")
    run.add_argument("--inception-weights", type=Path, metavar="PATH",
                     help="Inception weights file for fid_inception (default: "
                     "$HARNESS_INCEPTION_WEIGHTS, else the torch hub cache)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint")

    plugins = commands.add_parser("plugins", help="list registered plugins by family")
    plugins.add_argument("--verbose", "-v", action="store_true", help="show every option")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    board = commands.add_parser("leaderboard", help="aggregate runs: mean ± std over seeds")
    board.add_argument("runs", nargs="*", type=Path, help="run dirs or folders of runs")
    board.add_argument("--results", type=Path, help="folder of runs (default: results)")
    board.add_argument("--csv", type=Path, help="also write the table as CSV")
    board.add_argument("--group-by", help="comma-separated columns (default: every config field)")
    board.add_argument("--compare", metavar="SUITE",
                       help="show a paper's published numbers beside ours (registry.toml suites,"
                       " e.g. liu2020-table1)")
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    values: dict[str, Any] = {}
    if args.config:
        if args.config.suffix == ".json":
            try:
                saved = json.loads(args.config.read_text())
            except (OSError, ValueError) as exc:
                raise HarnessError(f"cannot read config {args.config}: {exc}") from None
            values = saved.get("config", saved)
        else:
            values = load_toml(args.config)
    for flag, (field, _, _) in RUN_FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if field in OPTION_FLAGS and values.get(field, value) != value:
            # the file's options belong to the plugin it named, not to this one
            dropped = values.pop(f"{field}_options", None)
            if dropped:
                print(f"note: {flag} {value} replaces {values[field]!r} of {args.config}; "
                      f"its {field}_options are not used", file=sys.stderr)
        values[field] = value
    if args.metrics is not None:
        values["metrics"] = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for name in OPTION_FLAGS:
        pairs = getattr(args, f"{name}_opt")
        if pairs:
            values[f"{name}_options"] = {
                **values.get(f"{name}_options", {}), **parse_assignments(pairs, f"--{name}-opt")
            }
    for key, value in parse_assignments(args.metric_opt, "--metric-opt").items():
        metric, dot, option = key.partition(".")
        if not dot:
            raise HarnessError(f"--metric-opt expects METRIC.KEY=VALUE, got {key!r}")
        values.setdefault("metric_options", {}).setdefault(metric, {})[option] = value
    if args.no_progress:
        values["progress"] = False
    if args.download:
        values["download"] = True
    if args.inception_weights:
        os.environ[INCEPTION_WEIGHTS_ENV] = str(args.inception_weights)
    return make_config(values)


def command_run(args: argparse.Namespace) -> int:
    from harness import leaderboard, trainer

    pm = get_plugin_manager()
    if args.resume:
        directory = args.resume
        if not (directory / results.CHECKPOINT).exists():
            raise HarnessError(f"--resume {directory}: no checkpoint at {results.CHECKPOINT}")
        if results.is_finished(directory):
            raise HarnessError(f"--resume {directory}: this run already finished")
        config = make_config(results.read_json(directory / results.CONFIG)["config"])
        if args.no_progress:
            config.progress = False
        run = trainer.build_run(config, pm)
    else:
        config = config_from_args(args)
        run = trainer.build_run(config, pm)  # every input is validated before any write
        directory = results.create_run_dir(config.out, trainer.run_name(config))
    run.directory = directory
    print(f"run directory: {directory}", file=sys.stderr)
    try:
        trainer.execute(run, resume=bool(args.resume))
    except KeyboardInterrupt:
        print(f"\ninterrupted at step {run.step}; continue with: harness run --resume {directory}",
              file=sys.stderr)
        return 130
    frame, metrics = leaderboard.load_runs([directory])
    print(leaderboard.render(leaderboard.aggregate(frame, metrics), metrics))
    return 0


def command_plugins(args: argparse.Namespace) -> int:
    from harness.hookspecs import FAMILIES

    pm = get_plugin_manager()
    listing: dict[str, Any] = {}
    for family in FAMILIES:
        listing[family] = []
        for name, entry in pm.registry(family).items():
            item: dict[str, Any] = {"name": name, "provider": entry.provider}
            if args.verbose or args.json:
                cls = entry.load()
                item["help"] = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                item["options"] = [
                    {"name": key, "type": _type_name(f.annotation), "default": f.default,
                     "help": f.description or ""}
                    for key, f in cls.Options.model_fields.items()
                ]
            listing[family].append(item)
    if args.json:
        print(json.dumps({"plugins": listing, "errors": pm.load_errors}, indent=2, default=str))
        return 0
    for family, items in listing.items():
        print(f"{family}:")
        for item in items:
            print(f"  {item['name']:<18} {item['provider']}")
            if args.verbose:
                if item["help"]:
                    print(f"      {item['help']}")
                for opt in item["options"]:
                    print(f"      --{family_flag(family)}-opt {opt['name']}=<{opt['type']}> "
                          f"(default {opt['default']!r})  {opt['help']}")
    for error in pm.load_errors.values():
        print(f"warning: {error}", file=sys.stderr)
    return 0


def family_flag(family: str) -> str:
    return {"conditioners": "cond", "priors": "prior", "backbones": "backbone",
            "datasets": "dataset", "losses": "loss", "metrics": "metric"}[family]


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def command_leaderboard(args: argparse.Namespace) -> int:
    from harness import leaderboard

    paths = list(args.runs) or [args.results or Path("results")]
    if args.results and args.runs:
        paths.append(args.results)
    frame, metrics = leaderboard.load_runs(paths)
    group_by = [c.strip() for c in args.group_by.split(",")] if args.group_by else None
    table = leaderboard.aggregate(frame, metrics, group_by)
    suite = leaderboard.published_numbers(args.compare) if args.compare else None
    print(leaderboard.render(table, metrics, suite))
    if args.csv:
        leaderboard.write_csv(table, args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


COMMANDS = {"run": command_run, "plugins": command_plugins, "leaderboard": command_leaderboard}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
