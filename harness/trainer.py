"""The training loop: steps, EMA, checkpoints, signals, progress and evaluation."""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from harness import results
from harness.api import Metric
from harness.errors import Diverged, MetricCrashed, MetricError, describe, one_line
from harness.run import EVAL_BATCH, EVAL_LABEL_SEED, EVAL_LATENT_SEED, Run
from harness.signals import on_stop_signals
from harness.step import TrainingStep

WEIGHTS = ("step", "generator", "discriminator", "prior", "ema", "conditioner")
"""The parts of a checkpoint that evaluating or sampling a run needs (``weights_state``)."""


@dataclass
class BestCheckpoint:
    """``checkpoints/best.pt`` of a training run (``--best-metric``): the weights
    (``Trainer.weights_state``) at the evaluation with the best value of ``metric`` so far.

    ``record`` says which: ``{"metric", "direction", "value", "step"}``, None before the first
    evaluation. ``on_update(record)`` is called after best.pt is replaced (the runner writes
    the record into run.json). A tie keeps the earlier checkpoint.
    """

    metric: str
    direction: Literal["higher", "lower"]
    record: dict[str, Any] | None = None
    on_update: Callable[[dict[str, Any]], None] | None = None

    def improves(self, value: float) -> bool:
        if self.record is None:
            return True
        best = self.record["value"]
        return value < best if self.direction == "lower" else value > best


