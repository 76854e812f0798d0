"""Self-Conditioned GAN (Liu et al., CVPR 2020): k-means on the discriminator's features.

``kmeans_d`` re-clusters every T steps, initialised from the old partition's means in the
new feature space (Eq. 3) and with cluster ids matched to the old ones by the Hungarian
algorithm (Eq. 4). ``online_kmeans`` moves the centres on every batch instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from harness.api import BuildContext, Conditioner, Models, Options
from harness.clustering import cluster_means, kmeans, matching_permutation, squared_distances
from harness.errors import ConfigError


class ClusterOptions(Options):
    k: int = Field(50, ge=1, le=100_000, description="number of clusters")
    subset: int = Field(
        10_000, ge=1, le=10_000_000, description="real examples clustered (random subset)"
    )
    n_init: int = Field(
        10, ge=1, le=1000, description="k-means++ restarts for the first clustering"
    )


class FeatureClusters(Conditioner):
    """Shared state: centres in D-feature space fitted on a fixed random subset of reals.

    Refuses (ConfigError) more clusters ``k`` than clustered points, min(subset, dataset size).
    """

    Options = ClusterOptions
    plugin_name: ClassVar[str]
    """The name the conditioner is registered under, for error messages."""

    def __init__(self, options: ClusterOptions, context: BuildContext) -> None:
        super().__init__(options, context)
        n = len(context.dataset)
        points = min(options.subset, n)
        if options.k > points:
            raise ConfigError(
                f"invalid cond {self.plugin_name!r} option k={options.k}: more clusters than "
                f"the {points} clustered points (subset={options.subset}, dataset size {n}); "
                f"valid: k <= {points}"
            )
        generator = torch.Generator().manual_seed(context.seed + 2)
        self.subset = torch.randperm(n, generator=generator)[:points]
        self.centers = torch.empty(0)
        self.sizes = torch.ones(options.k)

    @property
    def num_classes(self) -> int:
        return self.options.k

    def setup(self, models: Models) -> None:
        features = models.features(self.subset)
        result = kmeans(features, self.options.k, self.options.n_init, self.context.seed)
        self.centers, self.subset_labels = result.centers, result.labels
        self.offset = features.mean(0)
        self.sizes = torch.bincount(result.labels, minlength=self.options.k).cpu()

    def nearest(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centre, computed around the clustered features' mean (float32 precision)."""
        return squared_distances(features - self.offset, self.centers - self.offset).argmin(1)

    def class_weights(self) -> torch.Tensor:
        return self.sizes.double() / self.sizes.sum()

    def state_dict(self) -> dict[str, Any]:
        return {"centers": self.centers, "sizes": self.sizes, "subset": self.subset,
                "subset_labels": self.subset_labels, "offset": self.offset}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.centers, self.sizes, self.offset = state["centers"], state["sizes"], state["offset"]
        self.subset, self.subset_labels = state["subset"], state["subset_labels"]


class SelfConditionedOptions(ClusterOptions):
    recluster_every: int = Field(5000, ge=0, description="steps between re-clusterings; 0: never")
    init_from_previous: bool = Field(True, description="Eq. 3: start from the old partition")
    match: bool = Field(True, description="Eq. 4: Hungarian-match new ids to old ones")


class SelfConditioned(FeatureClusters):
    """k-means++ on D_f of a real subset, re-clustered every T steps (Liu et al. 2020).

    Between clusterings every real example keeps the label given by the discriminator *as
    it was when clustering* (the official code holds a frozen copy of D); labels of the
    whole dataset are therefore computed once per clustering and looked up by index.
    """

    Options = SelfConditionedOptions
    plugin_name = "kmeans_d"

    def setup(self, models: Models) -> None:
        super().setup(models)
        self.relabel(models)

    def relabel(self, models: Models) -> None:
        everything = torch.arange(len(self.context.dataset))
        self.labels = torch.cat(
            [self.nearest(models.features(chunk)).cpu() for chunk in everything.split(10_000)]
        )

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.labels[index.cpu()].to(features.device)

    def update(self, step: int, models: Models) -> float | None:
        every = self.options.recluster_every
        if not every or step % every:
            return None
        features = models.features(self.subset)
        old = self.subset_labels
        k = self.options.k
        if self.options.init_from_previous:
            init, counts = cluster_means(features, old, k)
            empty = (counts == 0).nonzero().squeeze(1)
            generator = torch.Generator().manual_seed(self.context.seed + step)
            n = len(features)
            if len(empty) <= n:  # distinct random points
                pick = torch.randperm(n, generator=generator)[: len(empty)]
            else:  # more empty clusters than points: with replacement
                pick = torch.randint(n, (len(empty),), generator=generator)
            init[empty] = features[pick.to(features.device)]
            result = kmeans(features, k, init=init)
        else:
            result = kmeans(features, k, self.options.n_init, self.context.seed + step)
        labels, centers = result.labels, result.centers
        if self.options.match:
            perm = torch.as_tensor(matching_permutation(old, labels, k), device=labels.device)
            labels = perm[labels]
            centers = torch.empty_like(centers).index_copy_(0, perm, centers)
        self.centers, self.subset_labels, self.offset = centers, labels, features.mean(0)
        self.sizes = torch.bincount(labels, minlength=k).cpu()
        self.relabel(models)
        return float((labels != old).float().mean())

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "labels": self.labels}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.labels = state["labels"]


class OnlineOptions(ClusterOptions):
    n_init: int = Field(10, ge=1, le=1000, description="k-means++ restarts for the initial centres")
    decay: float = Field(
        1.0, gt=0, le=1, description="per-step decay of centre counts (1: step size 1/count)"
    )


class OnlineKMeans(FeatureClusters):
    """Mini-batch k-means on the live discriminator's features (Liu et al.'s online variant).

    Each real batch is labelled by its nearest centres, which then move towards the batch
    means with step size n_batch / count (Sculley's mini-batch k-means; counts optionally
    decayed so centres keep following drifting features). P(c) follows the counts. A centre
    whose count vanishes is moved onto the batch point farthest from its centre.
    """

    Options = OnlineOptions
    plugin_name = "online_kmeans"

    def setup(self, models: Models) -> None:
        super().setup(models)
        self.sizes = self.sizes.double()

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.nearest(features)

    def labels_for_real(
        self, index: torch.Tensor, features: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        centred = features - self.offset
        closest, labels = squared_distances(centred, self.centers - self.offset).min(1)
        means, batch_counts = cluster_means(features, labels, self.options.k)
        self.sizes.mul_(self.options.decay).add_(batch_counts.cpu())
        rate = batch_counts / self.sizes.to(features.device).clamp_min(1e-12)
        self.centers = self.centers + rate.to(features.dtype).unsqueeze(1) * (means - self.centers)
        dead = (self.sizes < 1e-3 * self.sizes.mean()).nonzero().squeeze(1)
        if len(dead):
            far = closest.topk(min(len(dead), len(features))).indices
            self.centers[dead[: len(far)].to(features.device)] = features[far]
            self.sizes[dead[: len(far)]] = self.sizes.mean()
        return labels
