"""The ``harness`` command: run, plugins, leaderboard.

Nothing heavy is imported at module level: torch, pandas and pydantic load inside the
commands that use them, so that ``--help`` and ``--version`` of every command answer without
them (tests/test_startup.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from harness import __version__
from harness.commands import add_parsers
from harness.errors import HarnessError, PluginError, one_line
from harness.manager import get_plugin_manager, metric_option_owners
from harness.signals import on_stop_signals, raise_interrupt, report_interrupt

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.manager import PluginManager


def path_arg(text: str) -> Path:
    """A path flag's value; an empty one or a NUL byte (which no file system accepts) is a
    usage error."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path (valid: a file or folder name)")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"a path cannot contain a NUL byte: {text!r}")
    return Path(text)


def betas_arg(text: str) -> tuple[float, float]:
    """``"B1,B2"`` -> (B1, B2); the range is checked with the rest of the config."""
    try:
        first, second = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not two numbers B1,B2 (e.g. 0.0,0.999)") from None
    return first, second


def whole_number(text: str) -> int:
    """An integer flag's value in ASCII digits (``int`` alone would also take other scripts'
    digits and underscores, e.g. ``'\u0663'`` as 3); else a one-line usage error."""
    if not re.fullmatch(r"\s*[+-]?[0-9]+\s*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (valid: digits 0-9)")
    return int(text)


RUN_FLAGS = {  # flag -> (RunConfig field, type, help)
    "--prior": ("prior", str, "latent prior plugin (default: gaussian)"),
    "--cond": ("cond", str, "conditioning source plugin (default: kmeans_d)"),
    "--backbone": ("backbone", str, "GAN backbone plugin (default: mlp)"),
    "--dataset": ("dataset", str, "dataset plugin (default: the one the backbone names, "
                  "else ring)"),
    "--loss": ("loss", str, "adversarial loss plugin (default: bce)"),
    "--reg": ("reg", str, "regulariser plugin, e.g. r1 (default: none)"),
    "--augment": ("augment", str, "augmentation of D's inputs, e.g. diffaug (default: none)"),
    "--seed": ("seed", whole_number, "random seed (default: 0)"),
    "--steps": ("steps", whole_number, "training iterations (default: 1500)"),
    "--batch-size": ("batch_size", whole_number, "batch size (default: 100)"),
    "--d-steps": ("d_steps", whole_number, "D updates per G update (default: 1)"),
    "--z-dim": ("z_dim", whole_number, "latent size (default: the backbone's)"),
    "--lr-g": ("lr_g", float, "G learning rate (default: 1e-4)"),
    "--lr-d": ("lr_d", float, "D learning rate (default: 1e-4)"),
    "--betas-g": ("betas_g", betas_arg, "G's Adam betas B1,B2 (default: 0.8,0.999)"),
    "--betas-d": ("betas_d", betas_arg, "D's Adam betas B1,B2 (default: 0.8,0.999)"),
    "--optimizer": ("optimizer", str, "adam or adamw, for every network (default: adam)"),
    "--weight-decay": ("weight_decay", float,
                       "optimiser weight decay (default: Adam 0, AdamW 0.01)"),
    "--eval-samples": ("eval_samples", whole_number,
                       "generated samples for metrics (default: 50000)"),
    "--out": ("out", path_arg, "results folder (default: results)"),
    "--device": ("device", str, "cpu, cuda or auto (default: cpu)"),
    "--threads": ("threads", whole_number, "torch CPU threads (default: torch's choice)"),
    "--log-every": ("log_every", whole_number, "steps between log.jsonl records (default: 100)"),
    "--log": ("log", str, "comma-separated loggers: tensorboard, wandb or a plugin's (default: "
              "none; harness plugins lists them)"),
    "--checkpoint-every": ("checkpoint_every", whole_number,
                           "steps between checkpoints (default: 1000)"),
    "--keep-checkpoints": ("keep_checkpoints", whole_number,
                           "also keep the checkpoint of every K-th "
                           "step as checkpoints/step-<K*i>.pt (a multiple of "
                           "--checkpoint-every; default: 0, only the last)"),
    "--best-metric": ("best_metric", str, "keep checkpoints/best.pt: the weights at the "
                      "evaluation with the best value of this metric key, e.g. "
                      "fid_digits_10k (needs --eval-every)"),
    "--sample-every": ("sample_every", whole_number,
                       "steps between sample grids (default: 0, at the end)"),
    "--eval-every": ("eval_every", whole_number,
                     "steps between evaluations (default: 0, at the end)"),
    "--ema-decay": ("ema_decay", float, "evaluate an EMA of G's weights (e.g. 0.999)"),
    "--ema-start": ("ema_start", whole_number,
                    "steps before the EMA starts averaging (default: 0)"),
    "--data-root": ("data_root", path_arg,
                    "folder of MNIST / CIFAR-10 / image data (default: data)"),
}
OPTION_FLAGS = ("prior", "cond", "backbone", "dataset", "loss", "reg", "augment")


