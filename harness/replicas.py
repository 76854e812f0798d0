"""N seeds of one composition trained together: stacked networks and a vectorised step.

``harness run --seeds 0-9`` builds N ordinary runs that differ only in seed. ``Replicas``
stacks their G, D and EMA G parameters and buffers along a new leading dimension (torch.func
``stack_module_state``) and trains them with one vectorised forward and backward pass per
network (``vmap`` over ``functional_call``) and one optimiser step per network, so the N
replicas share the hardware instead of running one after another. Each run's own modules
are re-pointed at its slice of the stacks, so conditioners (re-clustering on D's
features), metrics and checkpoints see an ordinary single-seed run, and every run directory
is an ordinary one (resumable alone with ``harness run --resume``).

What is identical to N separate runs, and what agrees to float tolerance:

- Bit-identical: every random draw (each replica keeps its own data, label and global torch
  RNG streams, swapped in around its own sampling), hence the real batches' indices, the
  fake labels and z at a given step, as long as the trajectories agree; the optimiser's
  arithmetic (Adam/AdamW are element-wise).
- Float tolerance: the networks' outputs and gradients. A batched matrix product is not
  guaranteed to round like N separate ones, so losses and weights drift apart by float32
  rounding (relative 1e-6 after a step) and, GAN training being chaotic, later steps
  diverge like two runs on different hardware. Metrics agree statistically, not bitwise.

Compositions whose components add terms to D's or G's loss (``StepTerms.d_terms`` /
``g_terms``: slcGAN's clustering network, R1), priors with learned
parameters, and backbones that ``vmap`` cannot batch (spectral norm's in-place power
iteration, dropout) are trained one seed after another instead; ``blocker`` says why.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.utils.spectral_norm import SpectralNorm as SpectralNormHook

from harness.api import Scored, StepTerms
from harness.errors import Diverged, describe
from harness.run import Run
from harness.signals import on_stop_signals
from harness.step import add_terms, logged, optimizer_factory, total
from harness.trainer import Trainer

STEP_HOOKS = ("d_terms", "g_terms")


def blocker(run: Run) -> str | None:
    """Why ``run``'s composition cannot be trained vectorised, in a few words; None if it can."""
    cfg = run.config
    if any(True for _ in run.prior.parameters()):
        return f"prior {cfg.prior!r} has learned parameters"
    for fld, part in (("cond", run.conditioner), ("reg", run.regularizer)):
        overridden = [h for h in STEP_HOOKS
                      if getattr(type(part), h) is not getattr(StepTerms, h)]
        if overridden or part.needs_real_grad:
            return f"{fld} {getattr(cfg, fld)!r} adds its own terms to the training step"
    if type(run.augmentation).d_terms is not StepTerms.d_terms:
        return f"augment {cfg.augment!r} adds its own terms to the training step"
    if any(spectral_norm(m) for net in (run.generator, run.discriminator) for m in net.modules()):
        return f"backbone {cfg.backbone!r} uses spectral norm (its power iteration updates " \
            "its buffers in place, which vmap cannot batch)"
    try:
        probe(run)
    except Exception as exc:  # no batching rule, data-dependent control flow, RNG inside
        return f"backbone {cfg.backbone!r} cannot be vectorised ({describe(exc)[:160]})"
    return None


def spectral_norm(module: nn.Module) -> bool:
    """Whether ``module`` has spectral norm applied, in either of torch's two forms (the
    parametrization's class is private, so it is recognised by name)."""
    parametrized = getattr(module, "parametrizations", {})
    return any("SpectralNorm" in type(p).__name__ for ps in parametrized.values() for p in ps
               ) or any(
        isinstance(hook, SpectralNormHook) for hook in module._forward_pre_hooks.values())


def probe(run: Run) -> None:
    """A vectorised forward and backward pass of two copies of G and D on two examples;
    raises what ``vmap`` raises. Leaves ``run`` and the global RNG untouched."""
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        g = Stacked([copy.deepcopy(run.generator) for _ in range(2)])
        d = Stacked([copy.deepcopy(run.discriminator) for _ in range(2)])
        labels = torch.zeros(2, 2, dtype=torch.long, device=run.device)
        z = run.prior.sample(4, labels.flatten()).view(2, 2, -1)
        logits, features = d(g(z, labels))
        (logits.sum() + features.sum()).backward()


