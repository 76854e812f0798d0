"""``harness suite``: plan a suite's runs against its results folder, run the missing ones
through an executor, and write the suite's leaderboard.

Resuming is by identity: a job whose configuration hash (which includes the seed) already
has a finished run under ``--out`` is skipped; an interrupted run, or one whose process died
(status ``running``, lock free), is resumed from its last checkpoint; a failed run is run
again in a new directory (the failed one is kept and never counted).
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness import results
from harness.api import Executor, Options
from harness.config import RunConfig, make_config
from harness.errors import ConfigError, HarnessError, one_line
from harness.jobs import Job, Outcome
from harness.manager import PluginManager
from harness.signals import on_stop_signals
from harness.suites import Suite

Action = Literal["skip", "resume", "new", "busy"]
LOGS = ".suite-logs"
"""Folder under ``--out`` with each job's stdout and stderr (``<dataset>-<row>-s<seed>.log``)."""


@dataclass
class Planned:
    """One job of a suite and what to do about it."""

    key: str
    dataset: str
    row: str
    seed: int
    config: RunConfig
    action: Action
    run_dir: Path | None = None
    """The finished run (skip), the one to continue (resume), or the one in use (busy)."""
    reason: str = ""


@dataclass
class Existing:
    run_dir: Path
    status: str
    started: str
    step: int | None
    holder: str | None


def index_runs(out: Path) -> dict[str, list[Existing]]:
    """Run directories under ``out`` by configuration hash; unreadable ones are ignored
    (``harness leaderboard`` names them)."""
    found: dict[str, list[Existing]] = {}
    if not out.is_dir():
        return found
    for run_json in sorted(out.glob(f"*/{results.RUN}")):
        run_dir = run_json.parent
        try:
            info = results.read_json(run_json)
            saved = results.read_json(run_dir / results.CONFIG)
            identity = make_config(saved["config"]).short_hash()
        except (OSError, ValueError, TypeError, KeyError, HarnessError):
            continue
        if not isinstance(info, dict):
            continue
        found.setdefault(identity, []).append(Existing(
            run_dir, str(info.get("status")), str(info.get("started", "")),
            info.get("step"), results.lock_holder(run_dir)))
    return found


def decide(existing: list[Existing]) -> tuple[Action, Path | None, str]:
    """What to do for a job given the runs of its identity already under ``--out``."""
    finished = [e for e in existing if e.status == "finished"]
    if finished:
        first = min(finished, key=lambda e: e.started)
        return "skip", first.run_dir, f"finished in {first.run_dir.name}"
    busy = [e for e in existing if e.holder]
    if busy:
        return "busy", busy[0].run_dir, f"in use by {busy[0].holder}"
    stopped = [e for e in existing if e.status in ("interrupted", "running")]
    if stopped:
        last = max(stopped, key=lambda e: e.started)
        where = f"step {last.step}" if last.step is not None else "its start"
        return "resume", last.run_dir, f"{last.status} at {where}: resume"
    if existing:
        return "new", None, f"{len(existing)} earlier run(s) failed: run again"
    return "new", None, "not run yet"


def plan(suite: Suite, profile: str, seeds: int, values_for: Any, out: Path) -> list[Planned]:
    """Every job of the suite's grid (datasets x rows x seeds), each with its action.

    ``values_for(dataset, row, seed)`` gives a job's ``RunConfig`` settings.
    """
    existing = index_runs(out)
    jobs = []
    for dataset in suite.profile_datasets(profile):
        for row in suite.rows:
            for seed in range(seeds):
                config = make_config(values_for(dataset, row, seed))
                action, run_dir, reason = decide(existing.get(config.short_hash(), []))
                jobs.append(Planned(f"{dataset}/{row}/s{seed}", dataset, row, seed, config,
                                    action, run_dir, reason))
    return jobs