class GivenOnce(argparse.Action):
    """Store a flag's value; giving the flag twice is a usage error (a second list would
    otherwise silently replace the first)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} is given twice (valid: once; {option_string} "
                         "takes a list)" if self.metavar == "SEEDS" else
                         f"{option_string} is given twice (valid: once)")
        setattr(namespace, self.dest, values)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
        "--config", type=path_arg, help="TOML file of run settings, or a run's config.json"
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
    run.add_argument("--inception-weights", type=path_arg, metavar="PATH",
                     help="Inception weights file for fid_inception (default: "
                     "$HARNESS_INCEPTION_WEIGHTS, else the torch hub cache)")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    run.add_argument("--seeds", metavar="SEEDS", action=GivenOnce,
                     help="train several seeds, e.g. 0-9 or 0,3,7: one run directory each "
                     "(given once: a list, not repeated)")
    run.add_argument("--vectorise", choices=("auto", "yes", "no"), action=GivenOnce,
                     help="with --seeds or several --resume: train the seeds together in one "
                     "vectorised step (yes), one after another (no), or auto (default: "
                     "together on CUDA when the composition allows, one after another on the "
                     "CPU, where together measured no faster)")
    run.add_argument("--resume", type=path_arg, nargs="+", metavar="RUN_DIR",
                     help="continue interrupted runs from their last checkpoints (several: "
                     "one composition, different seeds, trained together)")

    plugins = commands.add_parser("plugins", help="list registered plugins by family")
    plugins.add_argument("--verbose", "-v", action="store_true", help="show every option")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    board = commands.add_parser("leaderboard", help="aggregate runs: mean ± std over seeds")
    board.add_argument("runs", nargs="*", type=path_arg, help="run dirs or folders of runs")
    board.add_argument("--results", type=path_arg, help="folder of runs (default: results)")
    board.add_argument("--csv", type=path_arg, help="also write the table as CSV")
    board.add_argument("--group-by", help="comma-separated columns (default: every config field)")
    board.add_argument("--compare", metavar="SUITE",
                       help="show a paper's published numbers beside ours (registry.toml suites,"
                       " e.g. liu2020-table1; 'all' for every suite)")
    board.add_argument("--stat", choices=["std", "sem"], default="std",
                       help="spread over seeds shown after ± (default: std)")
    board.add_argument("--evaluation", choices=["original", "latest"], default="original",
                       help="a run's values of its final checkpoint: those of its own "
                       "evaluation (metrics.json; harness eval's add only new keys), or the "
                       "latest harness eval's where it has the key (default: original)")
    board.add_argument("--markdown", type=path_arg, metavar="PATH",
                       help="also write the table (and the comparison) as Markdown")
    board.add_argument("--improvement-over", metavar="COLUMN=VALUE",
                       help="the probability that each group improves on the group with "
                       "COLUMN=VALUE and the same other settings, e.g. cond=none")
    add_analysis_parsers(commands)
    add_suite_parser(commands)
    add_parsers(commands)
    return parser


def flag_values(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` settings (a config file's, or {}) updated with the flags given on the line."""
    from harness.config import parse_assignments, parse_metric_options

    values = dict(base)
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
        unused = [m for m in values.get("metric_options", {}) if m not in values["metrics"]]
        if unused and isinstance(values["metric_options"], dict):
            # options the file gives metrics that --metrics leaves out belong to those metrics
            values["metric_options"] = {
                m: o for m, o in values["metric_options"].items() if m not in unused}
            print(f"note: --metrics leaves out {', '.join(unused)} of {args.config}; "
                  "its metric_options for them are not used", file=sys.stderr)
    for name in OPTION_FLAGS:
        pairs = getattr(args, f"{name}_opt")
        if pairs:
            values[f"{name}_options"] = {
                **values.get(f"{name}_options", {}), **parse_assignments(pairs, f"--{name}-opt")
            }
    metric_options = {m: dict(o) for m, o in values.get("metric_options", {}).items()}
    for metric, given in parse_metric_options(args.metric_opt, metric_option_owners).items():
        metric_options.setdefault(metric, {}).update(given)
    if metric_options:
        values["metric_options"] = metric_options
    if args.no_progress:
        values["progress"] = False
    if args.download:
        values["download"] = True
    return values