class Stacked:
    """N copies of one module as stacked parameters and buffers (leading dimension N),
    called with ``vmap`` over ``functional_call``; each copy's own parameters and buffers
    become views of its slice, so the copies always hold the current values.
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.params, self.buffers = stack_module_state(modules)  # detached copies
        template = copy.deepcopy(modules[0]).to("meta")
        for i, module in enumerate(modules):
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                stack = self.params.get(name, self.buffers.get(name))
                tensor.data = stack.data[i]

        def call(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 *args: torch.Tensor) -> Any:
            return functional_call(template, (params, buffers), args)

        self.template = template
        self.call = vmap(call)

    def __call__(self, *args: torch.Tensor) -> Any:
        """The N modules on their own slices of ``args`` (each (N, n, ...))."""
        self.template.train(self.modules[0].training)
        return self.call(self.params, self.buffers, *args)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())

    def requires_grad_(self, flag: bool) -> None:
        for p in self.params.values():
            p.requires_grad_(flag)


def stacked_optimizer(run: Run, stack: Stacked, singles: list[torch.optim.Optimizer],
                      lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    """One optimiser of the runs' kind over ``stack``, holding the per-seed optimisers'
    state stacked (their moments and step count; empty on a fresh start)."""
    optimizer = optimizer_factory(run.config)(stack.parameters(), lr, betas)
    states = [single.state_dict() for single in singles]
    if states[0]["state"]:
        state = {
            j: {key: (torch.stack([s["state"][j][key] for s in states])
                      if value.dim() else value)
                for key, value in entry.items()}
            for j, entry in states[0]["state"].items()
        }
        optimizer.load_state_dict({"state": state, "param_groups": states[0]["param_groups"]})
    return optimizer


def slice_state(optimizer: torch.optim.Optimizer, i: int, single: torch.optim.Optimizer
                ) -> dict[str, Any]:
    """Replica ``i``'s part of the stacked ``optimizer``'s state, as ``single``'s state dict."""
    stacked = optimizer.state_dict()
    state = {j: {key: value[i] if torch.is_tensor(value) and value.dim() else value
                 for key, value in entry.items()}
             for j, entry in stacked["state"].items()}
    groups = [{**g, "params": own["params"]}
              for g, own in zip(stacked["param_groups"], single.state_dict()["param_groups"],
                                strict=True)]
    return {"state": state, "param_groups": groups}


def rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The global torch RNG state (CPU, and ``device``'s when it is a CUDA device)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def clone_tensors(value: Any) -> Any:
    """``value`` with every tensor cloned (a view of a stack would save the whole stack)."""
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone_tensors(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(clone_tensors(v) for v in value)
    return value


@dataclass
class Replica:
    """One seed's run, its trainer (step, optimisers, RNG streams) and global RNG state."""

    run: Run
    trainer: Trainer
    rng_state: torch.Tensor
    cuda_state: torch.Tensor | None
    last_finite: tuple[int, dict[str, torch.Tensor]] | None = None
    failure: BaseException | None = None


class Replicas:
    """Trains built runs that differ only in seed, vectorised (see the module docstring).

    ``rng_states``: each run's global torch RNG state as ``build_run`` left it (CPU, and the
    run's CUDA device), so z is drawn exactly as in its single-seed run. Every run must have
    its directory; the caller holds their locks.
    """

    def __init__(self, runs: list[Run], rng_states: list[tuple[torch.Tensor, Any]]) -> None:
        self.replicas = [Replica(run, Trainer(run), cpu, cuda)
                         for run, (cpu, cuda) in zip(runs, rng_states, strict=True)]
        self.config = runs[0].config
        self.device = runs[0].device
        self.stop_requested = False
        self.stop_signal: str | None = None
        self.in_loop = False

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.failure is None]

    @contextlib.contextmanager
    def rng(self, replica: Replica) -> Iterator[None]:
        """The replica's own global RNG stream (CPU and CUDA) inside the block."""
        cuda = self.device.type == "cuda"
        torch.set_rng_state(replica.rng_state)
        if cuda and replica.cuda_state is not None:
            torch.cuda.set_rng_state(replica.cuda_state, self.device)
        try:
            yield
        finally:
            replica.rng_state = torch.get_rng_state()
            if cuda:
                replica.cuda_state = torch.cuda.get_rng_state(self.device)

    # ------------------------------------------------------------------ stacking
    def stack(self) -> None:
        """Stack the live replicas' networks and optimiser states (again after one fails)."""
        live = self.live
        runs = [r.run for r in live]
        steps = [r.trainer.training_step for r in live]
        cfg = self.config
        self.g = Stacked([run.generator for run in runs])
        self.d = Stacked([run.discriminator for run in runs])
        self.ema = (Stacked([run.ema_generator for run in runs])
                    if runs[0].ema_generator is not None else None)
        self.opt_g = stacked_optimizer(runs[0], self.g, [s.opt_g for s in steps],
                                       cfg.lr_g, cfg.network_betas("g"))
        self.opt_d = stacked_optimizer(runs[0], self.d, [s.opt_d for s in steps],
                                       cfg.lr_d, cfg.network_betas("d"))

    def sync_optimizers(self) -> None:
        """Copy each live replica's slice of the stacked optimiser states into its own."""
        for i, replica in enumerate(self.live):
            step = replica.trainer.training_step
            step.opt_g.load_state_dict(slice_state(self.opt_g, i, step.opt_g))
            step.opt_d.load_state_dict(slice_state(self.opt_d, i, step.opt_d))

    # ------------------------------------------------------------------ the step
    def augmented(self, x: torch.Tensor) -> torch.Tensor:
        """Each replica's augmentation on its slice of ``x`` (N, n, ...), its own RNG."""
        parts = []
        for i, replica in enumerate(self.live):
            with self.rng(replica):
                parts.append(replica.run.augmentation(x[i]))
        return torch.stack(parts)

    def fake_inputs(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Stacked z (N, n, z_dim) and network labels (N, n), and each replica's labels,
        drawn as ``TrainingStep`` draws them beside its last real batch."""
        zs, net_labels, labels = [], [], []
        for replica in self.live:
            run, step = replica.run, replica.trainer.training_step
            with self.rng(replica):
                y = run.conditioner.fake_labels(step.real_condition, step.label_rng)
                y = y.to(run.device)
                n = len(y)
                zs.append(run.prior.sample(n, y))
            labels.append(y)
            net_labels.append(run.net_labels(y))
        return torch.stack(zs), torch.stack(net_labels), labels

    def update_d(self) -> list[dict[str, torch.Tensor]]:
        live = self.live
        reals = [r.trainer.training_step.real_batch() for r in live]
        x = torch.stack([x for _, x in reals])
        logits, features = self.d(self.augmented(x))
        conditions = []
        for i, replica in enumerate(live):
            with self.rng(replica):
                index, x_i = reals[i]
                condition = replica.run.conditioner.labels_for_real(
                    index, features[i].detach(), x_i)
                replica.trainer.training_step.real_condition = condition
                conditions.append(replica.run.net_labels(condition))
        with torch.no_grad():
            z, net_labels, _ = self.fake_inputs()
            fake_x = self.g(z, net_labels)
        fake_logits, fake_features = self.d(self.augmented(fake_x))
        losses = []
        for i, replica in enumerate(live):
            run = replica.run
            real = Scored(x[i], conditions[i], logits[i], features[i], run.discriminator,
                          reals[i][0])
            fake = Scored(fake_x[i], net_labels[i], fake_logits[i], fake_features[i],
                          run.discriminator)
            losses.append(run.loss.discriminator(real.score, fake.score))
        return self.descend(self.opt_d, "d_loss", losses)

    def update_g(self) -> list[dict[str, torch.Tensor]]:
        z, net_labels, _ = self.fake_inputs()
        fake_x = self.g(z, net_labels)
        self.d.requires_grad_(False)  # G's step needs D's input gradients only
        try:
            logits, features = self.d(self.augmented(fake_x))
        finally:
            self.d.requires_grad_(True)
        losses = []
        for i, replica in enumerate(self.live):
            run = replica.run
            fake = Scored(fake_x[i], net_labels[i], logits[i], features[i], run.discriminator)
            losses.append(run.loss.generator(fake.score))
        return self.descend(self.opt_g, "g_loss", losses)

    @staticmethod
    def descend(optimizer: torch.optim.Optimizer, name: str, losses: list[torch.Tensor]
                ) -> list[dict[str, torch.Tensor]]:
        """One step on the sum of the replicas' losses: each replica's slice of the gradient
        is its own loss's gradient (the others' terms do not depend on its parameters)."""
        optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        optimizer.step()
        return [logged(name, loss, {name: loss}) for loss in losses]

    def step(self) -> list[dict[str, torch.Tensor]]:
        """One iteration of every live replica; each one's detached losses."""
        for _ in range(self.config.d_steps):
            d_losses = self.update_d()
        g_losses = self.update_g()
        losses = [{**d, **g} for d, g in zip(d_losses, g_losses, strict=True)]
        for replica, values in zip(self.live, losses, strict=True):
            step = replica.trainer.training_step
            with self.rng(replica):
                for who, part in step.parts:
                    add_terms(values, who, "train_own", part.train_own, step)
        return losses

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        cfg = self.config
        if self.ema is None or cfg.ema_decay is None:
            return
        weight = 1.0 - cfg.ema_decay if step >= cfg.ema_start else 1.0
        for name, averaged in self.ema.params.items():
            averaged.lerp_(self.g.params[name], weight)
        for name, averaged in self.ema.buffers.items():
            averaged.copy_(self.g.buffers[name])

    # ------------------------------------------------------------------ the loop
    def setup(self) -> None:
        """Each fresh replica's conditioner setup (its first clustering), on its own RNG."""
        for replica in self.replicas:
            if replica.run.checkpoint_step is None:
                with self.rng(replica):
                    replica.trainer.setup()

    def train(self, progress: Callable[[int, dict[str, torch.Tensor]], None]) -> None:
        """Train every replica from its ``run.step`` to ``config.steps``, as ``Trainer.train``
        does. A replica whose losses turn non-finite gets its ``failure`` (``Diverged``, the
        step it happened at and its last finite losses) and leaves the stacks; the others go
        on. A stop request (``stop_requested``, set by a signal, or a hook setting a run's
        ``run.stop_requested``) checkpoints every live replica
        at the step boundary and raises ``KeyboardInterrupt``.

        ``progress(step, losses)`` is called after every step with the first live replica's
        losses.
        """
        cfg = self.config
        for replica in self.replicas:
            replica.run.generator.train()
            replica.run.discriminator.train()
        self.stack()
        step = self.replicas[0].run.step
        self.in_loop = True
        while step < cfg.steps and self.live:
            start = time.perf_counter()
            live = self.live
            losses = self.step()
            finite = torch.stack([total(values) for values in losses]).isfinite().tolist()
            if not all(finite):
                self.sync_optimizers()  # while the stacks still hold every live replica
                for replica, values, ok in zip(live, losses, finite, strict=True):
                    if not ok:
                        replica.failure = Diverged(
                            replica.trainer.divergence_message(values, replica.last_finite))
                live = self.live
                losses = [v for v, ok in zip(losses, finite, strict=True) if ok]
                if live:
                    self.stack()
            step += 1
            self.update_ema(step)
            for replica, values in zip(live, losses, strict=True):
                run = replica.run
                run.step = step
                replica.last_finite = (step, values)
                with self.rng(replica), replica.trainer.timed("recluster_s"):
                    changed = run.conditioner.update(step, run.models)
                if changed is not None:
                    run.pm.notify("harness_labels_updated", run=run, step=step,
                                  changed_fraction=changed)
                run.pm.notify("harness_step_end", run=run, step=step, losses=values)
            if live:
                progress(step, losses[0])
            elapsed = time.perf_counter() - start
            for replica in live:
                timings = replica.run.timings
                timings["train_s"] = timings.get("train_s", 0.0) + elapsed
            last = step == cfg.steps
            if cfg.eval_every and step % cfg.eval_every == 0 and not last:
                for replica in live:
                    with self.rng(replica):
                        metrics = replica.trainer.evaluate()
                    replica.run.pm.notify("harness_evaluated", run=replica.run, step=step,
                                          metrics=metrics)
            stop = self.stop_requested or any(r.run.stop_requested for r in live)
            if stop or last or step % cfg.checkpoint_every == 0:
                self.checkpoint()
                if stop:
                    raise KeyboardInterrupt
        self.in_loop = False
        for replica in self.replicas:
            timings = replica.run.timings
            timings["ms_per_step"] = 1000 * timings.get("train_s", 0.0) / max(cfg.steps, 1)
            timings["replicas"] = len(self.replicas)

    def checkpoint(self) -> None:
        """Each live replica's ordinary checkpoint in its own run directory."""
        self.sync_optimizers()
        for replica in self.live:
            run = replica.run
            assert run.directory is not None
            with self.rng(replica):  # the checkpoint records the replica's global RNG
                state = clone_tensors(replica.trainer.state_dict())
            replica.trainer.save_checkpoint(state)

    def evaluate(self, replica: Replica) -> dict[str, float]:
        """The replica's final evaluation (``Trainer.evaluate``), on its own RNG."""
        with self.rng(replica):
            return replica.trainer.evaluate()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """SIGINT / SIGTERM as in ``Trainer.interruptible``: in the loop the first one stops
        every replica at the step boundary (checkpointed); elsewhere, or a second, at once."""
        def request_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signal.Signals(signum).name
            for replica in self.replicas:
                replica.run.stop_signal = self.stop_signal
            if self.stop_requested or not self.in_loop:
                raise KeyboardInterrupt
            self.stop_requested = True

        with on_stop_signals(request_stop):
            yield
