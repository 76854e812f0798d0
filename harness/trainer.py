"""Build a run from its config, train it, evaluate it, and keep its directory current."""

from __future__ import annotations

import contextlib
import copy
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
    Discriminator,
    Generator,
    Loss,
    Metric,
    Models,
    Options,
    Prior,
)
from harness.config import COMPONENT_FIELDS, RunConfig, describe_validation_error
from harness.errors import ConfigError, MetricUnavailable
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
    timings: dict[str, float] = field(default_factory=dict)

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
    location = DataLocation(config.data_root, config.download)
    dataset = classes["dataset"](options["dataset"], config.seed, location)
    metrics = build_metrics(config, pm, dataset, resolved)
    context = BuildContext(dataset, config.prior, options["prior"], config.seed)
    conditioner = classes["cond"](options["cond"], context)
    backbone = classes["backbone"](options["backbone"])
    z_dim = config.z_dim or backbone.default_z_dim
    prior = classes["prior"](options["prior"], z_dim, conditioner.num_classes)
    net_classes = conditioner.num_classes if conditioner.conditions_networks else 1
    generator, discriminator = backbone.build(dataset.spec, net_classes, z_dim)
    resolved["z_dim"] = z_dim
    return Run(
        config=config, pm=pm, dataset=dataset, prior=prior.to(device), conditioner=conditioner,
        backbone=backbone, loss=classes["loss"](options["loss"]), metrics=metrics,
        generator=generator.to(device), discriminator=discriminator.to(device), device=device,
        resolved=resolved,
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
            metrics[name] = cls(opts)
        except MetricUnavailable as exc:
            if config.metrics is not None:
                raise
            print(f"warning: skipping metric {name!r}: {exc}", file=sys.stderr)
            continue
        resolved.setdefault("metrics", {})[name] = opts.model_dump(mode="json")
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
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.data_rng.set_state(state["rng"]["data"])
        self.label_rng.set_state(state["rng"]["labels"])
        run.timings.update(state["timings"])

    def checkpoint(self) -> None:
        if self.run.directory is not None:
            results.save_checkpoint(self.run.directory / results.CHECKPOINT, self.state_dict())

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

        Ctrl-C (or a hook setting ``run.stop_requested``) stops at the next step boundary,
        checkpoints, and raises ``KeyboardInterrupt``; a second Ctrl-C stops at once.
        """
        run, cfg, hook = self.run, self.run.config, self.run.pm.hook
        run.generator.train()
        run.discriminator.train()
        with self.progress() as advance, self.graceful_interrupt():
            while run.step < cfg.steps:
                with self.timed("train_s"):
                    losses = self.step()
                    run.step += 1
                    self.update_ema()
                    with self.timed("recluster_s"):
                        changed = run.conditioner.update(run.step, run.models)
                    if changed is not None:
                        hook.harness_labels_updated(
                            run=run, step=run.step, changed_fraction=changed
                        )
                    hook.harness_step_end(run=run, step=run.step, losses=losses)
                    advance(run.step, losses)
                last = run.step == cfg.steps
                if cfg.eval_every and run.step % cfg.eval_every == 0 and not last:
                    hook.harness_evaluated(run=run, step=run.step, metrics=self.evaluate())
                if run.stop_requested or last or run.step % cfg.checkpoint_every == 0:
                    self.checkpoint()
                    if run.stop_requested:
                        raise KeyboardInterrupt
        run.timings["ms_per_step"] = 1000 * run.timings.get("train_s", 0.0) / max(cfg.steps, 1)

    @contextlib.contextmanager
    def graceful_interrupt(self) -> Iterator[None]:
        """Turn the first SIGINT into ``run.stop_requested`` (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            if self.run.stop_requested:
                raise KeyboardInterrupt
            self.run.stop_requested = True

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

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
        """Every metric, with fixed evaluation seeds; training state (RNG, modes) is untouched."""
        run = self.run
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
                        values.update(metric.compute(self.sample, run))
            finally:
                self.label_rng.set_state(label_state)
                for net, mode in zip(nets, modes, strict=True):
                    net.train(mode)
        return values


def run_name(config: RunConfig) -> str:
    parts = (config.prior, config.cond, config.backbone, config.dataset, f"s{config.seed}")
    return "-".join((*parts, config.short_hash()))


def execute(run: Run, resume: bool = False) -> dict[str, float]:
    """Train and evaluate a built run in ``run.directory``; keep run.json's status honest."""
    assert run.directory is not None
    directory, hook = run.directory, run.pm.hook
    trainer = Trainer(run)
    info = {"run_id": directory.name, "seed": run.config.seed, "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": results.environment()}
    if resume:
        info = {**results.read_json(directory / results.RUN), "status": "running"}
        trainer.load_state_dict(torch.load(directory / results.CHECKPOINT, weights_only=False))
    else:
        results.atomic_write_json(
            directory / results.CONFIG,
            {"config": run.config.model_dump(mode="json"), "resolved": run.resolved},
        )
    results.atomic_write_json(directory / results.RUN, info)
    hook.harness_run_started(run=run)
    try:
        if not resume:
            trainer.setup()
        trainer.train()
        metrics = trainer.evaluate()
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        info.update(status=status, error=f"{type(exc).__name__}: {exc}", step=run.step,
                    timings=run.timings)
        results.atomic_write_json(directory / results.RUN, info)
        raise
    results.atomic_write_json(
        directory / results.METRICS, {**metrics, "eval_samples": run.config.eval_samples}
    )
    hook.harness_evaluated(run=run, step=run.step, metrics=metrics)
    run.timings["recluster_share"] = run.timings.get("recluster_s", 0.0) / max(
        run.timings["train_s"], 1e-9
    )
    info.update(status="finished", step=run.step, timings=run.timings,
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    info.pop("error", None)
    results.atomic_write_json(directory / results.RUN, info)
    hook.harness_run_finished(run=run, metrics=metrics)
    return metrics