def config_from_args(args: argparse.Namespace, pm: PluginManager) -> RunConfig:
    from harness.build import with_component_defaults
    from harness.config import INCEPTION_WEIGHTS_ENV, load_config_file, make_config

    values = flag_values(args, load_config_file(args.config) if args.config else {})
    config = make_config(with_component_defaults(values, pm))
    if args.inception_weights:
        os.environ[INCEPTION_WEIGHTS_ENV] = str(args.inception_weights)
    return config


def resume_config(args: argparse.Namespace, directory: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's saved config with the flags given beside ``--resume`` applied, and the
    changes ``{field: [old, new]}``. Flags that would change the run are refused: only
    those that extend it (``--steps``, larger) or observe it may differ."""
    from harness import results
    from harness.config import INCEPTION_WEIGHTS_ENV, RESUMABLE, make_config

    if args.config:
        raise HarnessError("--config cannot be combined with --resume: a run resumes with its "
                           f"own {directory / results.CONFIG}")
    saved = read_run_file(directory, results.CONFIG)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise HarnessError(f"--resume {directory}: {results.CONFIG} holds no run config")
    old = make_config(saved["config"])
    new = make_config(flag_values(args, old.model_dump(mode="json")))
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    changed = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
    refused = [k for k in changed if k not in RESUMABLE]
    if refused:
        flags = ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in refused)
        raise HarnessError(
            f"--resume {directory}: flags would change the run ({flags}); with --resume only "
            "--steps (more than before) and settings that do not change results may be given: "
            f"{', '.join(sorted(RESUMABLE - {'steps'}))}"
        )
    if new.steps < old.steps:
        raise HarnessError(f"--resume {directory}: --steps {new.steps} is fewer than the run's "
                           f"{old.steps} (valid: {old.steps} or more)")
    if args.inception_weights:
        os.environ[INCEPTION_WEIGHTS_ENV] = str(args.inception_weights)
    return new, changed


def read_run_file(directory: Path, name: str) -> Any:
    from harness import results

    try:
        return results.read_json(directory / name)
    except FileNotFoundError:
        raise HarnessError(f"--resume {directory}: no {name}; not a run directory") from None
    except (OSError, ValueError) as exc:
        reason = one_line(exc)
        raise HarnessError(f"--resume {directory}: cannot read {name}: {reason}") from None


def command_run(args: argparse.Namespace) -> int:
    from harness import results, seeds
    from harness.config import make_config

    pm = get_plugin_manager()
    if args.resume and args.seeds is not None:
        raise HarnessError("--seeds cannot be combined with --resume (valid: one of them; the "
                           "resumed run directories fix their seeds)")
    chosen = seeds.parse_seeds(args.seeds) if args.seeds is not None else None
    several = len(args.resume) > 1 if args.resume else len(chosen or []) > 1
    if args.vectorise is not None and not several:
        raise HarnessError(f"--vectorise {args.vectorise}: needs several seeds (valid: with "
                           "--seeds, or --resume with several run directories)")
    vectorise = args.vectorise or "auto"
    if args.resume:
        resolved = [d.resolve() for d in args.resume]
        if len(set(resolved)) < len(resolved):  # before locking: the lock would refuse itself
            raise HarnessError("--resume: a run directory is given twice (valid: distinct runs)")
        with contextlib.ExitStack() as locks:
            configs, resumes = [], []
            for directory in args.resume:
                config, changed = resumable(args, directory, locks)
                configs.append(config)
                resumes.append({"changed": changed})
            check_group(configs, args.resume)
            paths, code = seeds.train_group(configs, pm, vectorise=vectorise,
                                            directories=args.resume, resumes=resumes)
    else:
        config = config_from_args(args, pm)
        if args.seeds is not None and args.seed is not None:
            raise HarnessError("--seed and --seeds cannot be combined (valid: one of them)")
        chosen = chosen or [config.seed]
        configs = [config if s == config.seed else
                   make_config({**config.model_dump(mode="json"), "seed": s}) for s in chosen]
        results.check_output_dir(config.out)
        paths, code = seeds.train_group(configs, pm, vectorise=vectorise)
    print_results(paths)
    return code


def resumable(args: argparse.Namespace, directory: Path, locks: contextlib.ExitStack
              ) -> tuple[RunConfig, dict[str, Any]]:
    """Lock a run directory given to ``--resume`` and check it can be resumed; its config
    with the flags given beside ``--resume`` applied, and what they change."""
    from harness import results

    results.require_run_dir(directory, "--resume")
    # checked before the lock file is made in it (a refused directory stays untouched), and
    # again once it is locked (another process may have changed it meanwhile)
    read_run_file(directory, results.CONFIG)
    check_status(directory, read_run_file(directory, results.RUN))
    locks.enter_context(results.RunLock(directory))
    check_status(directory, read_run_file(directory, results.RUN))
    return resume_config(args, directory)


def check_status(directory: Path, info: Any) -> None:
    """``run.json``'s ``info`` must record a resumable run with its checkpoint in place."""
    from harness import results

    if not isinstance(info, dict):
        raise HarnessError(f"--resume {directory}: {results.RUN} holds no run status")
    status = info.get("status")
    if status == "finished":
        raise HarnessError(
            f"--resume {directory}: this run already finished (valid: a run that is "
            "interrupted, failed or was killed while running; to train longer, start a "
            "new run with more --steps)")
    if status not in ("interrupted", "failed", "running"):
        raise HarnessError(f"--resume {directory}: {results.RUN} has status {status!r} "
                           "(valid: interrupted, failed, running)")
    kept = info.get("checkpoint_step")
    if kept is not None and not (directory / results.CHECKPOINT).is_file():
        raise HarnessError(
            f"--resume {directory}: {results.RUN} records a checkpoint of step {kept}, "
            f"but {results.CHECKPOINT} is missing (valid: restore it, or start a new run)")


def check_group(configs: list[RunConfig], directories: list[Path]) -> None:
    """Run directories resumed together must be one composition with different seeds."""
    first = configs[0].model_dump(mode="json", exclude={"seed"})
    for config, directory in zip(configs[1:], directories[1:], strict=True):
        other = config.model_dump(mode="json", exclude={"seed"})
        differing = sorted(k for k in first if first[k] != other[k])
        if differing:
            raise HarnessError(
                f"--resume {directory}: differs from {directories[0]} in {', '.join(differing)} "
                "(valid: runs resumed together differ only in seed; resume the others apart)")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) < len(seeds):
        raise HarnessError("--resume: two run directories have the same seed (valid: one run "
                           "per seed)")