class Trainer:
    """Trains a built run from ``run.step`` to ``config.steps``, checkpoints and evaluates it."""

    def __init__(self, run: Run) -> None:
        self.run = run
        cfg = run.config
        self.training_step = TrainingStep(run)
        self.in_loop = False
        """Whether a signal can wait for the next step boundary (else it stops at once)."""
        self.best: BestCheckpoint | None = None
        """Keeps ``checkpoints/best.pt`` at each evaluation (``--best-metric``); set by the
        runner for a run that trains, None for a run loaded to be analysed."""
        if cfg.ema_decay is not None and run.ema_generator is None:
            run.ema_generator = copy.deepcopy(run.generator).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self) -> None:
        """EMA of G's parameters (a plain copy before ``ema_start``); buffers are copied."""
        run, cfg = self.run, self.run.config
        ema = run.ema_generator
        if ema is None or cfg.ema_decay is None:
            return
        weight = 1.0 - cfg.ema_decay if run.step >= cfg.ema_start else 1.0
        for averaged, current in zip(ema.parameters(), run.generator.parameters(), strict=True):
            averaged.lerp_(current, weight)
        for averaged, current in zip(ema.buffers(), run.generator.buffers(), strict=True):
            averaged.copy_(current)


    def step(self) -> dict[str, torch.Tensor]:
        """One iteration (``harness.step.TrainingStep``); its detached losses."""
        return self.training_step()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        run, step = self.run, self.training_step.state_dict()
        return {
            "step": run.step,
            "generator": run.generator.state_dict(),
            "discriminator": run.discriminator.state_dict(),
            "prior": run.prior.state_dict(),
            "ema": run.ema_generator.state_dict() if run.ema_generator is not None else None,
            "opt_g": step["opt_g"],
            "opt_d": step["opt_d"],
            "conditioner": run.conditioner.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": step["data"],
                    "labels": step["labels"],
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "timings": dict(run.timings),
        }
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint's state; ``CheckpointError`` (one line) when it does not fit
        this run's networks, optimisers or conditioner."""
        try:
            self._load_state_dict(state)
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            reason = describe(exc)[:200]
            raise results.CheckpointError(
                f"the checkpoint does not fit this run's networks or state: {reason}"
            ) from None
        self.run.checkpoint_step = self.run.step

    def _load_networks(self, state: dict[str, Any]) -> None:
        run = self.run
        run.step = state["step"]
        run.generator.load_state_dict(state["generator"])
        run.discriminator.load_state_dict(state["discriminator"])
        run.prior.load_state_dict(state["prior"])
        if run.ema_generator is not None:
            run.ema_generator.load_state_dict(state["ema"])

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        run = self.run
        self._load_networks(state)
        rng = state["rng"]
        self.training_step.load_state_dict({"opt_g": state["opt_g"], "opt_d": state["opt_d"],
                                            "data": rng["data"], "labels": rng["labels"]})
        run.conditioner.load_state_dict(state["conditioner"])
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
        run.timings.update(state["timings"])

    def weights_state(self) -> dict[str, Any]:
        """What evaluating or sampling the run needs, as in ``state_dict`` without the
        optimisers, RNG states and timings: step, G, D, the EMA copy, prior, conditioner.
        Tensors are copies (a vectorised group's networks are views of whole stacks)."""
        from harness.replicas import clone_tensors

        state = self.state_dict()
        return clone_tensors({key: state[key] for key in WEIGHTS})

    def load_weights(self, state: dict[str, Any]) -> None:
        """Restore ``weights_state``'s part of a checkpoint (any checkpoint, or ``best.pt``):
        enough to evaluate and sample, not to resume. ``CheckpointError`` (one line) when it
        does not fit this run's networks or conditioner."""
        try:
            self._load_networks(state)
            self.run.conditioner.load_state_dict(state["conditioner"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            reason = describe(exc)[:200]
            raise results.CheckpointError(
                f"the checkpoint does not fit this run's networks or state: {reason}"
            ) from None

    def checkpoint(self) -> None:
        if self.run.directory is not None:
            self.save_checkpoint(self.state_dict())

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` (``state_dict``'s, from this step) as ``checkpoints/last.pt``; as
        ``checkpoints/step-<N>.pt`` too at a multiple N of ``--keep-checkpoints``; and the
        evaluation generator alone as ``generator.pt`` (``generator_state``)."""
        run = self.run
        assert run.directory is not None
        path = run.directory / results.CHECKPOINT
        results.save_checkpoint(path, state, run.identity())
        keep = run.config.keep_checkpoints
        if keep and run.step % keep == 0:
            results.link_or_copy(path, run.directory / results.step_checkpoint(run.step))
        results.atomic_write_bytes(run.directory / results.GENERATOR,
                                   results.torch_bytes(self.generator_state()))
        run.checkpoint_step = run.step

    def generator_state(self) -> dict[str, Any]:
        """``generator.pt``: the evaluation generator (the EMA copy when there is one) alone,
        with what it takes to sample it: format, step, G's ``state_dict``, the prior's
        ``state_dict``, P(c) (``class_weights``: (classes,) float on the CPU), whether G
        takes the label (``conditions_networks``; else it takes zeros), z_dim and the run's
        config (``config.json``'s). Plain tensors and containers only: ``torch.load(path,
        weights_only=True)`` reads it; ``harness.restore.load_generator`` rebuilds G."""
        from harness.replicas import clone_tensors

        run = self.run
        return {
            "format": results.GENERATOR_FORMAT,
            "step": run.step,
            "run_id": run.directory.name if run.directory else None,
            "ema": run.ema_generator is not None,
            "generator": clone_tensors(run.eval_generator.state_dict()),
            "prior": clone_tensors(run.prior.state_dict()),
            "class_weights": run.conditioner.class_weights().detach().cpu().clone(),
            "conditions_networks": run.conditioner.conditions_networks,
            "z_dim": run.resolved.get("z_dim", run.config.z_dim),
            "config": run.config.model_dump(mode="json"),
        }

    # ------------------------------------------------------------------ loop
    def setup(self) -> None:
        """Initial fit of the conditioner (e.g. first clustering on random D features)."""
        with self.timed("setup_s"), self.status(f"setting up conditioner {self.run.config.cond}"):
            self.run.conditioner.setup(self.run.models)

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Add the block's wall time to ``run.timings[key]`` (kept across resumes)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            timings = self.run.timings
            timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

    def status(self, message: str) -> contextlib.AbstractContextManager[Any]:
        """A spinner on stderr for a long step without a step count (if progress is on)."""
        if not self.run.config.progress:
            return contextlib.nullcontext()
        return Console(stderr=True).status(message)

    def train(self) -> None:
        """Train from ``run.step`` to ``config.steps``.

        Ctrl-C or SIGTERM (or a hook setting ``run.stop_requested``) stops at the next step
        boundary, checkpoints, and raises ``KeyboardInterrupt``; a second signal stops at once.
        Non-finite losses raise ``Diverged`` at that step; the last checkpoint is kept.
        """
        run, cfg, notify = self.run, self.run.config, self.run.pm.notify
        run.generator.train()
        run.discriminator.train()
        last_finite: tuple[int, dict[str, torch.Tensor]] | None = None
        self.in_loop = True
        with self.progress() as advance:
            while run.step < cfg.steps:
                with self.timed("train_s"):
                    losses = self.step()
                    if not math.isfinite(sum(float(v) for v in losses.values())):
                        raise Diverged(self.divergence_message(losses, last_finite))
                    run.step += 1
                    last_finite = (run.step, losses)
                    self.update_ema()
                    with self.timed("recluster_s"):
                        changed = run.conditioner.update(run.step, run.models)
                    if changed is not None:
                        notify("harness_labels_updated", run=run, step=run.step,
                               changed_fraction=changed)
                    notify("harness_step_end", run=run, step=run.step, losses=losses)
                    advance(run.step, losses)
                last = run.step == cfg.steps
                if cfg.eval_every and run.step % cfg.eval_every == 0 and not last:
                    notify("harness_evaluated", run=run, step=run.step, metrics=self.evaluate())
                if run.stop_requested or last or run.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                    if run.stop_requested:
                        raise KeyboardInterrupt
        self.in_loop = False
        run.timings["ms_per_step"] = 1000 * run.timings.get("train_s", 0.0) / max(cfg.steps, 1)

    def divergence_message(
        self, losses: dict[str, torch.Tensor], last: tuple[int, dict[str, torch.Tensor]] | None
    ) -> str:
        """One line: the step, its losses, the last finite ones and the checkpoint kept."""
        def show(values: dict[str, torch.Tensor]) -> str:
            return ", ".join(f"{k}={float(v):.4g}" for k, v in values.items())

        step = self.run.step + 1
        before = (f"last finite losses at step {last[0]}: {show(last[1])}" if last
                  else "it is the first step" if step == 1
                  else f"it is the first step after resuming from step {step - 1}")
        kept = ("no checkpoint was written before it" if self.run.checkpoint_step is None
                else f"the checkpoint of step {self.run.checkpoint_step} is kept")
        return f"diverged at step {step}: non-finite losses ({show(losses)}); {before}; {kept}"

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """SIGINT (Ctrl-C) and SIGTERM (``kill``, ``timeout``, cluster schedulers) alike: in the
        training loop the first one sets ``run.stop_requested`` (stop, checkpoint and raise
        ``KeyboardInterrupt`` at the step boundary); elsewhere, or a second one, raises
        ``KeyboardInterrupt`` at once. Main thread only; handlers are restored after."""
        def request_stop(signum: int, frame: Any) -> None:
            self.run.stop_signal = signal.Signals(signum).name
            if self.run.stop_requested or not self.in_loop:
                raise KeyboardInterrupt
            self.run.stop_requested = True

        with on_stop_signals(request_stop):
            yield

    @contextlib.contextmanager
    def progress(self) -> Iterator[Any]:
        cfg, run = self.run.config, self.run
        if not cfg.progress:
            yield lambda step, losses: None
            return
        columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
        with Progress(*columns, console=Console(stderr=True)) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=run.step, info="")

            def advance(step: int, losses: dict[str, torch.Tensor]) -> None:
                if step % 25 == 0 or step == cfg.steps:
                    info = " ".join(f"{k}={float(v):.3f}" for k, v in losses.items())
                    bar.update(task, completed=step, info=info)

            yield advance

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples from the evaluation generator, labels drawn from P(c), on the CPU."""
        chunks = torch.arange(n).split(EVAL_BATCH)
        fake_batch, generator = self.training_step.fake_batch, self.run.eval_generator
        if generator.channels_last_sampling and self.run.device.type == "cpu":
            generator = copy.deepcopy(generator).to(memory_format=torch.channels_last)
        batches = [fake_batch(len(chunk), generator) for chunk in chunks]
        xs, ys = zip(*((x.contiguous().cpu(), y.cpu()) for x, y in batches), strict=True)
        return torch.cat(xs), torch.cat(ys)

    def evaluate(self) -> dict[str, float]:
        """Every metric, with fixed evaluation seeds; training state (RNG, modes) is untouched.
        A training run's ``best`` checkpoint is updated from the values (``keep_best``).

        Only finite values are returned. A metric that raises ``MetricError`` or returns a
        non-finite value is left out with the reason in ``run.metric_errors`` and a warning.
        """
        run = self.run
        run.metric_errors = {}
        nets = (run.generator, run.discriminator, run.eval_generator)
        modes = [net.training for net in nets]
        label_rng = self.training_step.label_rng
        label_state = label_rng.get_state()
        values: dict[str, float] = {}
        with run.seeded(run.config.seed + EVAL_LATENT_SEED), self.timed("eval_s"):
            label_rng.manual_seed(run.config.seed + EVAL_LABEL_SEED)
            for net in nets:
                net.eval()
            try:
                for name, metric in run.metrics.items():
                    with self.timed(f"eval_{name}_s"), self.status(f"evaluating {name}"):
                        values.update(self.compute_metric(name, metric))
            finally:
                label_rng.set_state(label_state)
                for net, mode in zip(nets, modes, strict=True):
                    net.train(mode)
        self.keep_best(values)
        return values

    def keep_best(self, values: dict[str, float]) -> None:
        """Replace ``checkpoints/best.pt`` when ``values`` (an evaluation at ``run.step``)
        improve on the best value of ``--best-metric`` so far; a warning when they lack it."""
        best, run = self.best, self.run
        if best is None or run.directory is None:
            return
        value = values.get(best.metric)
        if value is None:
            print(f"warning: --best-metric {best.metric}: not among the values of the "
                  f"evaluation at step {run.step} ({', '.join(values) or 'none'}); "
                  f"{results.BEST_CHECKPOINT} unchanged", file=sys.stderr)
            return
        if not best.improves(value):
            return
        record = {"metric": best.metric, "direction": best.direction, "value": value,
                  "step": run.step}
        results.save_checkpoint(run.directory / results.BEST_CHECKPOINT,
                                {**self.weights_state(), "best": record}, run.identity())
        best.record = record
        if best.on_update is not None:
            best.on_update(record)

    def compute_metric(self, name: str, metric: Metric) -> dict[str, float]:
        """``metric``'s finite values; the reason it has none (or some) goes to the run."""
        run = self.run
        try:
            computed = metric.compute(self.sample, run)
        except MetricError as exc:
            reason = str(exc)
            computed = {}
        except Exception as exc:
            raise MetricCrashed(f"metric {name!r} raised {describe(exc)}") from exc
        else:
            computed, bad = results.split_finite(computed)
            reason = "returned non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
            if not bad:
                return computed
        run.metric_errors[name] = reason
        print(f"warning: metric {name!r} at step {run.step}: {one_line(reason)}", file=sys.stderr)
        return computed

