"""Build a run from its config, train it, evaluate it, and keep its directory current."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from harness import results
from harness.api import (
    Backbone,
    BuildContext,
    Conditioner,
    DataLocation,
    Dataset,
    DataSpec,
    Discriminator,
    Generator,
    Loss,
    Metric,
    Models,
    Options,
    Prior,
)
from harness.config import COMPONENT_FIELDS, RunConfig, describe_validation_error
from harness.errors import ConfigError, Diverged, MetricError, MetricUnavailable, describe, one_line
from harness.manager import PluginManager

EVAL_BATCH = 10_000


def validate_options(kind: str, name: str, cls: type, values: dict[str, Any]) -> Options:
    """The component's ``Options`` from ``values``; errors name the component and valid keys."""
    try:
        return cls.Options.model_validate(values)
    except ValidationError as exc:
        fields = list(cls.Options.model_fields)
        message = describe_validation_error(exc, f"{kind} {name!r} option", fields)
        raise ConfigError(message) from None


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (valid: cpu, auto)")
    return torch.device(choice)


@dataclass
class Run:
    """A fully built composition: components, networks, optimisers and its directory."""

    config: RunConfig
    pm: PluginManager
    dataset: Dataset
    prior: Prior
    conditioner: Conditioner
    backbone: Backbone
    loss: Loss
    metrics: dict[str, Metric]
    generator: Generator
    discriminator: Discriminator
    device: torch.device
    resolved: dict[str, Any]
    ema_generator: Generator | None = None
    """Exponential moving average of G's weights (``--ema-decay``), used for evaluation."""
    directory: Path | None = None
    step: int = 0
    stop_requested: bool = False
    checkpoint_step: int | None = None
    """Step of the newest checkpoint in the run directory (None before the first)."""
    stop_signal: str | None = None
    """The signal that stopped the run (SIGINT for Ctrl-C, SIGTERM for kill / schedulers)."""
    timings: dict[str, float] = field(default_factory=dict)
    metric_errors: dict[str, str] = field(default_factory=dict)
    """Why a metric of the last evaluation has no value (``MetricError`` or non-finite)."""

    @property
    def eval_generator(self) -> Generator:
        """The generator samples and metrics use: the EMA copy when there is one."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    @contextlib.contextmanager
    def seeded(self, seed: int) -> Iterator[None]:
        """Global torch RNG (CPU and the run's CUDA device) seeded with ``seed`` inside the
        block and restored after it: observers and metrics draw without perturbing training."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """Samples of ``eval_generator`` in eval mode for ``labels``, z drawn with ``seed``.

        Leaves the global RNG and the networks' training mode as they were, so observers
        (sample grids) do not perturb training.
        """
        generator = self.eval_generator
        was_training = generator.training
        with self.seeded(seed):
            generator.eval()
            try:
                labels = labels.to(self.device)
                z = self.prior.sample(len(labels), labels)
                return generator(z, self.net_labels(labels)).cpu()
            finally:
                generator.train(was_training)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records to be recognised as this run's (see ``load_checkpoint``)."""
        cfg = self.config
        return {
            "trajectory": cfg.trajectory_hash(),
            "seed": cfg.seed,
            "composition": {fld: getattr(cfg, fld) for fld in COMPONENT_FIELDS},
            "step": self.step,
            "run_id": self.directory.name if self.directory else None,
        }

    @property
    def models(self) -> Models:
        return Models(self.generator, self.discriminator, self.prior, self.dataset, self.device)

    def net_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Labels as the networks see them (all zeros when the conditioner only drives z)."""
        return labels if self.conditioner.conditions_networks else torch.zeros_like(labels)


def build_run(config: RunConfig, pm: PluginManager) -> Run:
    """Resolve and validate every plugin and option, then build the components.

    Raises ``HarnessError`` on any bad input, before anything is written to disk.
    """
    classes, options, resolved = {}, {}, {}
    for fld, family in COMPONENT_FIELDS.items():
        name = getattr(config, fld)
        entry = pm.get(family, name)
        classes[fld] = entry.load()
        options[fld] = validate_options(fld, name, classes[fld], getattr(config, f"{fld}_options"))
        resolved[fld] = {"name": name, "provider": entry.provider,
                         "options": options[fld].model_dump(mode="json")}
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    with allocation_guard():
        run = build_components(config, pm, classes, options, resolved, device)
        check_networks(run)
    check_eval_memory(config, run.dataset)
    return run


def build_components(
    config: RunConfig, pm: PluginManager, classes: dict[str, type],
    options: dict[str, Options], resolved: dict[str, Any], device: torch.device,
) -> Run:
    """Data, metrics, conditioner, prior and networks, in the order that keeps the seeded
    initialisation of every run identical."""
    location = DataLocation(config.data_root, config.download)
    dataset = classes["dataset"](options["dataset"], config.seed, location)
    if dataset.x.is_floating_point() and not bool(dataset.x.isfinite().all()):
        raise ConfigError(f"dataset {config.dataset!r} holds non-finite values with options "
                          f"{options['dataset'].model_dump(mode='json')} (valid: smaller scales)")
    metrics = build_metrics(config, pm, dataset, resolved)
    context = BuildContext(dataset, config.prior, options["prior"], config.seed)
    conditioner = classes["cond"](options["cond"], context)
    backbone = classes["backbone"](options["backbone"])
    z_dim = config.z_dim or backbone.default_z_dim
    prior = classes["prior"](options["prior"], z_dim, conditioner.num_classes)
    net_classes = conditioner.num_classes if conditioner.conditions_networks else 1
    check_network_memory(config.backbone, backbone, dataset.spec, net_classes, z_dim)
    generator, discriminator = backbone.build(dataset.spec, net_classes, z_dim)
    resolved["z_dim"] = z_dim
    return Run(
        config=config, pm=pm, dataset=dataset, prior=prior.to(device), conditioner=conditioner,
        backbone=backbone, loss=classes["loss"](options["loss"]), metrics=metrics,
        generator=generator.to(device), discriminator=discriminator.to(device), device=device,
        resolved=resolved,
    )


def check_network_memory(
    name: str, backbone: Backbone, spec: DataSpec, num_classes: int, z_dim: int
) -> None:
    """Refuse networks too large for this machine before allocating them: G and D are built
    once on the meta device (no memory, RNG untouched) and their tensors counted; training
    holds each parameter about four times in float32 (weights, gradients, Adam's two moments).

    Linux overcommits, so a too large allocation would not fail but get the process killed.
    A backbone that cannot build on the meta device is not estimated. Raises ``ConfigError``.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            nets = backbone.build(spec, num_classes, z_dim)
    except ConfigError:
        raise
    except Exception:
        return
    tensors = [t for net in nets for t in (*net.parameters(), *net.buffers())]
    need = 4 * sum(t.numel() * t.element_size() for t in tensors)
    available = available_memory()
    if need > available:
        count = sum(t.numel() for t in tensors)
        raise ConfigError(
            f"backbone {name!r}: its networks have {count:,} parameters, about "
            f"{need / 2**30:.1f} GiB to train, {available / 2**30:.1f} GiB is available "
            "(valid: smaller widths, layers, --z-dim or fewer classes)"
        )


@contextlib.contextmanager
def allocation_guard() -> Iterator[None]:
    """An allocation too large for this machine while building a run (a huge dataset size or
    layer width) becomes a one-line ``ConfigError`` instead of a traceback."""
    try:
        yield
    except MemoryError:
        raise ConfigError("not enough memory to build this run; reduce the sizes in its "
                          "options (dataset size, widths, --z-dim)") from None
    except RuntimeError as exc:
        if "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        reason = one_line(exc)[:200]
        raise ConfigError(f"not enough memory to build this run ({reason}); reduce the sizes "
                          "in its options (dataset size, widths, --z-dim)") from None


def check_networks(run: Run) -> None:
    """One forward pass of copies of G and D in training mode, on a batch of the run's size
    (at most 2), before anything is written: a backbone that does not fit the data, or
    BatchNorm with ``--batch-size 1``, fails here in one line instead of inside step 1.

    The run's own networks, buffers and RNG streams are untouched. Raises ``ConfigError``.
    """
    cfg = run.config
    what = (f"backbone {cfg.backbone!r} does not work on dataset {cfg.dataset!r} "
            f"(examples of shape {tuple(run.dataset.spec.shape)})")
    # a batch of 2 first, so that --batch-size 1 is blamed only when 2 works
    for n in sorted({2, min(cfg.batch_size, 2)}, reverse=True):
        try:
            forward_check(run, n)
        except Exception as exc:
            reason = describe(exc)[:300]
            if n < 2:
                raise ConfigError(
                    f"--batch-size {n}: {what} with batches of {n}: {reason} "
                    "(valid: --batch-size 2 or more)"
                ) from None
            raise ConfigError(f"{what}: {reason}") from None


def forward_check(run: Run, n: int) -> None:
    """G and D in training mode, without gradients, on ``n`` examples; shapes checked.

    Buffers that a training-mode forward updates (BatchNorm statistics, spectral norm's
    power-iteration vectors) and the modes are restored after, so training starts exactly as
    without the check, with no copy of the networks in memory.
    """
    spec, device = run.dataset.spec, run.device
    net_classes = run.conditioner.num_classes if run.conditioner.conditions_networks else 1
    nets = (run.generator, run.discriminator)
    modes = [net.training for net in nets]
    saved = [[b.clone() for b in net.buffers()] for net in nets]
    try:
        with run.seeded(run.config.seed), torch.no_grad():
            run.generator.train()
            run.discriminator.train()
            labels = (torch.arange(n) % run.conditioner.num_classes).to(device)
            fake = run.generator(run.prior.sample(n, labels), run.net_labels(labels))
            if tuple(fake.shape) != (n, *spec.shape):
                raise ValueError(f"G made samples of shape {tuple(fake.shape[1:])}")
            real = run.dataset.batch(torch.arange(n) % len(run.dataset)).to(device)
            for x in (real, fake):
                logits, features = run.discriminator(x)
                if tuple(logits.shape) != (n, net_classes) or features.shape[0] != n:
                    raise ValueError(
                        f"D returned logits of shape {tuple(logits.shape)} and features of "
                        f"shape {tuple(features.shape)} (expected ({n}, {net_classes}) and "
                        f"({n}, ...))"
                    )
    finally:
        with torch.no_grad():
            for net, mode, buffers in zip(nets, modes, saved, strict=True):
                net.train(mode)
                for buffer, value in zip(net.buffers(), buffers, strict=True):
                    buffer.copy_(value)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (``MemAvailable``, else all RAM)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_eval_memory(config: RunConfig, dataset: Dataset) -> None:
    """Refuse ``--eval-samples`` whose generated samples cannot fit in memory: they are held
    at once as float32 on the CPU, and concatenation briefly doubles that."""
    per_sample = 4 * math.prod(dataset.spec.shape) + 8  # float32 sample and its int64 label
    need, available = 2 * config.eval_samples * per_sample, available_memory()
    if need > available:
        most = available // (2 * per_sample)
        raise ConfigError(
            f"--eval-samples {config.eval_samples}: the samples need about {need / 2**30:.1f} "
            f"GiB of memory, {available / 2**30:.1f} GiB is available (valid here: at most "
            f"{most} for examples of shape {tuple(dataset.spec.shape)})"
        )


def build_metrics(
    config: RunConfig, pm: PluginManager, dataset: Dataset, resolved: dict[str, Any]
) -> dict[str, Metric]:
    """The run's metrics. With no explicit list: every default metric that supports the
    dataset, skipping (with a warning) those that cannot run here, e.g. for lack of weights."""
    registry = pm.registry("metrics")
    classes = {name: entry.load() for name, entry in registry.items()}
    supported = [n for n, cls in classes.items() if cls.supports(dataset.spec)]
    if config.metrics is None:
        names = [n for n in supported if classes[n].default]
    else:
        names = config.metrics
    unknown_options = set(config.metric_options) - set(names)
    if unknown_options:
        raise ConfigError(
            f"--metric-opt for metric(s) not in this run: {', '.join(sorted(unknown_options))} "
            f"(metrics in this run: {', '.join(names)})"
        )
    metrics = {}
    for name in names:
        cls = pm.get("metrics", name).load()  # an unknown name: error with the choices
        if name not in supported:
            raise ConfigError(
                f"metric {name!r} does not apply to dataset {config.dataset!r} "
                f"(valid: {', '.join(supported)})"
            )
        opts = validate_options("metric", name, cls, config.metric_options.get(name, {}))
        try:
            metric = cls(opts)
            metric.check(dataset)
        except MetricUnavailable as exc:
            if config.metrics is not None:
                raise
            print(f"warning: skipping metric {name!r}: {one_line(exc)}", file=sys.stderr)
            continue
        metrics[name] = metric
        resolved.setdefault("metrics", {})[name] = opts.model_dump(mode="json")
    if not metrics:
        asked = "--metrics names none" if config.metrics is not None else "no metric applies"
        raise ConfigError(
            f"this run would have no metrics: {asked} (metrics for dataset "
            f"{config.dataset!r}: {', '.join(supported) or 'none'})"
        )
    return metrics


def own_logit(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's logit for its own class (the masked multi-output D of Liu et al.)."""
    return logits.gather(1, labels[:, None]).squeeze(1)


class Trainer:
    """The training loop: D step(s) then G step per iteration, as in the papers' code."""

    def __init__(self, run: Run) -> None:
        self.run = run
        cfg = run.config
        self.opt_g = torch.optim.Adam(
            [*run.generator.parameters(), *run.prior.parameters()], lr=cfg.lr_g, betas=cfg.betas
        )
        self.opt_d = torch.optim.Adam(run.discriminator.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        self.in_loop = False
        """Whether a signal can wait for the next step boundary (else it stops at once)."""
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 4)
        self.label_rng = torch.Generator().manual_seed(cfg.seed + 5)
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

    # ------------------------------------------------------------------ steps
    def fake_batch(
        self, n: int, generator: Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of ``generator`` (default: the trained G), y ~ P(c), z ~ p(z|y)."""
        run = self.run
        labels = run.conditioner.sample_labels(n, self.label_rng).to(run.device)
        z = run.prior.sample(n, labels)
        return (generator or run.generator)(z, run.net_labels(labels)), labels

    def step(self) -> dict[str, torch.Tensor]:
        run, cfg = self.run, self.run.config
        size = len(run.dataset)
        for _ in range(cfg.d_steps):
            index = torch.randint(size, (cfg.batch_size,), generator=self.data_rng)
            real = run.dataset.batch(index).to(run.device, non_blocking=True)
            real_logits, features = run.discriminator(real)
            real_labels = run.net_labels(
                run.conditioner.labels_for_real(index, features.detach())
            )
            with torch.no_grad():
                fake, fake_labels = self.fake_batch(cfg.batch_size)
            fake_logits, _ = run.discriminator(fake)
            d_loss = run.loss.discriminator(
                own_logit(real_logits, real_labels),
                own_logit(fake_logits, run.net_labels(fake_labels)),
            )
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        fake, fake_labels = self.fake_batch(cfg.batch_size)
        logits, _ = run.discriminator(fake)
        g_loss = run.loss.generator(own_logit(logits, run.net_labels(fake_labels)))
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "step": run.step,
            "generator": run.generator.state_dict(),
            "discriminator": run.discriminator.state_dict(),
            "prior": run.prior.state_dict(),
            "ema": run.ema_generator.state_dict() if run.ema_generator is not None else None,
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "conditioner": run.conditioner.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.data_rng.get_state(),
                    "labels": self.label_rng.get_state(),
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

    def _load_state_dict(self, state: dict[str, Any]) -> None:
        run = self.run
        run.step = state["step"]
        run.generator.load_state_dict(state["generator"])
        run.discriminator.load_state_dict(state["discriminator"])
        run.prior.load_state_dict(state["prior"])
        if run.ema_generator is not None:
            run.ema_generator.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        run.conditioner.load_state_dict(state["conditioner"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.data_rng.set_state(state["rng"]["data"].cpu())
        self.label_rng.set_state(state["rng"]["labels"].cpu())
        run.timings.update(state["timings"])

    def checkpoint(self) -> None:
        run = self.run
        if run.directory is not None:
            path = run.directory / results.CHECKPOINT
            results.save_checkpoint(path, self.state_dict(), run.identity())
            run.checkpoint_step = run.step

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
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.run.stop_signal = signal.Signals(signum).name
            if self.run.stop_requested or not self.in_loop:
                raise KeyboardInterrupt
            self.run.stop_requested = True

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, request_stop) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

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
        batches = [self.fake_batch(len(chunk), self.run.eval_generator) for chunk in chunks]
        xs, ys = zip(*((x.cpu(), y.cpu()) for x, y in batches), strict=True)
        return torch.cat(xs), torch.cat(ys)

    def evaluate(self) -> dict[str, float]:
        """Every metric, with fixed evaluation seeds; training state (RNG, modes) is untouched.

        Only finite values are returned. A metric that raises ``MetricError`` or returns a
        non-finite value is left out with the reason in ``run.metric_errors`` and a warning.
        """
        run = self.run
        run.metric_errors = {}
        nets = (run.generator, run.discriminator, run.eval_generator)
        modes = [net.training for net in nets]
        label_state = self.label_rng.get_state()
        values: dict[str, float] = {}
        with run.seeded(run.config.seed + 10_000), self.timed("eval_s"):
            self.label_rng.manual_seed(run.config.seed + 10_001)
            for net in nets:
                net.eval()
            try:
                for name, metric in run.metrics.items():
                    with self.timed(f"eval_{name}_s"), self.status(f"evaluating {name}"):
                        values.update(self.compute_metric(name, metric))
            finally:
                self.label_rng.set_state(label_state)
                for net, mode in zip(nets, modes, strict=True):
                    net.train(mode)
        return values


    def compute_metric(self, name: str, metric: Metric) -> dict[str, float]:
        """``metric``'s finite values; the reason it has none (or some) goes to the run."""
        run = self.run
        try:
            computed = metric.compute(self.sample, run)
        except MetricError as exc:
            reason = str(exc)
            computed = {}
        else:
            bad = {k: v for k, v in computed.items() if not is_finite_number(v)}
            reason = "returned non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
            computed = {k: float(v) for k, v in computed.items() if k not in bad}
            if not bad:
                return computed
        run.metric_errors[name] = reason
        print(f"warning: metric {name!r} at step {run.step}: {one_line(reason)}", file=sys.stderr)
        return computed


def is_finite_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def run_name(config: RunConfig) -> str:
    parts = (config.prior, config.cond, config.backbone, config.dataset, f"s{config.seed}")
    return "-".join((*parts, config.short_hash()))


def execute(run: Run, resume: dict[str, Any] | None = None) -> dict[str, float]:
    """Train and evaluate a built run in ``run.directory``; keep run.json's status honest.

    ``resume``: a resume record (``changed`` flags, ...) to continue the run from its
    checkpoint, or from step 0 when it stopped before its first one. The caller holds the
    directory's ``RunLock``. Raises ``KeyboardInterrupt`` (status ``interrupted``),
    ``Diverged`` or any other error (status ``failed``).
    """
    assert run.directory is not None
    directory, notify = run.directory, run.pm.notify
    trainer = Trainer(run)
    now = now_stamp()
    if resume is not None:
        checkpoint = directory / results.CHECKPOINT
        if checkpoint.exists():
            trainer.load_state_dict(results.load_checkpoint(checkpoint, run.identity(), run.device))
        info = results.read_json(directory / results.RUN)
        record = {"time": now, "from_step": run.step, "command": sys.argv, **resume}
        info.update(status="running", resumes=[*info.get("resumes", []), record])
    else:
        info = {"run_id": directory.name, "seed": run.config.seed, "status": "running",
                "started": now, "environment": results.environment()}
    print(f"run directory: {directory}", file=sys.stderr)
    results.atomic_write_json(
        directory / results.CONFIG,
        {"config": run.config.model_dump(mode="json"), "resolved": run.resolved},
    )
    results.atomic_write_json(directory / results.RUN, info)
    try:
        with trainer.interruptible():
            notify("harness_run_started", run=run)
            if run.checkpoint_step is None:
                trainer.setup()
            trainer.train()
            metrics = trainer.evaluate()
            results.atomic_write_json(
                directory / results.METRICS, {**metrics, "eval_samples": run.config.eval_samples}
            )
            notify("harness_evaluated", run=run, step=run.step, metrics=metrics)
            notify("harness_run_finished", run=run, metrics=metrics)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        error = (f"stopped by {run.stop_signal or 'request'}" if status == "interrupted"
                 else f"{type(exc).__name__}: {exc}")
        info.update(status=status, error=error, step=run.step, timings=run.timings,
                    checkpoint_step=run.checkpoint_step)
        results.atomic_write_json(directory / results.RUN, info)
        raise
    run.timings["recluster_share"] = run.timings.get("recluster_s", 0.0) / max(
        run.timings["train_s"], 1e-9
    )
    info.update(status="finished", step=run.step, timings=run.timings, finished=now_stamp(),
                checkpoint_step=run.checkpoint_step)
    info.pop("error", None)
    info.pop("metric_errors", None)
    if run.metric_errors:
        info["metric_errors"] = run.metric_errors
    results.atomic_write_json(directory / results.RUN, info)
    return metrics


def now_stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