def print_results(directories: list[Path]) -> None:
    """The finished runs' leaderboard (mean ± std over seeds) and the published rows."""
    from harness import leaderboard, results

    finished = [d for d in directories if results.run_status(d) == "finished"]
    if not finished:
        return
    frame, metrics = leaderboard.load_runs(finished)
    table = leaderboard.aggregate(frame, metrics)
    print(leaderboard.render(table, metrics))
    print_published(frame, metrics, shipped_suites("all"))


def shipped_suites(name: str) -> list[Any]:
    """The shipped suite ``name``, or all of them for ``all``; an unknown name is an error."""
    from harness import suites

    everything = suites.registry_suites()
    return list(everything.values()) if name == "all" else [suites.get_suite(name, everything)]


def print_published(frame: Any, metrics: list[str], chosen: list[Any],
                    group_by: list[str] | None = None) -> Any:
    """Print the published numbers of the ``chosen`` suites' rows that the runs' groups
    follow; return the comparison frame (None when there are no runs)."""
    from harness import published

    if frame.empty:
        return None
    comparison = published.compare(frame, metrics, chosen,
                                   published.directions(metrics, get_plugin_manager()),
                                   group_by)
    if not comparison.empty:
        print("\n" + published.render(comparison))
    elif len(chosen) == 1:
        print(f"\n(no run follows a row of {chosen[0].name}; its rows: "
              f"{', '.join(chosen[0].rows)})")
    return comparison


