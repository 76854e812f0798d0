"""Build a run from its config: resolve plugins, validate options, build the components and
check, before anything is written, everything that can fail."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import typing
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError

from harness.api import Backbone, BuildContext, DataLocation, Dataset, DataSpec, Metric, Options
from harness.config import COMPONENT_FIELDS, RunConfig, describe_validation_error
from harness.errors import (
    ConfigError,
    HarnessError,
    MetricUnavailable,
    PluginError,
    describe,
    one_line,
)
from harness.loggers import check_loggers
from harness.manager import PluginManager
from harness.run import Run
from harness.step import optimizer_factory

_warned: set[str] = set()
"""Warnings given so far: each once per process (a group of 300 seeds builds 300 runs)."""
_pending_warnings: list[str] = []
"""Warnings of the run being built, given once it is built (a refused run: only its error)."""
_pending_notes: list[str] = []
"""Notes of ``with_component_defaults`` that the next ``build_run(notes=True)`` prints."""


def validate_options(kind: str, name: str, cls: type, values: dict[str, Any]) -> Options:
    """The component's ``Options`` from ``values``; errors name the component and valid keys.
    A list or tuple option given as text (``--metric-opt fid_digits.metrics=fid,kid``,
    ``--cond-opt betas=0.5,0.999``) is split at its commas."""
    fields = cls.Options.model_fields
    values = {key: [item.strip() for item in value.split(",")]
              if isinstance(value, str) and key in fields and takes_list(fields[key].annotation)
              else value for key, value in values.items()}
    try:
        return cls.Options.model_validate(values)
    except ValidationError as exc:
        fields = list(cls.Options.model_fields)
        message = describe_validation_error(exc, f"{kind} {name!r} option", fields)
        raise ConfigError(message) from None


def takes_list(annotation: Any) -> bool:
    """Whether an option's type is a list or a tuple (or one of them or None)."""
    if typing.get_origin(annotation) in (list, tuple):
        return True
    return any(typing.get_origin(arg) in (list, tuple) for arg in typing.get_args(annotation))


def owners_hint(pm: PluginManager, fld: str, family: str, values: set[str]) -> str:
    """For options the chosen plugin does not have: the plugins of the family that have them
    all (``--reg-opt gamma=10`` without ``--reg r1``), as a hint to append; else ""."""
    owners = pm.option_owners(family, values)
    return f"; {', '.join(sorted(values))}: an option of --{fld} {' / '.join(owners)}" if (
        owners and values) else ""


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (valid: cpu, auto)")
    return torch.device(choice)


def build_run(config: RunConfig, pm: PluginManager, *, notes: bool = True,
              warnings: bool = True) -> Run:
    """Resolve and validate every plugin and option, then build the components.

    ``notes``: print, once the run is built, notes on settings that train other than one
    might expect (e.g. a re-clustering schedule that never fires); off when the run is
    built only to check or restore it, or as one more seed of a group. ``warnings``: print,
    once it is built, why metrics were skipped (each warning once per process); off when
    the run's metrics will not be computed. Raises ``HarnessError`` on any bad input, before
    anything is written to disk.
    """
    _pending_warnings.clear()  # of a build that was refused
    classes, options, resolved = {}, {}, {}
    for fld, family in COMPONENT_FIELDS.items():
        name = getattr(config, fld)
        entry = pm.get(family, name)
        classes[fld] = entry.load()
        values = getattr(config, f"{fld}_options")
        try:
            options[fld] = validate_options(fld, name, classes[fld], values)
        except ConfigError as exc:
            unknown = set(values) - set(classes[fld].Options.model_fields)
            raise ConfigError(f"{exc}{owners_hint(pm, fld, family, unknown)}") from None
        resolved[fld] = {"name": name, "provider": entry.provider,
                         "options": options[fld].model_dump(mode="json")}
    check_loggers(config, pm)
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    with allocation_guard():
        run = build_components(config, pm, classes, options, resolved, device)
        check_networks(run)
    check_eval_memory(config, run.dataset)
    best_metric_direction(run)
    run.conditioner.bind(run.models)
    if warnings:  # after every check: a refused run prints only its error
        give_warnings()
    _pending_warnings.clear()
    if notes:
        for note in [*_pending_notes, *training_notes(run)]:
            print(f"note: {note}", file=sys.stderr)
        _pending_notes.clear()
    return run


