"""Load a trained run back from its directory, for commands that analyse it (``harness
cluster``, ``harness tradeoff``, ``harness eval``) or sample it (``load_generator``).

This is the one module that imports the training internals (``build_run`` and
``check_eval_memory`` of ``harness.build``, ``Run``, ``Trainer``): when they move, only the
imports below change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harness import results
from harness.build import build_run, check_eval_memory
from harness.config import make_config
from harness.errors import HarnessError, one_line
from harness.manager import get_plugin_manager
from harness.run import Run
from harness.trainer import Trainer

__all__ = ["Run", "check_eval_memory", "generator_source", "load_generator", "load_run",
           "locked_run", "resolve_checkpoint", "saved_checkpoints"]


def read_saved_config(run_dir: Path, what: str) -> dict[str, Any]:
    """The ``config`` object of the run's ``config.json``; ``HarnessError`` (one line) when
    ``run_dir`` is no run directory."""
    results.require_run_dir(run_dir, what)
    try:
        saved = results.read_json(run_dir / results.CONFIG)
    except FileNotFoundError:
        raise HarnessError(f"{what} {run_dir}: no {results.CONFIG}; not a run directory (valid: "
                           "a folder made by harness run, e.g. results/<run-id>)") from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{what} {run_dir}: cannot read {results.CONFIG}: "
                           f"{one_line(exc)}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise HarnessError(f"{what} {run_dir}: {results.CONFIG} holds no run config")
    return saved["config"]


def saved_checkpoints(run_dir: Path) -> dict[int, Path]:
    """The steps ``run_dir`` holds a checkpoint of -> its file: ``--keep-checkpoints``'s
    ``step-<N>.pt`` first, then ``last.pt`` and ``best.pt`` (steps read from the files)."""
    found = {step: run_dir / results.step_checkpoint(step)
             for step in results.kept_steps(run_dir)}
    for name in (results.CHECKPOINT, results.BEST_CHECKPOINT):
        step = results.checkpoint_step(run_dir / name)
        if step is not None:
            found.setdefault(step, run_dir / name)
    return dict(sorted(found.items()))


def resolve_checkpoint(
    run_dir: Path, checkpoint: str | int = "last", what: str = "harness"
) -> Path:
    """The file of ``checkpoint`` in ``run_dir``: ``"last"`` (``checkpoints/last.pt``),
    ``"best"`` (``checkpoints/best.pt``, ``--best-metric``) or a step number (``500`` or
    ``"500"``: a ``--keep-checkpoints`` checkpoint, or the last or best one when it is of
    that step).

    Raises ``HarnessError`` (one line, prefixed with ``what`` and the directory) when the run
    has no such checkpoint, naming the saved steps, or when ``checkpoint`` is none of these
    (a negative step included).
    """
    run_dir, checkpoint = Path(run_dir), str(checkpoint)
    if checkpoint == "last":
        path = run_dir / results.CHECKPOINT
        if not path.is_file():
            raise HarnessError(f"{what} {run_dir}: no checkpoint ({results.CHECKPOINT}; "
                               f"{missing_checkpoint_reason(run_dir)})")
        return path
    saved = saved_checkpoints(run_dir)
    listed = ", ".join(map(str, saved)) or "none"
    if checkpoint == "best":
        path = run_dir / results.BEST_CHECKPOINT
        if not path.is_file():
            raise HarnessError(
                f"{what} {run_dir}: --checkpoint best: no {results.BEST_CHECKPOINT}: the run "
                "was not trained with --best-metric, or has not evaluated yet (valid: last, "
                f"or a saved step: {listed})")
        return path
    if not (checkpoint.isascii() and checkpoint.isdigit()):
        raise HarnessError(f"{what} {run_dir}: --checkpoint {checkpoint!r} (valid: last, best "
                           f"or a saved step: {listed})")
    if int(checkpoint) not in saved:
        raise HarnessError(f"{what} {run_dir}: --checkpoint {checkpoint}: no checkpoint of step "
                           f"{int(checkpoint)} was saved (saved steps: {listed}; valid: last, "
                           "best or one of them)")
    return saved[int(checkpoint)]


def missing_checkpoint_reason(run_dir: Path) -> str:
    """Why ``run_dir`` has no ``checkpoints/last.pt``, from its ``run.json``: its checkpoint
    files are missing (deleted or not copied) when it records a checkpoint step or finished;
    else the run stopped before its first checkpoint."""
    try:
        info = results.read_json(run_dir / results.RUN)
    except (OSError, ValueError):
        info = {}
    info = info if isinstance(info, dict) else {}
    status = info.get("status") or "unknown"
    step = info.get("checkpoint_step")
    if (run_dir / results.GENERATOR).is_file() and not (run_dir / "checkpoints").is_dir():
        return (f"run status {status}; only {results.GENERATOR} is here: harness sample reads "
                "it, this needs the run's checkpoints/ folder (valid: the whole run "
                "directory)")
    if step is not None or status == "finished":
        saved = f"checkpoint of step {step}" if step is not None else "checkpoints"
        return (f"run status {status}; run.json records a {saved} but its checkpoint files are "
                "missing (deleted or not copied) (valid: a run directory with its "
                f"checkpoints/ folder, or with {results.GENERATOR} to sample it)")
    return (f"run status {status}): the run stopped before its first checkpoint (valid: a run "
            f"that trained to a checkpoint; resume it with harness run --resume {run_dir}")


def generator_source(run_dir: Path, checkpoint: str | int = "last", what: str = "harness") -> Path:
    """The file ``load_generator`` reads: ``resolve_checkpoint``'s, or ``generator.pt`` for
    ``"last"`` when the run directory holds it but no ``checkpoints/last.pt`` (only
    ``config.json`` and ``generator.pt`` copied). ``HarnessError`` as ``resolve_checkpoint``."""
    run_dir = Path(run_dir)
    if str(checkpoint) == "last" and not (run_dir / results.CHECKPOINT).is_file() \
            and (run_dir / results.GENERATOR).is_file():
        return run_dir / results.GENERATOR
    return resolve_checkpoint(run_dir, checkpoint, what)


def load_run(
    run_dir: Path, what: str = "harness", overrides: dict[str, Any] | None = None,
    checkpoint: str | int = "last", metrics: bool = True,
) -> Run:
    """The run of ``run_dir`` rebuilt from its ``config.json`` with the weights of one of its
    checkpoints (G, D, the EMA copy, the prior, the conditioner's state; ``checkpoint`` as
    ``resolve_checkpoint`` takes it, default the last).

    ``overrides``: settings for this use of the run: where it computes (``device``,
    ``data_root``, ``threads``) or what it evaluates (``metrics``, ``metric_options``,
    ``eval_samples``); the checkpoint is checked against the run's own config. ``metrics``
    False: the run is not to be evaluated, so its metrics are the defaults that can run here
    (``run.metrics`` is then no evaluation of the run's) and building them prints no
    warning. Works for finished, interrupted and failed runs alike, as long as the
    checkpoint exists. Raises ``HarnessError`` (one line, prefixed with ``what`` and the
    directory) when the folder is no run, has no such checkpoint or another run's
    checkpoint, or the overrides are invalid.
    """
    run_dir = Path(run_dir)
    read_saved_config(run_dir, what)
    path = resolve_checkpoint(run_dir, checkpoint, what)
    run, trainer = rebuild(run_dir, what, overrides, metrics)
    try:
        state = results.load_checkpoint(path, identity(run, run_dir, what), run.device, "load")
        if "opt_g" in state:
            trainer.load_state_dict(state)
        else:  # best.pt: weights only
            trainer.load_weights(state)
    except results.CheckpointError as exc:
        raise HarnessError(f"{what} {run_dir}: {one_line(exc)}") from None
    return run


def rebuild(
    run_dir: Path, what: str, overrides: dict[str, Any] | None, metrics: bool
) -> tuple[Run, Trainer]:
    """The run of ``run_dir``'s ``config.json`` built afresh (weights untrained), and its
    ``Trainer`` (which makes the EMA copy of G); ``metrics`` as for ``load_run``."""
    saved = restorable_config(run_dir, what)
    if not metrics:
        saved.update(metrics=None, metric_options={})
    config = make_config({**saved, **(overrides or {})})
    run = build_run(config, get_plugin_manager(), notes=False, warnings=metrics)
    run.directory = run_dir  # before identity(): it names the run
    return run, Trainer(run)


def restorable_config(run_dir: Path, what: str) -> dict[str, Any]:
    """The saved config with no loggers and no ``--best-metric`` (its metric may not be
    among the evaluated ones)."""
    return {**read_saved_config(run_dir, what), "progress": False, "log": [], "best_metric": None}


def identity(run: Run, run_dir: Path, what: str) -> dict[str, Any]:
    """What a checkpoint of ``run_dir`` records (``Run.identity``), its trajectory hash from
    the saved config (overrides such as ``device`` do not change it)."""
    trajectory = make_config(restorable_config(run_dir, what)).trajectory_hash()
    return {**run.identity(), "trajectory": trajectory}


def load_generator_file(run: Run, path: Path, what: str) -> None:
    """Load ``generator.pt`` at ``path`` (``Trainer.generator_state``) into ``run``: the
    evaluation generator's and the prior's weights, the step, and P(c) (the conditioner's
    ``class_weights`` then return the saved ones). ``HarnessError`` (one line) for an
    unreadable file, one of another format or run, or weights that do not fit."""
    assert run.directory is not None
    where = f"{what} {run.directory}: {path}"
    try:
        state = torch.load(path, map_location=run.device, weights_only=True)
    except Exception as exc:  # torch's unpickler raises many kinds
        raise HarnessError(f"{where} is not a readable {results.GENERATOR} (truncated or "
                           f"another kind of file): {type(exc).__name__}: "
                           f"{one_line(exc)[:160]}") from None
    if not isinstance(state, dict) or state.get("format") != results.GENERATOR_FORMAT:
        found = state.get("format") if isinstance(state, dict) else None
        raise HarnessError(f"{where}: not a {results.GENERATOR} of format "
                           f"{results.GENERATOR_FORMAT} (found format {found}); refusing to "
                           "load it")
    try:
        own = identity(run, run.directory, what)
        config = make_config({**state["config"], "progress": False, "log": [],
                              "best_metric": None})
        if (config.trajectory_hash(), config.seed) != (own["trajectory"], own["seed"]):
            raise HarnessError(f"{where} belongs to another run (seed {config.seed}, config "
                               f"{config.trajectory_hash()}; this run: seed {own['seed']}, "
                               f"config {own['trajectory']}); refusing to load it")
        run.eval_generator.load_state_dict(state["generator"])
        run.prior.load_state_dict(state["prior"])
        weights = state["class_weights"].detach().cpu()
        run.step = state["step"]
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise HarnessError(f"{where} does not fit this run's networks: "
                           f"{one_line(exc)[:200]}") from None
    run.conditioner.class_weights = weights.clone  # type: ignore[method-assign]


def load_generator(
    run_dir: Path, checkpoint: str | int = "last", overrides: dict[str, Any] | None = None,
    what: str = "harness",
) -> Run:
    """The run of ``run_dir`` with the weights of ``checkpoint`` (``"last"``, ``"best"`` or a
    saved step such as ``500`` or ``"500"``), ready to sample, its networks in eval mode;
    ``run.step`` is the checkpoint's step. A run directory with only ``config.json`` and
    ``generator.pt`` (the evaluation generator alone, a few MB) is enough for ``"last"``:
    the evaluation generator, the prior and P(c) come from ``generator.pt`` (D and the
    conditioner's other state stay untrained: sampling needs neither).

    Sample as ``harness sample`` does, with ``harness.sampling``: ``sampler(run, seed)(n)``
    gives ``(x, y)``, x float32 (n, C, H, W) images in [-1, 1] (or (n, d) points) on the
    CPU, y int64 (n,) labels y ~ P(c); ``generate(run, labels, seed)`` yields them batch by
    batch for chosen ``labels`` (``draw_labels(run.conditioner, n, seed, per_class)``).
    With the run's seed they are the samples its evaluation scored. ``overrides`` as for
    ``load_run`` (``device``, ``data_root``, ``threads``); the run's metrics are not built
    (no warnings about them).

    Takes no lock and reads the checkpoint file once: safe while the run trains (every
    checkpoint is replaced by rename, so a reader sees a whole file, the old or the new).
    Raises ``HarnessError`` (one line) as ``load_run`` does, and for a checkpoint that was not
    saved or a negative step (naming the saved steps).
    """
    run_dir = Path(run_dir)
    read_saved_config(run_dir, what)
    path = generator_source(run_dir, checkpoint, what)
    if path.name == results.GENERATOR:
        run, _ = rebuild(run_dir, what, overrides, metrics=False)
        load_generator_file(run, path, what)
    else:
        run = load_run(run_dir, what, overrides, checkpoint, metrics=False)
    for net in (run.generator, run.discriminator, run.eval_generator):
        net.eval()
    return run


@contextlib.contextmanager
def locked_run(
    run_dir: Path, what: str = "harness", overrides: dict[str, Any] | None = None
) -> Iterator[Run]:
    """``load_run`` while holding the run's lock, so no ``harness run --resume`` trains it
    while it is analysed. A folder that is no run is refused before the lock file is made."""
    read_saved_config(Path(run_dir), what)
    with results.RunLock(Path(run_dir)):
        yield load_run(Path(run_dir), what, overrides)