def command_plugins(args: argparse.Namespace) -> int:
    """List every plugin: components by family, then the lifecycle plugins (loggers,
    figures). Only ``--verbose`` and ``--json`` import the components' modules (for their
    options); one that cannot be imported or is no subclass of its family's base class is
    listed with the reason instead."""
    from harness.hookspecs import FAMILIES

    pm = get_plugin_manager()
    detailed = args.verbose or args.json
    listing: dict[str, Any] = {}
    for family in FAMILIES:
        listing[family] = []
        for name, entry in pm.registry(family).items():
            item: dict[str, Any] = {"name": name, "provider": entry.provider}
            if detailed:
                item.update(component_details(family, name, entry))
            listing[family].append(item)
    lifecycle = [{"name": p.name, "provider": p.provider, "hooks": p.hooks,
                  "help": summary(p.doc)} for p in pm.lifecycle_plugins()]
    if args.json:
        print(json.dumps({"plugins": listing, "lifecycle": lifecycle, "errors": pm.load_errors},
                         indent=2, default=str))
        return 0
    for family, items in listing.items():
        print(f"{family}:")
        for item in items:
            print(f"  {item['name']:<18} {item['provider']}")
            if not args.verbose:
                continue
            if "error" in item:
                print(f"      unusable: {item['error']}")
                continue
            if item["help"]:
                print(f"      {item['help']}")
            for opt in item["options"]:
                default = "required" if opt["required"] else f"default {opt['default']}"
                print(f"      {opt['form']} ({default})  {opt['help']}".rstrip())
    print("lifecycle plugins:")
    for plugin in lifecycle:
        hooks = ", ".join(hook.removeprefix("harness_") for hook in plugin["hooks"])
        print(f"  {plugin['name']:<18} {plugin['provider']}  hooks: {hooks}")
        if args.verbose and plugin["help"]:
            print(f"      {plugin['help']}")
    if args.verbose:
        print("Options: harness run --prior NAME --prior-opt KEY=VALUE (likewise --cond-opt, "
              "--backbone-opt, ...), --metric-opt METRIC.KEY=VALUE; executors: harness suite "
              "--executor NAME --executor-opt KEY=VALUE. Values are read as JSON when they "
              'parse (numbers, true/false, null, ["a", "b"] lists), else as text.')
    return 0


def component_details(family: str, name: str, entry: Any) -> dict[str, Any]:
    """A component's help and options, each with the form the CLI takes it in; or the
    one-line reason it cannot be loaded (``{"error": ...}``)."""
    try:
        cls = entry.load()
    except PluginError as exc:
        return {"error": one_line(exc)}
    flag = family_flag(family)
    options = []
    for key, f in cls.Options.model_fields.items():
        value = f"{name}.{key}" if family == "metrics" else key
        form = f"{value}=<{_type_name(f.annotation)}>"
        required = f.is_required()
        options.append({
            "name": key, "type": _type_name(f.annotation),
            "default": None if required else cli_value(f.get_default(call_default_factory=True)),
            "required": required, "help": f.description or "",
            "form": f"--{flag}-opt {form}" if flag else f"{form} (no flag sets it)",
        })
    return {"help": summary(cls.__doc__), "options": options}


def family_flag(family: str) -> str | None:
    """The flag naming a component of ``family`` (``cond`` for conditioners: ``--cond`` and
    ``--cond-opt``), ``executor`` for ``harness suite``; None for a family whose components
    take no options on the command line (loggers)."""
    from harness.config import COMPONENT_FIELDS

    if family in ("metrics", "executors"):
        return family.removesuffix("s")
    return next((fld for fld, fam in COMPONENT_FIELDS.items() if fam == family), None)


