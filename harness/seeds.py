"""``harness run --seeds``: several seeds of one composition, trained together when it allows.

Each seed gets an ordinary run directory. When the composition can be vectorised
(``harness.replicas.blocker``) the seeds train as one ``Replicas`` group in this process;
otherwise (or with ``--vectorise no``, or on the CPU by default) one after another, with a
note saying why.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from harness import results
from harness.build import available_memory, build_run, busy_cpu
from harness.config import MAX_SEED, RunConfig
from harness.errors import HarnessError, RunFailed, one_line
from harness.manager import PluginManager
from harness.replicas import blocker, rng_state
from harness.run import Run, run_name
from harness.signals import exit_code, report_interrupt, signal_of

MAX_SEEDS = 1000
VECTORISE = ("auto", "yes", "no")
SEEDS_SYNTAX = "e.g. 0-9, 0,3,7 or 0-4,10"


def parse_seeds(text: str) -> list[int]:
    """Seeds from ``text``: comma-separated seeds and inclusive ranges A-B, e.g. ``0-9`` or
    ``0,3,7``. ``HarnessError`` (one line) on bad syntax, a seed outside 0..MAX_SEED, a
    repeated seed or more than ``MAX_SEEDS`` seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", part)
        if not match:
            raise HarnessError(f"--seeds {text!r}: {part.strip()!r} is not a seed or a range "
                               f"A-B ({SEEDS_SYNTAX})")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise HarnessError(f"--seeds {text!r}: range {first}-{last} is empty (valid: A-B "
                               "with A <= B)")
        if last > MAX_SEED or last - first >= MAX_SEEDS:
            raise HarnessError(f"--seeds {text!r}: valid seeds are 0..{MAX_SEED}, at most "
                               f"{MAX_SEEDS} of them")
        seeds.extend(range(first, last + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise HarnessError(f"--seeds {text!r}: seed {repeated[0]} is given twice (valid: "
                           "distinct seeds)")
    if len(seeds) > MAX_SEEDS:
        raise HarnessError(f"--seeds {text!r}: {len(seeds)} seeds (valid: at most {MAX_SEEDS})")
    return seeds


def format_seeds(seeds: list[int]) -> str:
    """``seeds`` as ``parse_seeds`` reads them, consecutive ones as ranges: [0, 1, 2, 5] ->
    ``0-2,5``."""
    parts: list[str] = []
    for _, run in itertools.groupby(enumerate(seeds), key=lambda pair: pair[1] - pair[0]):
        values = [seed for _, seed in run]
        parts.append(str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}")
    return ",".join(parts)


def train_group(
    configs: list[RunConfig], pm: PluginManager, *, vectorise: str = "auto",
    directories: list[Path] | None = None, resumes: list[dict[str, Any] | None] | None = None,
) -> tuple[list[Path], int]:
    """Train ``configs`` (one composition, different seeds): new run directories under each
    config's ``out``, or the given ``directories`` (resumed, already locked by the caller).

    ``vectorise`` (one of ``VECTORISE``): ``yes`` trains the seeds as one ``Replicas`` group
    (``HarnessError`` when the composition cannot be vectorised, or the group would not fit
    in memory), ``no`` one after another, ``auto`` together on CUDA when the composition
    allows and one after another on the CPU (where ``benchmarks/bench_seeds.py`` measured
    0.7-1.25x the throughput of one after another: the 2-D step is compute-bound there).
    Every config is built (and so validated) before anything is written. Returns the run
    directories and the exit code: 0 when every run finished, 1 when one failed, 130 / 143
    when a signal stopped them.
    """
    if vectorise not in VECTORISE:
        raise HarnessError(f"vectorise {vectorise!r} (valid: {', '.join(VECTORISE)})")
    resumes = resumes or [None] * len(configs)
    first = build_run(configs[0], pm)
    busy = busy_cpu(first.config, first.device)
    if busy:
        print(f"note: {busy}", file=sys.stderr)
    reason = None if len(configs) == 1 else sequential_reason(first, vectorise)
    if reason is None and len(configs) > 1:
        check_group_memory(first, len(configs))
        runs, states = [first], [rng_state(first.device)]
        try:
            for config in configs[1:]:
                runs.append(build_run(config, pm, notes=False))
                states.append(rng_state(runs[-1].device))
        except KeyboardInterrupt as exc:  # nothing written yet
            code = report_interrupt(exc, " while the runs were built")
            report_not_started(configs, directories)
            return [], code
        return train_vectorised(runs, states, resumes, directories)
    if reason is not None:
        print(f"note: training the {len(configs)} seeds one after another: {reason}",
              file=sys.stderr)
    done: list[Path] = []
    codes = []
    for i, config in enumerate(configs):
        started = False
        try:
            run = first if i == 0 else build_run(config, pm, notes=False)
        except KeyboardInterrupt as exc:
            codes.append(report_interrupt(exc))
        else:
            with locked_directory(run, directories[i] if directories else None):
                assert run.directory is not None
                codes.append(execute_one(run, resumes[i]))
            started = run.directory.is_dir()  # a new run stopped before it started is removed
            if started:
                done.append(run.directory)
        if codes[-1] not in (0, 1):  # interrupted: say what the stop left undone
            report_not_started(configs[i + started:], directories[i:] if directories else None)
            return done, codes[-1]
    return done, max(codes)


def sequential_reason(run: Run, vectorise: str) -> str | None:
    """Why a group of ``run``'s composition trains one seed after another (None: together)."""
    if vectorise == "no":
        return "--vectorise no"
    reason = blocker(run)
    if reason is not None and vectorise == "yes":
        raise HarnessError(f"--vectorise yes: {reason} (valid: --vectorise auto or no)")
    if reason is None and vectorise == "auto" and run.device.type != "cuda":
        return ("on the CPU, training them together measured no faster "
                "(benchmarks/bench_seeds.py); --vectorise yes forces it")
    return reason


def check_group_memory(run: Run, n: int) -> None:
    """Refuse a vectorised group of ``n`` replicas of ``run`` that would not fit in memory
    (``HarnessError``, before anything is written). Each replica holds its own dataset and
    conditioner tensors and its networks' training state (weights, gradients, Adam's two
    moments, the EMA copy): an estimate, counting the tensors the run's objects hold."""
    per_run = 5 * tensor_bytes(run.generator) + 4 * tensor_bytes(run.discriminator) + sum(
        tensor_bytes(part) for part in (run.dataset, run.conditioner, run.prior))
    need, available = n * per_run, available_memory()
    if need > available:
        raise HarnessError(
            f"--seeds: {n} seeds trained together need about {need / 2**30:.1f} GiB "
            f"({per_run / 2**20:.0f} MiB each), {available / 2**30:.1f} GiB is available "
            f"(valid: at most {max(1, available // per_run)} seeds, or --vectorise no)")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors ``obj`` holds: a module's parameters and buffers, or the tensors
    among an object's attributes (one level deep, in lists, tuples and dicts too)."""
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size()
                   for t in itertools.chain(obj.parameters(), obj.buffers()))
    values = list(vars(obj).values()) if hasattr(obj, "__dict__") else []
    for value in list(values):
        if isinstance(value, (list, tuple)):
            values.extend(value)
        elif isinstance(value, dict):
            values.extend(value.values())
    return sum(v.numel() * v.element_size() for v in values if torch.is_tensor(v))


def report_not_started(configs: list[RunConfig], directories: list[Path] | None) -> None:
    """After a stop in a one-after-another group: the seeds it did not reach."""
    if directories is not None:
        if len(directories) > 1:
            print("continue them all with: harness run --resume "
                  + " ".join(str(d) for d in directories), file=sys.stderr)
    elif configs:
        listed = format_seeds([c.seed for c in configs])
        print(f"not started: seeds {listed} (start them with the same command and "
              f"--seeds {listed})", file=sys.stderr)


@contextlib.contextmanager
def locked_directory(run: Run, directory: Path | None) -> Any:
    """``run.directory``: the given (resumed, locked by the caller) or a new one, locked; a
    new one that never started training (a signal or an error came first) is removed after."""
    if directory is not None:
        run.directory = directory
        yield
        return
    run.directory = results.create_run_dir(run.config.out, run_name(run.config))
    try:
        with results.RunLock(run.directory):
            yield
    finally:
        results.remove_unstarted(run.directory)


def train_vectorised(
    runs: list[Run], states: list[tuple[torch.Tensor, Any]],
    resumes: list[dict[str, Any] | None], directories: list[Path] | None,
) -> tuple[list[Path], int]:
    """The built ``runs`` as one ``Replicas`` group; their directories locked meanwhile.

    A signal while the directories are made or the runs start removes the new directories
    of the runs that had not started, and names their seeds."""
    from harness import runner

    with contextlib.ExitStack() as stack:
        try:
            for i, run in enumerate(runs):
                stack.enter_context(locked_directory(run, directories[i] if directories else None))
            print(f"training {len(runs)} seeds together (vectorised)", file=sys.stderr)
            failures = runner.execute_replicas(runs, states, resumes)
        except KeyboardInterrupt as exc:
            stack.close()  # unlock; new directories of runs that never started go
            name = runs[0].stop_signal or signal_of(exc)
            report_interrupted(runs, name)
            return group_paths(runs), exit_code(name)
        except RunFailed as exc:
            where = ""
            if exc.__cause__ is not None:  # a plugin's bug (a hook, a metric): keep its trace
                trace = traceback.format_exc()
                for path in group_paths(runs):
                    (path / results.TRACEBACK).write_text(trace)
                where = f" (traceback in each run directory's {results.TRACEBACK})"
            print(f"error: {one_line(exc)}{where}", file=sys.stderr)
            return group_paths(runs), 1
        except HarnessError:
            raise
        except Exception as exc:  # a bug or an environment failure: one line, traceback kept
            stack.close()
            paths, trace = group_paths(runs), traceback.format_exc()
            for path in paths:
                (path / results.TRACEBACK).write_text(trace)
            if not paths:  # none had started: no directory to keep it in
                print(trace, end="", file=sys.stderr)
            print(f"error: runs failed at step {runs[0].step}: "
                  f"{one_line(f'{type(exc).__name__}: {exc}')} (status failed; traceback in "
                  f"each run directory's {results.TRACEBACK})", file=sys.stderr)
            return group_paths(runs), 1
    for path, failure in failures.items():
        if failure is not None:
            print(f"error: {path.name}: {one_line(failure)}", file=sys.stderr)
    return group_paths(runs), int(any(f is not None for f in failures.values()))


def group_paths(runs: list[Run]) -> list[Path]:
    """The directories of the group's runs that exist (a run stopped before it started
    has none)."""
    return [run.directory for run in runs if run.directory is not None and run.directory.is_dir()]


def report_interrupted(runs: list[Run], signal_name: str | None) -> None:
    """Where each interrupted run stopped, the seeds that never started, and the one command
    that resumes the interrupted ones."""
    unfinished, unstarted = [], []
    for run in runs:
        status = results.run_status(run.directory)
        if status == "interrupted":
            unfinished.append(run)
        elif status is None:
            unstarted.append(run)
    where = {run.directory: "before its first checkpoint" if run.checkpoint_step is None
             else f"checkpoint of step {run.checkpoint_step}" for run in unfinished}
    if len(unfinished) <= 10:
        for directory, kept in where.items():
            print(f"interrupted: {directory} ({kept})", file=sys.stderr)
    else:  # a large group: how many stopped where
        for kept, count in collections.Counter(where.values()).items():
            print(f"interrupted: {count} runs ({kept})", file=sys.stderr)
    print(f"\ninterrupted ({signal_name or 'stop requested'})", file=sys.stderr)
    if unfinished:
        print("continue with: harness run --resume "
              + " ".join(str(run.directory) for run in unfinished)
              + (" --vectorise yes" if len(unfinished) > 1 else ""), file=sys.stderr)
    if unstarted:
        report_not_started([run.config for run in unstarted], None)


def execute_one(run: Run, resume: dict[str, Any] | None) -> int:
    """Train one run (its directory locked); the exit code, with one line on failure."""
    from harness import runner

    directory = run.directory
    assert directory is not None
    try:
        runner.execute(run, resume)
    except KeyboardInterrupt as exc:
        name = run.stop_signal or signal_of(exc)
        if resume is None and results.run_status(directory) is None:
            print(f"\ninterrupted ({name or 'stop requested'}) before the run started",
                  file=sys.stderr)
            return exit_code(name)
        kept = run.checkpoint_step
        where = ("before the first checkpoint; resuming restarts it from step 0" if kept is None
                 else f"at step {run.step}" if kept == run.step
                 else f"at step {run.step}; resuming continues from the checkpoint of step {kept}")
        print(f"\ninterrupted ({name or 'stop requested'}) {where}; continue with: "
              f"harness run --resume {directory}", file=sys.stderr)
        return exit_code(name)
    except RunFailed as exc:
        where = ""
        if exc.__cause__ is not None:  # a plugin's bug (a hook, a metric): keep its trace
            path = directory / results.TRACEBACK
            path.write_text(traceback.format_exc())
            where = f" (traceback in {path})"
        print(f"error: {one_line(exc)}{where}", file=sys.stderr)
        return 1
    except HarnessError:
        raise  # bad input found while starting (e.g. a foreign checkpoint): exit 2
    except Exception as exc:  # a bug or an environment failure: one line, the traceback kept
        error = one_line(f"{type(exc).__name__}: {exc}")
        if resume is None and results.run_status(directory) is None:  # its directory goes
            traceback.print_exc()
            print(f"error: run failed before it started: {error}", file=sys.stderr)
            return 1
        path = directory / results.TRACEBACK
        path.write_text(traceback.format_exc())
        print(f"error: run failed at step {run.step}: {error} (status failed; traceback in "
              f"{path})", file=sys.stderr)
        return 1
    return 0
