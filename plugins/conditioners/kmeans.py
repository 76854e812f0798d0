"""Self-Conditioned GAN (Liu et al., CVPR 2020): k-means on the discriminator's features.

``kmeans_d`` re-clusters every T steps, initialised from the old partition's means in the
new feature space (Eq. 3) and with cluster ids matched to the old ones by the Hungarian
algorithm (Eq. 4). ``online_kmeans``, the paper's online variant, moves the centres by a
gradient step on every real batch instead.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from harness.api import BuildContext, Conditioner, Models, PairedFakesOptions, Step
from harness.clustering import (
    KMeansResult,
    cluster_means,
    kmeans,
    matching_permutation,
    squared_distances,
)
from harness.errors import ConfigError


class ClusterOptions(PairedFakesOptions):
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
        self.fit(models.features(self.subset))

    def fit(self, features: torch.Tensor) -> None:
        """The first clustering, of the subset's D features (points, feature_dim)."""
        result = kmeans(features, self.options.k, self.options.n_init, self.context.seed)
        self.centers, self.subset_labels = result.centers, result.labels
        self.offset = features.mean(0)
        self.sizes = torch.bincount(result.labels, minlength=self.options.k).cpu()

    def warm_started(self, features: torch.Tensor, step: int) -> KMeansResult:
        """k-means of the subset's new ``features`` started from the means of the current
        partition in them (Liu et al. 2020, Eq. 3); an empty cluster starts at a random point
        (seeded by ``step``)."""
        k = self.options.k
        init, counts = cluster_means(features, self.subset_labels, k)
        empty = (counts == 0).nonzero().squeeze(1)
        generator = torch.Generator().manual_seed(self.context.seed + step)
        n = len(features)
        if len(empty) <= n:  # distinct random points
            pick = torch.randperm(n, generator=generator)[: len(empty)]
        else:  # more empty clusters than points: with replacement
            pick = torch.randint(n, (len(empty),), generator=generator)
        init[empty] = features[pick.to(features.device)]
        return kmeans(features, k, init=init)

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
    it was when clustering* (the official code holds a frozen copy of D). So does this one:
    each clustering freezes a copy of D (eval mode, no gradients), and an example is labelled
    with it the first time a batch, ``assign`` or ``partition`` asks for it; the label is
    cached until the next clustering. Labels are thus the ones the whole dataset would get
    from D at clustering time, without labelling all of it before the step that needs them.
    The copy is dropped once every example is labelled. The state (checkpoints) holds the
    labels so far and the copy's weights and buffers, so a resumed run labels the rest alike.

    Labelling runs inside the training step; its seconds are added to the run's timings
    ``recluster_s`` (the clustering itself is timed there too, so ``recluster_share`` is
    self-conditioning's whole overhead, as when the dataset was labelled at each clustering)
    and, on their own, ``label_s``.
    """

    Options = SelfConditionedOptions
    plugin_name = "kmeans_d"

    def __init__(self, options: SelfConditionedOptions, context: BuildContext) -> None:
        super().__init__(options, context)
        self.cache = torch.full((len(context.dataset),), -1, dtype=torch.long)
        """Label of every real example (CPU, long); -1: not labelled since the clustering."""
        self.unlabelled = len(self.cache)
        self.frozen: Models | None = None
        """The run's data and D as it was at clustering time; None once all are labelled."""
        self.run_models: Models | None = None
        """The run's networks (``bind``): the shape of D a restored frozen copy takes."""
        self.label_seconds = 0.0
        """Labelling time not yet added to the run's timings (see ``train_own``)."""

    def bind(self, models: Models) -> None:
        self.run_models = models

    def setup(self, models: Models) -> None:
        features = models.features(self.subset)
        self.fit(features)
        self.freeze(models, features)

    def freeze(self, models: Models, features: torch.Tensor) -> None:
        """Label from now on with D as it is in ``models``; forget every label but the
        clustered subset's, given their D ``features`` (points, feature_dim)."""
        self.cache.fill_(-1)
        self.cache[self.subset] = self.nearest(features).cpu()
        self.unlabelled = len(self.cache) - len(self.subset)
        self.frozen = frozen_copy(models) if self.unlabelled else None

    def labels_of(self, index: torch.Tensor) -> torch.Tensor:
        """Labels (CPU, long) of the real examples at ``index`` (any shape, CPU or device),
        from D as frozen at the last clustering; examples not yet labelled are labelled now."""
        index = index.cpu()
        labels = self.cache[index]
        missing = index[labels < 0].unique()
        if len(missing):
            assert self.frozen is not None  # dropped only once every example is labelled
            start = time.perf_counter()
            # a batch of one runs other CPU kernels (last-bit differences from the larger
            # batches of a whole-dataset pass): a lone example is labelled in a batch of two
            batch = missing.repeat(2) if len(missing) == 1 else missing
            features = self.frozen.features(batch)[: len(missing)]
            self.cache[missing] = self.nearest(features).cpu()
            self.unlabelled -= len(missing)
            if not self.unlabelled:
                self.frozen = None
            self.label_seconds += time.perf_counter() - start
            labels = self.cache[index]
        return labels

    @property
    def labels(self) -> torch.Tensor:
        """Every real example's label, (N,) long on the CPU; labels all not yet labelled."""
        return self.labels_of(torch.arange(len(self.cache)))

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.labels_of(index).to(features.device)

    def partition(self, models: Models, index: torch.Tensor) -> torch.Tensor:
        return self.labels_of(index).to(models.device)  # the live D's features are not used

    def train_own(self, step: Step) -> dict[str, torch.Tensor]:
        """No network of its own: adds the iteration's labelling time to the run's timings."""
        timings = step.run.timings
        for key in ("recluster_s", "label_s"):
            timings[key] = timings.get(key, 0.0) + self.label_seconds
        self.label_seconds = 0.0
        return {}

    def update(self, step: int, models: Models) -> float | None:
        every = self.options.recluster_every
        if not every or step % every:
            return None
        features = models.features(self.subset)
        old = self.subset_labels
        k = self.options.k
        if self.options.init_from_previous:
            result = self.warm_started(features, step)
        else:
            result = kmeans(features, k, self.options.n_init, self.context.seed + step)
        labels, centers = result.labels, result.centers
        if self.options.match:
            perm = torch.as_tensor(matching_permutation(old, labels, k), device=labels.device)
            labels = perm[labels]
            centers = torch.empty_like(centers).index_copy_(0, perm, centers)
        self.centers, self.subset_labels, self.offset = centers, labels, features.mean(0)
        self.sizes = torch.bincount(labels, minlength=k).cpu()
        self.freeze(models, features)
        return float((labels != old).float().mean())

    def state_dict(self) -> dict[str, Any]:
        frozen = None if self.frozen is None else self.frozen.discriminator.state_dict()
        return {**super().state_dict(), "labels": self.cache.clone(), "frozen": frozen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the labels and the frozen D; ``ValueError`` when labels are missing and
        the state has no frozen D (or the conditioner was not bound to the run's networks).
        A state from before lazy labelling (every label, no frozen D) loads as it is."""
        super().load_state_dict(state)
        cache = state["labels"].to("cpu", torch.long, copy=True)
        if cache.shape != self.cache.shape:
            raise ValueError(f"labels of {len(cache)} examples for a dataset of {len(self.cache)}")
        unlabelled, frozen = int((cache < 0).sum()), state.get("frozen")
        if unlabelled and (frozen is None or self.run_models is None):
            reason = "no frozen D in the state" if frozen is None else "not bound to the run"
            raise ValueError(f"kmeans_d: {unlabelled} examples are unlabelled and {reason}")
        self.frozen = frozen_copy(self.run_models, frozen) if unlabelled else None
        self.cache, self.unlabelled = cache, unlabelled


def frozen_copy(models: Models, state: dict[str, Any] | None = None) -> Models:
    """``models`` with a copy of its D as it is (or holding ``state``, a D state dict): in
    eval mode, without gradients, never trained."""
    discriminator = copy.deepcopy(models.discriminator).eval().requires_grad_(False)
    for parameter in discriminator.parameters():
        parameter.grad = None
    if state is not None:
        discriminator.load_state_dict(state)
    return replace(models, discriminator=discriminator)


class OnlineOptions(ClusterOptions):
    n_init: int = Field(10, ge=1, le=1000, description="k-means++ restarts for the initial centres")
    step: Literal["constant", "count"] = Field(
        "constant",
        description="centre step size: constant (each assigned point moves its centre lr of "
        "the way to it: SGD on Eq. 2, centres track drifting features) or count (1/count "
        "with counts from 0, MacQueen's rule of the official code)",
    )
    burn_in: bool = Field(
        True, description="after the first step, re-cluster the subset once in the live D's "
        "features, started from the first partition's means (the official code's burn-in)",
    )
    lr: float = Field(
        0.01, gt=0, lt=1, description="step=constant: per-point learning rate of the centres"
    )
    decay: float = Field(
        1.0, gt=0, le=1,
        description="step=count: per-step decay of the counts (1: the official 1/count rule)",
    )
    revive: float = Field(
        0.0, ge=0, lt=1,
        description="re-seed a centre whose recent count falls below revive x the mean onto "
        "the batch point farthest from every centre (0: never, as the official code)",
    )


class OnlineKMeans(FeatureClusters):
    """Online k-means on the live discriminator's features (Liu et al. 2020's online variant).

    Liu et al. 2020, Sec. 3, "Online clustering" (results in Sec. 4.2): "online K-means
    based on gradient descent [4], where we updated the cluster centers and membership using
    Equation (2) in each iteration"; [4] is Bottou & Bengio, "Convergence properties of the
    k-means algorithms", NIPS 1995. Instead of re-clustering every T steps: from a k-means++
    start on D_f of a real subset, each real batch is labelled by its nearest centres
    (membership, with the live D), then the centres take one stochastic gradient step on
    Eq. 2's objective, E_c E_{x in pi_c} ||D_f(x) - mu_c||^2.

    ``step=constant`` (default): Bottou & Bengio's online k-means with a fixed learning rate
    ``lr`` per point, mu_c += lr (D_f(x) - mu_c) for every x assigned to c; the n_c points
    of a batch are applied at once, moving mu_c 1 - (1 - lr)^n_c of the way to their mean.
    A centre remembers about 1/lr points, so it keeps tracking D's drifting features.
    ``step=count``: the step 1/count (MacQueen's rule, the learning rate Bottou & Bengio
    derive for stationary data), as the authors' ``clusterers/online.py`` applies it: counts
    start at 0, so a centre's first points replace it, and are never reset (optionally
    decayed by ``decay`` per step). Measured against the official code (ring, 10k steps):
    updated every iteration, as the paper says, it keeps the partition (NMI 1.0, 8 modes);
    the official code's default schedule (every 5000 iterations) reached 5 of 8 modes.
    (Counts started from the initial cluster sizes, an earlier reading, froze the centres:
    NMI 0 at 4k steps.) ``burn_in``: after the first step the subset is re-clustered once in
    the live D's features from the first partition's means (Eq. 3), as the official code
    does before its online updates.

    P(c) follows the counts: under ``step=constant`` they are forgotten at the centres' pace
    (each point decays them by 1 - lr/k), so a centre that stops receiving points fades out
    of P(c), as in the official code, where fake labels are the real batch's labels. With
    ``revive`` > 0 such a dead centre (count below ``revive`` times the mean) is moved onto
    the batch point farthest from every centre, one at a time, and given the mean count; this
    undoes a partition that one centre absorbed, but when k exceeds the clusters D's features
    hold (ring: 8 tight modes, k = 50) re-seeded centres keep taking whole modes from their
    owners and G's classes change meaning (ring, 4k steps: 0.4 % HQ against 80 % without),
    so it is off by default.
    """

    Options = OnlineOptions
    plugin_name = "online_kmeans"

    def setup(self, models: Models) -> None:
        super().setup(models)
        self.sizes = self.sizes.double()
        self.counts = torch.zeros(self.options.k, dtype=torch.double)

    def update(self, step: int, models: Models) -> float | None:
        """The burn-in (``burn_in``): after step 1, one warm-started k-means of the subset in
        the live D's features; returns the fraction of its points that changed cluster."""
        if not self.options.burn_in or step != 1:
            return None
        features, old = models.features(self.subset), self.subset_labels
        result = self.warm_started(features, step)
        self.centers, self.subset_labels, self.offset = result.centers, result.labels, \
            features.mean(0)
        self.sizes = torch.bincount(result.labels, minlength=self.options.k).cpu().double()
        return float((result.labels != old).float().mean())

    def assign(self, index: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.nearest(features)

    def labels_for_real(
        self, index: torch.Tensor, features: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        options = self.options
        k = options.k
        centred = features - self.offset
        labels = squared_distances(centred, self.centers - self.offset).argmin(1)
        means, batch_counts = cluster_means(features, labels, k)
        batch_counts = batch_counts.cpu().double()
        if options.step == "count":
            self.sizes.mul_(options.decay).add_(batch_counts)
            self.counts.mul_(options.decay).add_(batch_counts)
            rate = batch_counts / self.counts.clamp_min(1e-12)
        else:
            self.sizes.mul_((1 - options.lr / k) ** len(features)).add_(batch_counts)
            rate = 1 - (1 - options.lr) ** batch_counts
        rate = rate.to(features.device, features.dtype).unsqueeze(1)
        self.centers = self.centers + rate * (means - self.centers)
        dead = (self.sizes < options.revive * self.sizes.mean()).nonzero().squeeze(1)
        if len(dead):
            self.revive(dead, features)
        return labels

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "counts": self.counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # a checkpoint from before counts were kept apart counted in ``sizes``
        self.counts = state.get("counts", state["sizes"]).double()

    def revive(self, dead: torch.Tensor, features: torch.Tensor) -> None:
        """Move dead centres onto batch points, each the one farthest from every centre."""
        centred = features - self.offset
        farthest = squared_distances(centred, self.centers - self.offset).min(1).values
        mean = self.sizes.mean()
        for c in dead[: len(features)].tolist():
            i = int(farthest.argmax())
            self.centers[c] = features[i]
            farthest = torch.minimum(farthest, squared_distances(centred, centred[i : i + 1])[:, 0])
            self.sizes[c] = mean