def format_plan(jobs: list[Planned], together: set[str] | None = None) -> str:
    """``--dry-run``: one line per job (action, key, why), one per group of new seeds that
    would train together (``together``, as ``make_jobs`` groups them), then
    ``plan_summary``."""
    from harness.seeds import format_seeds

    width = max(len(job.key) for job in jobs)
    lines = [f"{job.action:<6} {job.key:<{width}}  {job.reason}" for job in jobs]
    for (dataset, row), group in new_seed_groups(jobs, together or set()).items():
        lines.append(f"together {dataset}/{row}: seeds "
                     f"{format_seeds([p.seed for p in group])} as one vectorised job")
    return "\n".join([*lines, plan_summary(jobs)])


def plan_summary(jobs: list[Planned]) -> str:
    counts = {a: sum(job.action == a for job in jobs) for a in ("new", "resume", "skip", "busy")}
    return (f"{len(jobs)} runs: {counts['new']} to start, {counts['resume']} to resume, "
            f"{counts['skip']} finished, {counts['busy']} in use elsewhere")


def make_job(planned: Planned, out: Path, env: dict[str, str]) -> Job:
    log = out / LOGS / (planned.key.replace("/", "-") + ".log")
    resume = str(planned.run_dir) if planned.action == "resume" else None
    return Job(planned.key, planned.config.model_dump(mode="json"), resume, str(log), env)


def composition(config: RunConfig) -> str:
    """The hash of ``config`` without its seed: runs that differ only in seed share it."""
    return config.model_copy(update={"seed": 0}).short_hash()


def new_seed_groups(jobs: list[Planned], together: set[str]
                    ) -> dict[tuple[str, str], list[Planned]]:
    """The new runs whose composition is in ``together``, by (dataset, row)."""
    groups: dict[tuple[str, str], list[Planned]] = {}
    for planned in jobs:
        if planned.action == "new" and composition(planned.config) in together:
            groups.setdefault((planned.dataset, planned.row), []).append(planned)
    return groups


def make_jobs(jobs: list[Planned], out: Path, env: dict[str, str],
              together: set[str]) -> list[Job]:
    """The executor's jobs for the plan's new and resumed runs. New runs whose composition
    is in ``together`` (``check_compositions``) become one job per (dataset, row), its seeds
    trained as one vectorised group; every other run is a job of its own."""
    from harness.seeds import format_seeds

    todo = [j for j in jobs if j.action in ("new", "resume")]
    groups = new_seed_groups(jobs, together)
    made = []
    for planned in todo:
        group = groups.get((planned.dataset, planned.row), [])
        if planned not in group:
            made.append(make_job(planned, out, env))
        elif planned is group[0]:
            first = make_job(planned, out, env)
            seeds = format_seeds([p.seed for p in group])
            log = out / LOGS / f"{planned.dataset}-{planned.row}-s{seeds}.log"
            made.append(dataclasses.replace(first, log=str(log), together=tuple(
                (p.key, p.config.model_dump(mode="json")) for p in group[1:])))
    return made


