"""Non-saturating BCE (Goodfellow et al.) and hinge (Lim & Ye; Miyato et al.) losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.api import Loss


class NonSaturating(Loss):
    """Non-saturating BCE: D minimises softplus(-real) + softplus(fake), G softplus(-fake)."""

    def discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-real).mean() + F.softplus(fake).mean()

    def generator(self, fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake).mean()


class Hinge(Loss):
    """Hinge: D minimises relu(1 - real) + relu(1 + fake), G minimises -fake."""

    def discriminator(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()

    def generator(self, fake: torch.Tensor) -> torch.Tensor:
        return -fake.mean()
