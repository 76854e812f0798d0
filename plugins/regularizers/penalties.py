"""Gradient penalties on D (``--reg``)."""

from __future__ import annotations

import torch
from pydantic import Field

from harness.api import Options, Regularizer, Scored, Step


class NoRegularizer(Regularizer):
    """No added term (the default)."""


class R1Options(Options):
    gamma: float = Field(10.0, gt=0, le=1e6, description="penalty weight gamma (R1: gamma / 2)")
    every: int = Field(
        1, ge=1, le=10_000,
        description="lazy regularisation: apply every N iterations with weight x N (StyleGAN2)",
    )


class R1(Regularizer):
    """R1 (Mescheder et al. 2018, "Which training methods for GANs do actually converge?",
    Eq. 9): gamma/2 * E_real ||grad_x D(x)||^2, added to D's loss as ``d_r1``.

    D(x) is each real example's score for its condition (``Scored.score``), differentiated
    with respect to the real batch as it came from the data (through the augmentation, when
    there is one). With ``every`` = N > 1 the term is applied on iterations (counted from 1)
    divisible by N and multiplied by N (lazy regularisation, Karras et al. 2020, StyleGAN2
    §3.1); ``log.jsonl`` shows it on the logged iterations where it is applied.
    """

    Options = R1Options
    needs_real_grad = True

    def d_terms(self, real: Scored, fake: Scored, step: Step) -> dict[str, torch.Tensor]:
        every = self.options.every
        if (step.run.step + 1) % every:  # run.step iterations are done; this is the next
            return {}
        (grad,) = torch.autograd.grad(real.score.sum(), real.x, create_graph=True)
        penalty = grad.pow(2).flatten(1).sum(1).mean()
        return {"d_r1": self.options.gamma / 2 * every * penalty}