def cli_value(value: Any) -> str:
    """``value`` as ``--*-opt KEY=VALUE`` reads it: text bare, a list of plain values
    comma-separated, anything else as JSON."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and value and all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value)
            and not any("," in str(v) for v in value)):
        return ",".join(map(str, value))
    return json.dumps(value, default=str)


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _type_name(annotation: Any) -> str:
    """An option's type as the CLI reads it: ``int``, ``cnn|resnet18`` for a choice,
    ``color|translation|cutout,...`` for a list and ``float,float`` for a pair (comma-separated),
    ``float|null``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "|".join(map(str, args))
    if origin in (types.UnionType, typing.Union):
        return "|".join(_type_name(arg) for arg in args)
    if origin is list:
        return f"{_type_name(args[0]) if args else 'value'},..."
    if origin is tuple:
        return ",".join(_type_name(arg) for arg in args)
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def command_leaderboard(args: argparse.Namespace) -> int:
    from harness import leaderboard, published

    paths = list(args.runs) or [args.results or Path("results")]
    if args.results and args.runs:
        paths.append(args.results)
    if args.csv and args.markdown and os.path.realpath(args.csv) == os.path.realpath(
            args.markdown):
        raise HarnessError(f"--csv {args.csv} and --markdown {args.markdown} name the same "
                           "file (valid: two different paths)")
    for flag, path in (("--csv", args.csv), ("--markdown", args.markdown)):
        if path is not None:  # before any output
            leaderboard.check_export(flag, path)
    frame, metrics = leaderboard.load_runs(paths, evaluation=args.evaluation)
    group_by = [c.strip() for c in args.group_by.split(",")] if args.group_by else None
    if args.compare and group_by and "dataset" not in group_by:
        raise HarnessError(f"--compare {args.compare} matches rows by dataset and method: "
                           f"--group-by {args.group_by} must include dataset")
    chosen = shipped_suites(args.compare) if args.compare else None  # before any output
    table = leaderboard.aggregate(frame, metrics, group_by)
    gains = (leaderboard.improvements(frame, metrics, published.directions(
        metrics, get_plugin_manager()), args.improvement_over, group_by)
        if args.improvement_over and not frame.empty else None)  # refused before any output
    print(leaderboard.render(table, metrics, args.stat))
    if gains is not None:
        print("\n" + leaderboard.render_improvements(gains))
    comparison = print_published(frame, metrics, chosen, group_by) if chosen else None
    if args.csv:
        write_output(args.csv, "--csv", table.to_csv(index=False))
    if args.markdown:
        text = table.to_markdown(index=False) + "\n"
        if comparison is not None and not comparison.empty:
            text += "\n" + published.to_markdown(comparison)
        write_output(args.markdown, "--markdown", text)
    return 0


def write_output(path: Path, flag: str, text: str) -> None:
    """Write a table the user asked for, atomically; a one-line error if it cannot be."""
    from harness import results

    try:
        results.atomic_write_bytes(Path(path), text.encode())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise HarnessError(f"{flag} {path}: cannot write the table: {reason} "
                           "(valid: a file path in a writable folder)") from None
    print(f"wrote {path}", file=sys.stderr)


COMMANDS = {"run": command_run, "plugins": command_plugins, "leaderboard": command_leaderboard}