# ----------------------------------------------------------------------------- running
class SuiteProgress:
    """Runs done / running / failed and an ETA, on stderr, with rich."""

    def __init__(self, total: int, slots: int, show: bool) -> None:
        self.total, self.slots, self.show = total, slots, show
        self.done = self.failed = 0
        self.progress = Progress(
            TextColumn("[bold]suite"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not show,
        )
        self.task = self.progress.add_task("suite", total=total, info="")
        self.update()

    def update(self) -> None:
        running = min(self.slots, self.total - self.done - self.failed)
        info = f"running {running}, failed {self.failed}"
        self.progress.update(self.task, completed=self.done + self.failed, info=info)

    def record(self, outcome: Outcome) -> None:
        if outcome.status == "finished":
            self.done += 1
        else:
            self.failed += outcome.status == "failed"
            if outcome.status == "interrupted":
                self.total -= 1
        line = f"{outcome.status} {outcome.key} ({outcome.seconds:.0f} s)"
        if outcome.error:
            line += f": {outcome.error}"
        self.progress.console.print(line, highlight=False, markup=False)
        self.update()


class Stopper:
    """SIGINT and SIGTERM while a suite runs: the first asks the executor to stop its runs at
    their next step boundary (they checkpoint), the second to stop them at once, a third
    gives up waiting (``KeyboardInterrupt``). ``handle`` is installed with
    ``on_stop_signals`` until the executor is closed."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.signal: str | None = None
        self.count = 0

    def handle(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.signal = self.signal or signal.Signals(signum).name
        if self.count > 2:
            raise KeyboardInterrupt
        print("\nstopping (" + signal.Signals(signum).name + "): " + (
            "the running runs checkpoint and stop; a second signal stops them at once"
            if self.count == 1 else "the running runs stop at once, from their last "
            "checkpoint; a third signal stops waiting for them"), file=sys.stderr)
        self.executor.stop()


def execute_jobs(executor: Executor, jobs: list[Job], show_progress: bool,
                 stopper: Stopper) -> list[Outcome]:
    """Submit every job and collect the outcomes as they finish; once ``stopper`` has seen
    a signal, submit no more and collect the stopping runs' outcomes."""
    outcomes: list[Outcome] = []
    runs = sum(len(job.run_keys()) for job in jobs)
    progress = SuiteProgress(runs, executor.slots, show_progress)
    pending: dict[Future[Outcome], Job] = {}
    with progress.progress:
        for job in jobs:
            if stopper.count:
                break
            pending[executor.submit(job)] = job
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                for outcome in outcome_of(future, pending.pop(future)).runs():
                    if outcome.run_dir or outcome.status != "interrupted":  # not cancelled
                        outcomes.append(outcome)
                        progress.record(outcome)
            progress.update()
    return outcomes


def outcome_of(future: Future[Outcome], job: Job) -> Outcome:
    """A finished future's outcome; an engine error (a lost worker) is a failed outcome for
    each of the job's runs."""
    if future.cancelled():
        status, error = "interrupted", "cancelled before it started"
    else:
        try:
            return future.result()
        except BaseException as exc:  # noqa: BLE001 - the engine's failure, e.g. a dead worker
            status, error = "failed", one_line(f"{type(exc).__name__}: {exc}")
    members = tuple(Outcome(key, status, None, error) for key in job.run_keys())  # type: ignore[arg-type]
    return Outcome(job.key, status, None, error, members=members if job.together else ())  # type: ignore[arg-type]


def build_executor(pm: PluginManager, name: str, options: dict[str, Any], jobs: int | None,
                   log_dir: Path) -> Executor:
    """The executor plugin ``name`` (checked by ``check_executor``); a missing engine (Ray,
    submitit) is a one-line ``ConfigError`` naming the extra to install."""
    cls, opts = check_executor(pm, name, options, jobs)
    return cls(opts, jobs, log_dir)


def check_compositions(jobs: list[Planned], pm: PluginManager, vectorise: str = "no"
                       ) -> set[str]:
    """Build each distinct composition of the plan once, as ``harness run`` would before
    training: every plugin, option, dataset and memory need is checked before any run
    starts. Raises ``HarnessError`` naming the job.

    Returns the compositions (``composition``) whose new seeds train together as one
    vectorised group, by ``vectorise`` as ``harness run --vectorise`` decides it: ``yes``
    every composition that can be vectorised (``harness.replicas.blocker``) and fits in
    memory, ``auto`` those on a CUDA device, ``no`` none."""
    from harness.build import build_run
    from harness.replicas import blocker
    from harness.seeds import check_group_memory

    seen, together = set(), set()
    for job in jobs:
        if job.action == "skip":
            continue
        key = composition(job.config)
        if key in seen:
            continue
        seen.add(key)
        try:
            run = build_run(job.config, pm, notes=False)
        except HarnessError as exc:
            raise ConfigError(f"{job.key}: {one_line(exc)}") from None
        size = sum(j.action == "new" and composition(j.config) == key for j in jobs)
        wanted = vectorise == "yes" or (vectorise == "auto" and run.device.type == "cuda")
        if not wanted or size < 2:
            continue
        reason = blocker(run)
        if reason is None:
            try:
                check_group_memory(run, size)
            except HarnessError:
                reason = f"{size} seeds together would not fit in memory"
            else:
                together.add(key)
                continue
        if vectorise == "yes":
            print(f"note: {job.dataset}/{job.row}: seeds train one per job: {reason}",
                  file=sys.stderr)
    return together


def run_plan(jobs: list[Planned], executor: Executor, out: Path, env: dict[str, str],
             show_progress: bool, stopper: Stopper, together: set[str] | None = None
             ) -> tuple[list[Path], list[Outcome]]:
    """Run the plan's missing jobs (the new seeds of a composition in ``together`` as one
    vectorised job); return the finished run directories (skipped and new) and every run's
    outcome."""
    todo = make_jobs(jobs, out, env, together or set())
    runs = sum(len(job.run_keys()) for job in todo)
    start = time.perf_counter()
    outcomes = execute_jobs(executor, todo, show_progress, stopper) if todo else []
    if todo:
        counts = {s: sum(o.status == s for o in outcomes)
                  for s in ("finished", "interrupted", "failed")}
        counts["not started"] = runs - len(outcomes)
        print(", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {runs} "
              f"run(s) in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    finished = [j.run_dir for j in jobs if j.action == "skip" and j.run_dir]
    finished += [Path(o.run_dir) for o in outcomes if o.status == "finished" and o.run_dir]
    return finished, outcomes


# ----------------------------------------------------------------------------- the command
def format_list(suites: dict[str, Suite]) -> str:
    """``harness suite --list``: each suite, its source, grid and profiles with their size."""
    blocks = []
    for suite in suites.values():
        lines = [f"{suite.name}: {suite.paper}",
                 f"  rows: {', '.join(suite.rows)}; datasets: {', '.join(suite.datasets)}"]
        for name, profile in suite.profiles.items():
            datasets = suite.profile_datasets(name)
            lines.append(f"  --profile {name}: {suite.size(name)} runs "
                         f"({plural(len(suite.rows), 'row')} x {plural(len(datasets), 'dataset')}"
                         f" x {plural(profile.seeds, 'seed')}): {profile.note}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("s" if n != 1 else "")


def check_executor(pm: PluginManager, name: str, options: dict[str, Any],
                   jobs: int | None) -> tuple[type[Executor], Options]:
    """The executor's class and validated options, after checking that it can run ``jobs``
    runs at once (called before anything is planned, and again to build it)."""
    from harness.build import validate_options

    cls = pm.get("executors", name).load()
    opts = validate_options("executor", name, cls, options)
    if jobs is not None and cls.max_jobs is not None and jobs > cls.max_jobs:
        raise ConfigError(f"--jobs {jobs}: executor {name!r} runs at most {cls.max_jobs} at "
                          "a time (valid: --jobs 1, or --executor pool for several at once)")
    return cls, opts


def command(suite: Suite, profile: str, seeds: int | None, out: Path, overrides: dict[str, Any],
            env: dict[str, str], pm: PluginManager, executor: tuple[str, dict[str, Any],
            int | None], dry_run: bool, show_progress: bool, vectorise: str = "auto") -> int:
    """``harness suite``: plan, check, run, then print and write the leaderboard.

    Exit code 0 when every run finished, 1 when some failed (the table shows the rest),
    130 / 143 when stopped by Ctrl-C / SIGTERM (run the same command again to continue).
    """
    from harness.build import with_component_defaults

    seeds = seeds or suite.profiles[profile].seeds

    def values_for(dataset: str, row: str, seed: int) -> dict[str, Any]:
        values = {**suite.config_values(profile, dataset, row, seed), **overrides}
        return with_component_defaults(values, pm, notes=False)

    jobs = plan(suite, profile, seeds, values_for, out)
    together = check_compositions(jobs, pm, vectorise)
    print(f"{suite.name}, profile {profile}: {suite.profiles[profile].note}", file=sys.stderr)
    if dry_run:
        print(format_plan(jobs, together))
        return 0
    for job in jobs:
        if job.action == "busy":
            print(f"warning: {job.key}: {job.run_dir} is {job.reason}; not run now (run the "
                  "suite again once it is free)", file=sys.stderr)
    print(plan_summary(jobs), file=sys.stderr)
    name, options, slots = executor
    engine = build_executor(pm, name, options, slots, out / LOGS)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stopper = Stopper(engine)
        with results.RunLock(out, "results folder", "then run the suite again"), \
                on_stop_signals(stopper.handle):
            try:
                for job in jobs:
                    job.config = job.config.model_copy(update={"threads": engine.threads})
                finished, outcomes = run_plan(jobs, engine, out, env, show_progress, stopper,
                                              together)
            finally:
                engine.close()
            stopped = stopper.signal
            board_paths = write_leaderboard(suite, jobs, finished, out, pm)
    except BaseException:
        engine.close()  # idempotent: released before the lock, or never used
        raise
    unfinished = [o for o in outcomes if o.status != "finished"]
    for outcome in [] if stopped else unfinished:
        where = f" (see {outcome.run_dir})" if outcome.run_dir else ""
        print(f"{outcome.status}: {outcome.key}: {outcome.error}{where}", file=sys.stderr)
    print(f"wrote {', '.join(map(str, board_paths))}", file=sys.stderr)
    if stopped or unfinished:
        print(f"{f'stopped by {stopped}; ' if stopped else ''}run the same command again to "
              "resume the interrupted runs and run the failed and missing ones", file=sys.stderr)
    if stopped:
        return 143 if stopped == "SIGTERM" else 130
    return 1 if unfinished else 0


def write_leaderboard(suite: Suite, jobs: list[Planned], finished: list[Path], out: Path,
                      pm: PluginManager) -> list[Path]:
    """Print the suite's leaderboard and comparison; write ``leaderboard.csv`` (every group,
    mean, std and s.e. per metric), ``comparison.csv`` (one line per published number) and
    ``leaderboard.md`` under ``out``. Only the suite's own finished runs count."""
    from harness import leaderboard, published
    from harness.suites import Match

    frame, metrics = leaderboard.load_runs(finished)
    if not frame.empty:
        by_hash = {job.config.short_hash(): job.row for job in jobs}
        frame.insert(2, "suite_row", [row_of(run_id, by_hash) for run_id in frame["run_id"]])
    table = leaderboard.aggregate(frame, metrics)
    print(leaderboard.render(table, metrics, suite.statistic))
    comparison = published.compare(
        frame, metrics, [suite], published.directions(metrics, pm),
        assign=lambda columns: [Match(suite, columns["dataset"], columns["suite_row"])])
    if not comparison.empty:  # in the suite's order of datasets and rows
        datasets = list(dict.fromkeys([*suite.datasets, *comparison["dataset"]]))
        comparison = comparison.assign(
            order_d=comparison["dataset"].map(datasets.index),
            order_r=comparison["row"].map(list(suite.rows).index),
        ).sort_values(["order_d", "order_r"], kind="stable").drop(columns=["order_d", "order_r"])
        print("\n" + published.render(comparison))
    paths = [out / "leaderboard.csv", out / "comparison.csv", out / "leaderboard.md"]
    results.atomic_write_bytes(paths[0], table.to_csv(index=False).encode())
    results.atomic_write_bytes(paths[1], comparison.to_csv(index=False).encode())
    markdown = ((published.to_markdown(comparison) if not comparison.empty else "")
                + "\n## All metrics\n\n" + (table.to_markdown(index=False) if not table.empty
                                             else "(no finished runs)") + "\n")
    results.atomic_write_bytes(paths[2], markdown.encode())
    return paths


def row_of(run_id: str, by_hash: dict[str, str]) -> str | None:
    """The suite row of a run directory's name (``run_name``: it holds the config hash),
    given the rows by config hash."""
    return next((by_hash[part] for part in run_id.split("-") if part in by_hash), None)