def training_notes(run: Run) -> list[str]:
    """Settings of a built run that train other than one might expect: a mixture prior with
    another number of components than the conditioner's classes; a re-clustering schedule
    (a conditioner option ``recluster_every``) that never fires within the run's steps."""
    config, notes = run.config, []
    classes = run.conditioner.num_classes
    components = getattr(run.prior, "num_components", None)
    if components not in (None, classes) and classes > 1:
        notes.append(f"prior {config.prior!r} has {components} components and cond "
                     f"{config.cond!r} gives {classes} classes: each latent's component is "
                     "drawn uniformly, independent of its label (one Gaussian per class: "
                     f"--prior-opt num_components={classes})")
    every = run.resolved["cond"]["options"].get("recluster_every", 0)
    if isinstance(every, int) and every >= config.steps > 0:
        notes.append(f"--cond {config.cond} re-clusters every {every} steps: this run of "
                     f"{config.steps} keeps the partition of step 0 (D untrained) throughout "
                     f"(e.g. --cond-opt recluster_every={max(1, config.steps // 5)} re-clusters "
                     "during it)")
    return notes


def best_metric_direction(run: Run) -> Literal["higher", "lower"] | None:
    """Which way the run's ``--best-metric`` key improves (``Metric.direction`` of the first
    of the run's metrics with a ``better`` pattern matching it); None without the flag.

    Raises ``ConfigError`` (one line) when none of the run's metrics names the key (the
    valid choices: their key patterns that have a direction), when the metric whose pattern
    matches it knows its keys (``Metric.keys``) and this is none of them (``fid_digits_10k``
    for a run that evaluates 500 samples), when the key has no direction
    (a spread such as ``kid_digits_10k_std``), or when the run evaluates only at its end
    (``--eval-every`` 0: the last checkpoint would be the only candidate).
    """
    cfg = run.config
    key = cfg.best_metric
    if key is None:
        return None
    owner = next((name for name, metric in run.metrics.items()
                  if any(fnmatch(key, pattern) for pattern in type(metric).better)), None)
    if owner is None:
        choices = ", ".join(f"{pattern} ({name})" for name, metric in run.metrics.items()
                            for pattern, way in type(metric).better.items() if way)
        raise ConfigError(f"--best-metric {key}: no metric of this run ({', '.join(run.metrics)})"
                          f" gives that key (valid: {choices or 'none has a direction'})")
    known = run.metrics[owner].keys(cfg)
    if known is not None and key not in known:
        raise ConfigError(f"--best-metric {key}: metric {owner!r} of this run gives "
                          f"{', '.join(sorted(known))} with its options (valid: one of them "
                          "that has a direction, or change the metric's options)")
    direction = run.metrics[owner].direction(key)
    if direction is None:
        raise ConfigError(f"--best-metric {key}: metric {owner!r} gives it no direction (better "
                          "is neither higher nor lower, e.g. a spread); valid: a key with one, "
                          + ", ".join(p for p, way in type(run.metrics[owner]).better.items()
                                      if way))
    if not cfg.eval_every:
        raise ConfigError(f"--best-metric {key}: the run evaluates only at its end, so the "
                          "last checkpoint would be the only candidate (valid: with "
                          "--eval-every N, N > 0, given when the run starts: a resumed run "
                          "keeps its evaluation schedule)")
    return direction


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
    context = BuildContext(dataset, config.prior, options["prior"], config.seed, device,
                           optimizer_factory(config))
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
        backbone=backbone, loss=classes["loss"](options["loss"]),
        regularizer=classes["reg"](options["reg"], dataset.spec),
        augmentation=classes["augment"](options["augment"], dataset.spec), metrics=metrics,
        generator=generator.to(device), discriminator=discriminator.to(device), device=device,
        resolved=resolved,
    )