# ----------------------------------------------------------------------------- GM-GAN analyses
def int_arg(low: int, high: int) -> Any:
    """An argparse type: a whole number in [low, high], else a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = whole_number(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number (valid: {low} to {high})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range (valid: {low} to {high})")
        return value

    return parse


def scales_arg(text: str) -> list[float]:
    from harness.analysis import parse_scales

    try:
        return parse_scales(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_analysis_parsers(commands: Any) -> None:
    """``harness cluster`` and ``harness tradeoff``: GM-GAN's analyses of a trained run."""
    cluster = commands.add_parser(
        "cluster", help="GM-GAN Algorithm 2: cluster real data with a trained mixture-prior run",
        description="GM-GAN's Algorithm 2 on a trained run with a mixture prior (e.g. --prior "
        "gmm): M samples per Gaussian from its generator, a classifier of them by Gaussian, "
        "real data clustered by its argmax; ACC, NMI, purity against the true labels. Writes "
        "cluster.json and cluster_assignments.csv into RUN_DIR.",
    )
    cluster.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="a run directory")
    cluster.add_argument("--samples-per-component", type=int_arg(1, 100_000), default=1000,
                         metavar="M", help="generated samples per Gaussian (default: 1000)")
    cluster.add_argument("--subset", type=int_arg(1, 10**9), metavar="N",
                         help="real examples clustered: a seeded random subset (default: all)")
    tradeoff = commands.add_parser(
        "tradeoff", help="GM-GAN's quality-diversity trade-off over the prior's sampling scale",
        description="The run's metrics on samples drawn with the prior's spread scaled by each "
        "sigma (any prior); writes tradeoff.csv and tradeoff.png (quality against diversity, "
        "one point per sigma) into RUN_DIR and prints the table.",
    )
    tradeoff.add_argument("run_dir", type=path_arg, metavar="RUN_DIR", help="a run directory")
    tradeoff.add_argument("--scales", type=scales_arg, default="0.25,0.5,0.75,1,1.5",
                          help="comma-separated sampling scales sigma > 0 "
                          "(default: 0.25,0.5,0.75,1,1.5)")
    tradeoff.add_argument("--eval-samples", type=int_arg(1, 10**9), metavar="N",
                          help="generated samples per metric (default: the run's)")
    for sub in (cluster, tradeoff):
        sub.add_argument("--device", choices=["cpu", "cuda", "auto"],
                         help="where to run G (default: the run's device)")
        sub.add_argument("--data-root", type=path_arg, help="folder of file-backed datasets "
                         "(default: the run's)")
        sub.add_argument("--threads", type=int_arg(1, 1024), help="torch CPU threads")


