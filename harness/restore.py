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

from harness import results
from harness.build import build_run, check_eval_memory
from harness.config import make_config
from harness.errors import HarnessError, one_line
from harness.manager import get_plugin_manager
from harness.run import Run
from harness.trainer import Trainer

__all__ = ["Run", "check_eval_memory", "load_generator", "load_run", "locked_run",
           "resolve_checkpoint", "saved_checkpoints"]


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


def resolve_checkpoint(run_dir: Path, checkpoint: str = "last", what: str = "harness") -> Path:
    """The file of ``checkpoint`` in ``run_dir``: ``"last"`` (``checkpoints/last.pt``),
    ``"best"`` (``checkpoints/best.pt``, ``--best-metric``) or a step number (``"500"``: a
    ``--keep-checkpoints`` checkpoint, or the last or best one when it is of that step).

    Raises ``HarnessError`` (one line, prefixed with ``what`` and the directory) when the run
    has no such checkpoint, naming the saved steps, or when ``checkpoint`` is none of these.
    """
    run_dir = Path(run_dir)
    status = results.run_status(run_dir) or "unknown"
    if checkpoint == "last":
        path = run_dir / results.CHECKPOINT
        if not path.is_file():
            raise HarnessError(
                f"{what} {run_dir}: no checkpoint ({results.CHECKPOINT}; run status {status}):"
                " the run stopped before its first checkpoint (valid: a run that trained to a "
                f"checkpoint; resume it with harness run --resume {run_dir})")
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


def load_run(
    run_dir: Path, what: str = "harness", overrides: dict[str, Any] | None = None,
    checkpoint: str = "last",
) -> Run:
    """The run of ``run_dir`` rebuilt from its ``config.json`` with the weights of one of its
    checkpoints (G, D, the EMA copy, the prior, the conditioner's state; ``checkpoint`` as
    ``resolve_checkpoint`` takes it, default the last).

    ``overrides``: settings for this use of the run: where it computes (``device``,
    ``data_root``, ``threads``) or what it evaluates (``metrics``, ``metric_options``,
    ``eval_samples``); the checkpoint is checked against the run's own config. Works for
    finished, interrupted and failed runs alike, as long as the checkpoint exists. Raises
    ``HarnessError`` (one line, prefixed with ``what`` and the directory) when the folder is
    no run, has no such checkpoint or another run's checkpoint, or the overrides are invalid.
    """
    run_dir = Path(run_dir)
    # no loggers, and no --best-metric (its metric may not be among the evaluated ones)
    saved = {**read_saved_config(run_dir, what), "progress": False, "log": [], "best_metric": None}
    config = make_config({**saved, **(overrides or {})})
    path = resolve_checkpoint(run_dir, checkpoint, what)
    run = build_run(config, get_plugin_manager(), notes=False)
    run.directory = run_dir  # before identity(): it names the run
    trainer = Trainer(run)  # makes the EMA copy of G when the run has one
    identity = {**run.identity(), "trajectory": make_config(saved).trajectory_hash()}
    try:
        state = results.load_checkpoint(path, identity, run.device)
        if "opt_g" in state:
            trainer.load_state_dict(state)
        else:  # best.pt: weights only
            trainer.load_weights(state)
    except results.CheckpointError as exc:
        raise HarnessError(f"{what} {run_dir}: {one_line(exc)}") from None
    return run


def load_generator(
    run_dir: Path, checkpoint: str = "last", overrides: dict[str, Any] | None = None,
    what: str = "harness",
) -> Run:
    """The run of ``run_dir`` with the weights of ``checkpoint`` (``"last"``, ``"best"`` or a
    saved step such as ``"500"``), ready to sample, its networks in eval mode.

    Sample with ``run.generate(labels, seed)`` (z drawn from ``run.prior`` with ``seed``, then
    ``run.eval_generator``: the EMA copy when the run has one; images in [-1, 1], (n, C, H,
    W) float32 on the CPU), labels from P(c) with ``run.conditioner.sample_labels(n,
    torch.Generator().manual_seed(seed))``; ``run.step`` is the checkpoint's step.
    ``overrides`` as for ``load_run`` (``device``, ``data_root``, ``threads``).

    Takes no lock and reads the checkpoint file once: safe while the run trains (every
    checkpoint is replaced by rename, so a reader sees a whole file, the old or the new).
    Raises ``HarnessError`` (one line) as ``load_run`` does, and for a checkpoint that was not
    saved (naming the saved steps).
    """
    run = load_run(Path(run_dir), what, overrides, checkpoint)
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