def busy_cpu(config: RunConfig, device: torch.device) -> str | None:
    """A note when a CPU run takes torch's default thread count (one per core) on a machine
    whose cores other processes already keep busy: the threads then wait on each other, and
    one thread per run was measured up to 70x faster on 2 loaded cores."""
    if device.type != "cpu" or config.threads is not None or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if cores == 1 or load < cores:
        return None
    return (f"the CPU is busy (load {load:.1f} on {cores} cores): torch's {cores} threads will "
            "wait on each other; --threads 1 is usually much faster here")


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


def warn_after_build(message: str) -> None:
    """Keep ``warning: <message>`` for the end of the build (``give_warnings``)."""
    _pending_warnings.append(message)


def give_warnings() -> None:
    """Print the build's pending warnings, each once per process."""
    for message in _pending_warnings:
        if message not in _warned:
            _warned.add(message)
            print(f"warning: {message}", file=sys.stderr)


def build_metrics(
    config: RunConfig, pm: PluginManager, dataset: Dataset, resolved: dict[str, Any]
) -> dict[str, Metric]:
    """The run's metrics. With no explicit list: every default metric that supports the
    dataset, skipping (with a warning) those that cannot run here, e.g. for lack of weights."""
    classes, supported, broken = {}, [], {}
    for name, entry in pm.registry("metrics").items():
        try:
            classes[name] = entry.load()
            if classes[name].supports(dataset.spec):
                supported.append(name)
        except Exception as exc:  # a broken plugin stops only the runs that ask for it
            classes.pop(name, None)
            broken[name] = (f"metric {name!r} from {entry.provider}: "
                            f"{one_line(f'{type(exc).__name__}: {exc}')}")
    if config.metrics is None:
        names = [n for n in supported if classes[n].default]
    else:
        names = config.metrics
    for name, reason in broken.items():
        if name in names:
            raise PluginError(reason)
        warn_after_build(f"skipping {reason}")
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
        given = config.metric_options.get(name, {})
        opts = validate_options("metric", name, cls, {**cls.option_defaults(config), **given})
        try:
            metric = cls(opts)
            metric.check(dataset)
        except MetricUnavailable as exc:
            if config.metrics is not None:
                raise
            warn_after_build(f"skipping metric {name!r}: {one_line(exc)}")
            continue
        metrics[name] = metric
        resolved.setdefault("metrics", {})[name] = metric.resolved()
    if not metrics:
        asked = "--metrics names none" if config.metrics is not None else "no metric applies"
        raise ConfigError(
            f"this run would have no metrics: {asked} (metrics for dataset "
            f"{config.dataset!r}: {', '.join(supported) or 'none'})"
        )
    return metrics


def with_component_defaults(
    values: dict[str, Any], pm: PluginManager, notes: bool = True
) -> dict[str, Any]:
    """``values`` plus the ``run_defaults`` of the chosen components for the settings that
    ``values`` leave unset; unknown components are left to the build's error. With
    ``notes``, a note for each is kept for the next ``build_run(notes=True)`` to print once
    the run is built (a refused run prints only its error)."""
    values = dict(values)
    if notes:
        _pending_notes.clear()
    for fld, family in COMPONENT_FIELDS.items():
        name = values.get(fld, RunConfig.model_fields[fld].default)
        if not isinstance(name, str):  # make_config names the bad value
            continue
        try:
            defaults = pm.get(family, name).load().run_defaults
        except HarnessError:
            continue
        for key, value in defaults.items():
            if key in RunConfig.model_fields and key not in values:
                values[key] = value
                if notes:
                    flag = "--" + key.replace("_", "-")
                    _pending_notes.append(f"--{fld} {name} sets {key}={value!r} ({flag} to "
                                          "change)")
    return values