def restore_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The flags that change where a restored run computes, not its results."""
    names = ("device", "data_root", "threads")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def command_cluster(args: argparse.Namespace) -> int:
    from harness import analysis, restore, results

    what, directory = "harness cluster", args.run_dir
    analysis.check_mixture_config(restore.read_saved_config(directory, what), directory, what)
    with restore.locked_run(directory, what, restore_overrides(args)) as run:
        summary, index, predicted, true = analysis.cluster_run(
            run, args.samples_per_component, args.subset, what
        )
        summary["run_status"] = results.run_status(directory)
        paths = analysis.write_cluster(directory, summary, index, predicted, true)
    if "note" in summary:
        print(f"note: {summary['note']}", file=sys.stderr)
    print(analysis.format_cluster(summary))
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def command_tradeoff(args: argparse.Namespace) -> int:
    from harness import analysis, restore

    what, directory = "harness tradeoff", args.run_dir
    with restore.locked_run(directory, what, restore_overrides(args)) as run:
        if args.eval_samples is not None:
            run.config = run.config.model_copy(update={"eval_samples": args.eval_samples})
            restore.check_eval_memory(run.config, run.dataset)
        rows, unaffected = analysis.tradeoff(
            run, args.scales, warn=lambda text: print(f"warning: {one_line(text)}",
                                                      file=sys.stderr))
        if not any(len(row) > 1 for row in rows):
            names = ", ".join(run.metrics)
            raise HarnessError(f"{what} {directory}: no metric of this run ({names}) has a value "
                               "that depends on the generated samples (valid: a run with e.g. "
                               "modes_2d, fid_digits or fid_inception)")
        eval_samples = run.config.eval_samples
        title = (f"{directory.name}: quality vs diversity over the sampling scale σ "
                 f"({eval_samples} samples)")
        paths = analysis.write_tradeoff(directory, rows, eval_samples, title)
    print(analysis.format_table(rows))
    if unaffected:
        values = ", ".join(f"{k}={v:.4g}" for k, v in unaffected.items())
        print(f"not affected by the scale: {values}")
    print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


COMMANDS.update(cluster=command_cluster, tradeoff=command_tradeoff)


# ----------------------------------------------------------------------------- suites
def add_suite_parser(commands: Any) -> None:
    suite = commands.add_parser(
        "suite", help="run a paper's table (a registry suite) and compare with its numbers",
        description="Run a suite's grid (rows x datasets x seeds) through an executor, skipping "
        "runs already finished under --out and resuming interrupted ones, then print and write "
        "its leaderboard with the published numbers beside the measured ones.",
        epilog="Suites: harness suite --list. Executors and their options: "
        "harness plugins --verbose",
    )
    suite.add_argument("name", nargs="?", metavar="NAME", help="suite, e.g. liu2020-table1")
    suite.add_argument("--list", action="store_true", help="list the suites and their profiles")
    suite.add_argument("--file", type=path_arg, metavar="TOML",
                       help="read suites from this file's [suite.NAME] tables (the schema of the "
                       "harness's registry.toml) instead of the shipped ones")
    suite.add_argument("--profile", default="quick",
                       help="budget: quick (about 20 min on 2 CPU cores) or paper (the "
                       "published schedule); default: quick")
    suite.add_argument("--seeds", type=int_arg(1, 1000), metavar="N", action=GivenOnce,
                       help="seeds 0..N-1 per row and dataset (default: the profile's)")
    suite.add_argument("--vectorise", choices=("auto", "yes", "no"), default="auto",
                       help="train each row's new seeds together as one vectorised job: yes, "
                       "no, or auto (default: on CUDA only; see harness run --vectorise)")
    suite.add_argument("--executor", default="local",
                       help="local (default), pool, ray, submitit or a plugin's")
    suite.add_argument("--executor-opt", action="append", default=[], metavar="KEY=VALUE",
                       help="option of the executor, e.g. address=auto (repeatable)")
    suite.add_argument("--jobs", type=int_arg(1, 4096), metavar="N",
                       help="runs at once (pool: default one per core)")
    suite.add_argument("--out", type=path_arg,
                       help="results folder of the suite (default: results/NAME-PROFILE)")
    suite.add_argument("--dry-run", action="store_true",
                       help="list what would run, resume or be skipped, then stop")
    suite.add_argument("--data-root", type=path_arg, help="folder of MNIST / CIFAR-10 data")
    suite.add_argument("--download", action="store_true",
                       help="let torchvision download a missing dataset into --data-root")
    suite.add_argument("--device", choices=["cpu", "cuda", "auto"], help="where runs train")
    suite.add_argument("--inception-weights", type=path_arg, metavar="PATH",
                       help="Inception weights file for fid_inception")
    suite.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def command_suite(args: argparse.Namespace) -> int:
    from harness import results, suite_run, suites
    from harness.config import INCEPTION_WEIGHTS_ENV, parse_assignments

    everything = suites.suites_file(args.file) if args.file else suites.registry_suites()
    if args.list:
        print(suite_run.format_list(everything))
        return 0
    if not args.name:
        raise HarnessError(f"harness suite needs a NAME (valid: {', '.join(everything)}; "
                           "harness suite --list describes them)")
    suite = suites.get_suite(args.name, everything)
    if args.profile not in suite.profiles:
        raise HarnessError(f"unknown profile {args.profile!r} of suite {suite.name} "
                           f"(valid: {', '.join(suite.profiles)})")
    out = (args.out or Path("results") / f"{suite.name}-{args.profile}").absolute()
    results.check_output_dir(out)
    pm = get_plugin_manager()
    executor_options = parse_assignments(args.executor_opt, "--executor-opt")
    suite_run.check_executor(pm, args.executor, executor_options, args.jobs)
    env = {INCEPTION_WEIGHTS_ENV: str(args.inception_weights.absolute())} \
        if args.inception_weights else {}
    os.environ.update(env)
    overrides: dict[str, Any] = {"out": str(out), "progress": False}
    if args.download:
        overrides["download"] = True
    for name in ("data_root", "device"):
        if getattr(args, name) is not None:
            overrides[name] = str(getattr(args, name))
    return suite_run.command(suite, args.profile, args.seeds, out, overrides, env, pm,
                             executor=(args.executor, executor_options, args.jobs),
                             dry_run=args.dry_run, show_progress=not args.no_progress,
                             vectorise=args.vectorise)


COMMANDS.update(suite=command_suite)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already reported
        return exc.code if isinstance(exc.code, int) else 2
    for warning in get_plugin_manager().load_errors.values():
        print(f"warning: {one_line(warning)}", file=sys.stderr)
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        # SIGTERM as Ctrl-C from the start: set-up and clean-up run as for a Ctrl-C (training
        # and suites install their own handlers inside, restoring these after)
        with on_stop_signals(raise_interrupt):
            return handler(args)
    except HarnessError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a signal outside training, or a suite's third
        return report_interrupt(exc)
    except BrokenPipeError:  # the reader went away (`harness leaderboard | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
