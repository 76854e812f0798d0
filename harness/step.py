"""One training iteration as a sum of terms: D's update(s), G's, then the components' own.

The adversarial ``Loss`` gives the base term of D's and G's losses; the conditioner, the
regulariser (``--reg``) and the augmentation (``--augment``) add theirs through the
``StepTerms`` hooks of ``harness.api``, and may train networks of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.api import Generator, OptimizerFactory, Scored
from harness.errors import RunFailed, describe

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.run import Run

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
}
FUSED_DEVICES = ("cpu", "cuda")


def optimizer_factory(config: RunConfig) -> OptimizerFactory:
    """``make(parameters, lr, betas=None)``: an optimiser of ``config.optimizer``'s kind with
    its ``weight_decay``; ``betas=None`` takes D's betas.

    The fused implementation (one kernel per step for all parameters) on CPU and CUDA, the
    multi-tensor (``foreach``) one elsewhere. Fused is the same algorithm; it rounds
    differently from ``foreach`` and the per-parameter loop in the last bit (measured: at
    most 1.2e-7 after 5 steps) and makes the 2-D ``mlp`` step 1.13x faster on CPU
    (``benchmarks/bench_official.py``). A resumed run keeps the implementation it was
    saved with (the optimiser's state dict carries it), so resuming stays exact."""
    kind = OPTIMIZERS[config.optimizer]
    decay = {} if config.weight_decay is None else {"weight_decay": config.weight_decay}

    def make(
        parameters: list[nn.Parameter], lr: float, betas: tuple[float, float] | None = None
    ) -> torch.optim.Optimizer:
        parameters = list(parameters)
        fused = all(p.device.type in FUSED_DEVICES for p in parameters)
        return kind(parameters, lr=lr, betas=betas or config.network_betas("d"), **decay,
                    **({"fused": True} if fused else {"foreach": True}))

    return make


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """The terms' sum, added in order (a single term is returned as it is)."""
    values = iter(terms.values())
    result = next(values)
    for value in values:
        result = result + value
    return result


def logged(loss_name: str, loss: torch.Tensor, terms: dict[str, torch.Tensor]
           ) -> dict[str, torch.Tensor]:
    """What the log shows of one update: ``loss_name`` is the total ``loss`` (the base term
    alone when there is no other), followed by every added term; all detached."""
    return {loss_name: loss.detach(),
            **{name: value.detach() for name, value in list(terms.items())[1:]}}


def add_terms(
    terms: dict[str, torch.Tensor], who: str, hook: str,
    method: Callable[..., dict[str, torch.Tensor]], *args: Any,
) -> None:
    """Add the terms ``method(*args)`` returns to ``terms``. ``RunFailed`` names the component
    when it raises or returns a key already taken (it would replace a loss or term)."""
    try:
        added = method(*args)
    except Exception as exc:
        raise RunFailed(f"{who} failed in {hook}: {describe(exc)}") from exc
    taken = terms.keys() & added.keys()
    if taken:
        raise RunFailed(f"{who}: {hook} returned {', '.join(sorted(taken))}, already in the "
                        f"step's terms ({', '.join(terms)}); valid: keys of its own, e.g. "
                        "prefixed with d_ / g_ and its name")
    terms.update(added)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """``module``'s parameters need no gradient inside the block (their flags restored)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class TrainingStep:
    """D's update (``d_steps`` times), G's update, then each component's ``train_own``.

    Holds G's and D's optimisers and the data and label RNG streams; implements the
    ``harness.api.Step`` protocol the components see.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        cfg = run.config
        make = optimizer_factory(cfg)
        self.opt_g = make(
            [*run.generator.parameters(), *run.prior.parameters()], cfg.lr_g,
            cfg.network_betas("g"),
        )
        self.opt_d = make(list(run.discriminator.parameters()), cfg.lr_d, cfg.network_betas("d"))
        self.data_rng = torch.Generator().manual_seed(cfg.seed + 4)
        self.label_rng = torch.Generator().manual_seed(cfg.seed + 5)
        self.real_condition = torch.empty(0)
        """The condition of D's last real batch: G's fakes are drawn beside it."""
        self.parts = [(f"{fld} {getattr(cfg, fld)!r}", part)
                      for fld, part in zip(("cond", "reg", "augment"), run.step_terms, strict=True)]
        self.real_grad = any(part.needs_real_grad for _, part in self.parts)

    def __call__(self) -> dict[str, torch.Tensor]:
        """One iteration; returns every loss and term, detached, for the log."""
        for _ in range(self.run.config.d_steps):
            d_losses = self.update_d()
        losses = {**d_losses, **self.update_g()}
        for who, part in self.parts:
            add_terms(losses, who, "train_own", part.train_own, self)
        return losses

    def update_d(self) -> dict[str, torch.Tensor]:
        run = self.run
        index, x = self.real_batch()
        x.requires_grad_(self.real_grad)
        logits, features = run.discriminator(run.augmentation(x))
        condition = run.conditioner.labels_for_real(index, features.detach(), x.detach())
        self.real_condition = condition
        real = Scored(x, run.net_labels(condition), logits, features, run.discriminator, index)
        paired = run.conditioner.fake_labels(condition, self.label_rng)
        with torch.no_grad():
            fake_x, fake_labels = self.fake_batch(run.config.batch_size, labels=paired)
        fake = self.discriminate(fake_x, run.net_labels(fake_labels))
        terms = {"d_loss": run.loss.discriminator(real.score, fake.score)}
        for who, part in self.parts:
            add_terms(terms, who, "d_terms", part.d_terms, real, fake, self)
        return self.descend(self.opt_d, "d_loss", terms)

    def update_g(self) -> dict[str, torch.Tensor]:
        run = self.run
        x, labels = self.fake_batch(run.config.batch_size, labels=run.conditioner.fake_labels(
            self.real_condition, self.label_rng))  # beside D's last real batch
        # G's step needs D's input gradients only: skipping its weight gradients (which D's
        # next update would discard) changes no number
        with frozen(run.discriminator):
            fake = self.discriminate(x, run.net_labels(labels))
        terms = {"g_loss": run.loss.generator(fake.score)}
        for who, part in self.parts:
            add_terms(terms, who, "g_terms", part.g_terms, fake, self)
        return self.descend(self.opt_g, "g_loss", terms)

    @staticmethod
    def descend(
        optimizer: torch.optim.Optimizer, name: str, terms: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """One optimiser step on the sum of ``terms``; returns them for the log."""
        loss = total(terms)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return logged(name, loss, terms)

    # ------------------------------------------------------------------ the Step protocol
    def real_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` training examples drawn uniformly with replacement: (index, x)."""
        run = self.run
        index = torch.randint(len(run.dataset), (run.config.batch_size,), generator=self.data_rng)
        return index, run.dataset.batch(index).to(run.device, non_blocking=True)

    def fake_batch(
        self, n: int, generator: Generator | None = None, labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples of ``generator`` (default: the trained G) with ``labels`` (n,)
        (default: y ~ P(c)), z ~ p(z|y)."""
        run = self.run
        if labels is None:
            labels = run.conditioner.sample_labels(n, self.label_rng)
        labels = labels.to(run.device)
        z = run.prior.sample(n, labels)
        return (generator or run.generator)(z, run.net_labels(labels)), labels

    def discriminate(
        self, x: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> Scored:
        logits, features = self.run.discriminator(self.run.augmentation(x))
        return Scored(x, labels, logits, features, self.run.discriminator, index)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "data": self.data_rng.get_state(), "labels": self.label_rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.data_rng.set_state(state["data"].cpu())
        self.label_rng.set_state(state["labels"].cpu())
