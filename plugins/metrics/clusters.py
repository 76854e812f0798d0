"""How well the conditioner's partition of real data matches the true labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from pydantic import Field
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from harness.api import DataSpec, Metric, Options, Sampler

if TYPE_CHECKING:
    from harness.run import Run


def partition_scores(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """NMI, ARI, purity and Hungarian-matched (one-to-one) accuracy of a partition."""
    table = contingency_matrix(true, predicted)  # rows: true classes, columns: clusters
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {
        "nmi": float(normalized_mutual_info_score(true, predicted)),
        "ari": float(adjusted_rand_score(true, predicted)),
        "purity": float(table.max(0).sum() / len(true)),
        "acc": float(table[rows, cols].sum() / len(true)),
    }


class AgreementOptions(Options):
    subset: int = Field(
        10_000, ge=1, le=10_000_000, description="real examples scored (random subset)"
    )


class ClusterAgreement(Metric):
    """cluster_{nmi,ari,purity,acc}: the conditioner's partition vs. the true labels."""

    Options = AgreementOptions
    better = {"cluster_*": "higher"}

    @classmethod
    def supports(cls, spec: DataSpec) -> bool:
        return spec.has_labels

    def compute(self, sample: Sampler, run: Run) -> dict[str, float]:
        dataset = run.dataset
        assert dataset.y is not None
        generator = torch.Generator().manual_seed(run.config.seed + 3)
        index = torch.randperm(len(dataset), generator=generator)[: self.options.subset]
        predicted = run.conditioner.partition(run.models, index).cpu().numpy()
        scores = partition_scores(dataset.y[index].numpy(), predicted)
        return {f"cluster_{name}": value for name, value in scores.items()}
