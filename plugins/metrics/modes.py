"""Mode coverage, sample quality and reverse KL on data with known modes (Liu et al. 2020).

Every generated sample is assigned to its nearest true mode. It is *high quality* when each
coordinate lies within ``tolerance`` (3) standard deviations of that mode. *Modes covered*
counts modes with at least one high-quality sample; *reverse KL* is KL(p_gen || uniform)
of the nearest-mode histogram over all samples, in nats.

Non-finite samples (a NaN or infinite coordinate) are low quality and belong to no mode:
they count in ``hq_pct``'s denominator, and the reverse KL is over the nearest-mode
histogram of the finite samples only. With no finite sample the metric fails (MetricError).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from harness.api import DataSpec, Metric, Options, Sampler
from harness.errors import MetricError

if TYPE_CHECKING:
    from harness.run import Run


def mode_statistics(
    samples: torch.Tensor, centers: torch.Tensor, std: float, tolerance: float = 3.0
) -> dict[str, float]:
    """Modes covered, % high quality and reverse KL (nats) of ``samples`` (n, d).

    Non-finite samples are low quality and of no mode: ``hq_pct`` is over all n samples,
    ``rkl`` is KL(p_gen || uniform) of the nearest-mode histogram of the finite ones.
    Raises MetricError when no sample is finite.
    """
    finite = samples.double()[torch.isfinite(samples).all(1)]
    if not len(finite):
        raise MetricError(f"modes_2d: all {len(samples)} generated samples are non-finite")
    nearest = torch.cdist(finite, centers.double()).argmin(1)
    offset = (finite - centers.double()[nearest]).abs()
    high_quality = (offset <= tolerance * std).all(1)
    m = len(centers)
    covered = torch.bincount(nearest[high_quality], minlength=m) > 0
    p = torch.bincount(nearest, minlength=m).double() / len(finite)
    nonzero = p > 0
    rkl = float((p[nonzero] * (p[nonzero] * m).log()).sum())
    return {
        "modes": float(covered.sum()),
        "hq_pct": 100.0 * (float(high_quality.sum()) / len(samples)),
        "rkl": rkl,
    }


class ModesOptions(Options):
    tolerance: float = Field(
        3.0, gt=0, description="high quality: every coordinate within this many std"
    )


class Modes2D(Metric):
    """modes / hq_pct / rkl on ``--eval-samples`` generated points (data with known modes)."""

    Options = ModesOptions
    better = {"modes": "higher", "hq_pct": "higher", "rkl": "lower"}

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.modes is not None

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        modes = run.dataset.spec.modes
        assert modes is not None
        x, _ = sample(run.config.eval_samples)
        return mode_statistics(x.flatten(1), modes.centers, modes.std, self.options.tolerance)
