"""GM-GAN's analyses of a trained run (Ben-Yosef & Weinshall 2018).

- Algorithm 2, unsupervised clustering: draw M latents from each Gaussian of the mixture
  prior, label each generated sample by its Gaussian, train a classifier on those samples
  and cluster real data by its argmax. ``samples_by_component``, ``fit_component_classifier``
  and ``predict_clusters`` (``mixture_partition``: all three) are shared by the ``gmm``
  conditioner (its partition for ``cluster_agreement``) and ``harness cluster``.
- The quality-diversity trade-off: the run's metrics on samples drawn with the prior's
  spread scaled by sigma (``Prior.sample(..., scale=sigma)``), for ``harness tradeoff``.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from harness import results
from harness.api import Metric, Prior, Sampler
from harness.errors import HarnessError, MetricError, one_line
from harness.run import EVAL_BATCH

if TYPE_CHECKING:
    from harness.run import Run

CLASSIFIER = {"hidden_layer_sizes": (128,), "max_iter": 300, "random_state": 0}
"""Algorithm 2's classifier: scikit-learn's MLPClassifier with these settings."""
PREDICT_BATCH = 10_000
"""Real examples classified at once by ``harness cluster``."""
CLUSTER_SEED = 30_000
"""``harness cluster`` draws its latents with the seed ``config.seed + CLUSTER_SEED``."""
SUBSET_SEED = 3
"""A ``--subset`` of real examples is the one ``cluster_agreement`` scores (seed + 3)."""
TRADEOFF_SEED = 40_000
"""``harness tradeoff`` draws labels and noise with ``config.seed + TRADEOFF_SEED``: the same
noise at every sigma, so the curve shows the effect of sigma alone."""
DEFAULT_SCALES = "0.25,0.5,0.75,1,1.5"


# ----------------------------------------------------------------------------- Algorithm 2
@torch.no_grad()
def samples_by_component(
    prior: Prior,
    generate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    components: int,
    per_component: int,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2, lines 2-6: ``per_component`` latents from each Gaussian (the component id
    is the label ``prior.sample`` receives) and ``generate(z, component)`` of them, in
    batches. Returns the samples and their component ids (on ``device``); draws from the
    global torch RNG."""
    labels = torch.arange(components, device=device).repeat_interleave(per_component)
    z = prior.sample(len(labels), labels)
    fake = torch.cat(
        [
            generate(zc, yc)
            for zc, yc in zip(z.split(batch_size), labels.split(batch_size), strict=True)
        ]
    )
    return fake, labels


def fit_component_classifier(fake: torch.Tensor, labels: torch.Tensor) -> MLPClassifier:
    """Algorithm 2, line 7: the classifier of generated samples by their Gaussian.

    Raises ``MetricError`` when some samples are non-finite (it cannot be trained on them).
    """
    bad = int((~fake.flatten(1).isfinite().all(1)).sum())
    if bad:
        raise MetricError(f"the gmm partition (Algorithm 2): {bad} of {len(fake)} generated "
                          "samples are non-finite, so its classifier cannot be trained")
    classifier = MLPClassifier(**CLASSIFIER)
    with warnings.catch_warnings():  # an unconverged classifier still gives a partition
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(fake.flatten(1).cpu().numpy(), labels.cpu().numpy())
    return classifier


def predict_clusters(classifier: MLPClassifier, batches: Iterable[torch.Tensor]) -> np.ndarray:
    """Algorithm 2, line 8: the argmax cluster of every real example, batch by batch."""
    predicted = [classifier.predict(x.flatten(1).cpu().numpy()) for x in batches]
    return np.concatenate(predicted).astype(np.int64)


def mixture_partition(
    prior: Prior,
    generate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    components: int,
    per_component: int,
    real: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """Algorithm 2 in full: the cluster (Gaussian id) of each example of ``real``."""
    samples = samples_by_component(prior, generate, components, per_component, batch_size, device)
    return predict_clusters(fit_component_classifier(*samples), [real])


# ----------------------------------------------------------------------------- harness cluster
def not_a_mixture(what: str, run_dir: Path | None, prior: str) -> HarnessError:
    return HarnessError(
        f"{what} {run_dir}: the run's prior {prior!r} is not a mixture (valid: a run with a "
        "mixture prior, one with a num_components option, e.g. --prior gmm)"
    )


def check_mixture_config(config: dict[str, Any], run_dir: Path, what: str) -> None:
    """Refuse a run whose saved config names a prior without a ``num_components`` option,
    before the run is built or its lock taken (an unknown prior is left to the build)."""
    from harness.config import RunConfig
    from harness.manager import get_plugin_manager

    name = config.get("prior", RunConfig.model_fields["prior"].default)
    try:
        cls = get_plugin_manager().get("priors", str(name)).load()
    except HarnessError:
        return
    if "num_components" not in cls.Options.model_fields:
        raise not_a_mixture(what, run_dir, str(name))


def mixture_components(run: Run, what: str) -> int:
    """K of the run's mixture prior; ``HarnessError`` naming the prior when it has none."""
    components = getattr(run.prior, "num_components", None)
    if not isinstance(components, int):
        raise not_a_mixture(what, run.directory, run.config.prior)
    return components


def component_prior(run: Run, components: int) -> Prior:
    """A prior whose ``sample(n, labels)`` draws label k from Gaussian k.

    A mixture follows the labels only when it was built for exactly K classes (the ``gmm``
    conditioner, or one Gaussian per class); for any other run, a copy of its prior is built
    for K classes and given the trained prior's state."""
    prior = run.prior
    if prior.num_classes == components:
        return prior
    with run.seeded(0):  # the constructor may draw (e.g. static means), then is overwritten
        copy_ = type(prior)(prior.options, prior.z_dim, components)
    copy_.load_state_dict(prior.state_dict())
    return copy_.to(run.device)


@contextlib.contextmanager
def eval_mode(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def generator_labels(run: Run, components: int) -> tuple[str, Callable[..., torch.Tensor]]:
    """How G's class input is chosen for a latent of Gaussian k, and a description of it:
    none for unconditional networks (``gmm`` conditioner), k itself when the conditioner has
    K classes (supervised GM-GAN: one Gaussian per class), else y ~ P(c)."""
    if not run.conditioner.conditions_networks or run.conditioner.num_classes == 1:
        return "none (G is unconditional)", lambda comp: torch.zeros_like(comp)
    if run.conditioner.num_classes == components:
        return "the component id (one Gaussian per class)", lambda comp: comp
    rng = torch.Generator().manual_seed(run.config.seed + CLUSTER_SEED + 1)

    def sampled(comp: torch.Tensor) -> torch.Tensor:
        return run.conditioner.sample_labels(len(comp), rng).to(comp.device)

    return "drawn from the conditioner's P(c)", sampled


def cluster_indices(n: int, subset: int | None, seed: int) -> torch.Tensor:
    """All examples, or the seeded random subset ``cluster_agreement`` scores."""
    if subset is None or subset >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed + SUBSET_SEED)
    return torch.randperm(n, generator=generator)[:subset]


def cluster_run(
    run: Run, per_component: int, subset: int | None, what: str = "harness cluster"
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray | None]:
    """Algorithm 2 on a trained run with a mixture prior, scored against the true labels.

    Returns the summary (scores when the dataset has labels, settings), the real examples'
    indices, their clusters and their true labels (or None)."""
    components = mixture_components(run, what)
    dataset = run.dataset
    if subset is not None and subset > len(dataset):
        raise HarnessError(f"{what} --subset {subset}: the dataset has {len(dataset)} examples "
                           f"(valid: 1 to {len(dataset)}, or leave it out for all)")
    described, net_labels = generator_labels(run, components)
    prior = component_prior(run, components)
    generator = run.eval_generator

    def generate(z: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        return generator(z, net_labels(comp))

    with run.seeded(run.config.seed + CLUSTER_SEED), eval_mode(generator), torch.no_grad():
        classifier = fit_component_classifier(*samples_by_component(
            prior, generate, components, per_component, run.models.batch_size, run.device
        ))
    index = cluster_indices(len(dataset), subset, run.config.seed)
    predicted = predict_clusters(
        classifier, (dataset.batch(chunk) for chunk in index.split(PREDICT_BATCH))
    )
    sizes = np.bincount(predicted, minlength=components)
    classes = run.conditioner.num_classes
    summary: dict[str, Any] = {
        "algorithm": "GM-GAN Algorithm 2 (Ben-Yosef & Weinshall 2018)",
        "components": components,
        "samples_per_component": per_component,
        "examples": len(index),
        "subset": "all" if len(index) == len(dataset) else len(index),
        "nonempty_clusters": int((sizes > 0).sum()),
        "cluster_sizes": sizes.tolist(),
        "generator": "ema" if run.ema_generator is not None else "generator",
        "generator_labels": described,
        "classifier": {"name": "sklearn MLPClassifier",
                       **{k: list(v) if isinstance(v, tuple) else v
                          for k, v in CLASSIFIER.items()}},
        "seed": run.config.seed + CLUSTER_SEED,
        "step": run.step,
    }
    if classes not in (1, components):
        summary["note"] = (
            f"the prior's {components} Gaussians are not tied to the conditioner's {classes} "
            f"classes (--cond {run.config.cond}): training drew each latent's Gaussian at "
            "random, whatever its class; for one Gaussian per class use "
            f"--prior-opt num_components={classes}"
        )
    true = None
    if dataset.y is not None:
        from harness_plugins.metrics.clusters import partition_scores

        true = dataset.y[index].numpy()
        summary["scores"] = partition_scores(true, predicted)
        summary["classes"] = int(len(np.unique(true)))
    return summary, index.numpy(), predicted, true


def atomic_write_text(path: Path, text: str) -> None:
    results.atomic_write_bytes(path, text.encode())


def assignments_csv(index: np.ndarray, predicted: np.ndarray, true: np.ndarray | None) -> str:
    """``index,cluster[,label]`` lines: each real example's dataset index, its cluster and
    (when the dataset has labels) its true label."""
    columns = [index, predicted] if true is None else [index, predicted, true]
    buffer = io.StringIO()
    header = "index,cluster" if true is None else "index,cluster,label"
    np.savetxt(buffer, np.stack(columns, 1), fmt="%d", delimiter=",", header=header, comments="")
    return buffer.getvalue()


CLUSTER_JSON, CLUSTER_CSV = "cluster.json", "cluster_assignments.csv"


def write_cluster(
    run_dir: Path, summary: dict[str, Any], index: np.ndarray, predicted: np.ndarray,
    true: np.ndarray | None,
) -> list[Path]:
    """``cluster_assignments.csv`` then ``cluster.json``, each atomically."""
    paths = [run_dir / CLUSTER_CSV, run_dir / CLUSTER_JSON]
    csv = assignments_csv(index, predicted, true)
    atomic_write_text(paths[0], csv)
    results.atomic_write_json(paths[1], {**summary, "assignments": CLUSTER_CSV})
    return paths


def format_cluster(summary: dict[str, Any]) -> str:
    """The scores in one line (or why there are none), then the settings."""
    settings = (f"K={summary['components']} Gaussians, M={summary['samples_per_component']} "
                f"samples each, {summary['examples']} real examples, "
                f"{summary['nonempty_clusters']} non-empty clusters")
    scores = summary.get("scores")
    if scores is None:
        return f"no true labels in this dataset: no scores ({settings})"
    line = "  ".join(f"{name.upper() if name != 'purity' else name} {scores[name]:.4f}"
                     for name in ("acc", "nmi", "purity", "ari"))
    return f"{line}  ({settings})"


# ----------------------------------------------------------------------------- harness tradeoff
def parse_scales(text: str) -> list[float]:
    """Comma-separated sampling scales sigma > 0, in the given order, repeats dropped.

    Raises ``ValueError`` naming the bad value and the valid choices."""
    valid = "valid: comma-separated finite numbers > 0, e.g. 0.25,0.5,1"
    tokens = [t.strip() for t in str(text).split(",")]
    if not any(tokens):
        raise ValueError(f"no scale given in {text!r} ({valid})")
    scales = []
    for token in tokens:
        if not token:
            raise ValueError(f"an empty value in {text!r} ({valid})")
        try:
            value = float(token)
        except ValueError:
            raise ValueError(f"{token!r} is not a number ({valid})") from None
        if not math.isfinite(value):
            raise ValueError(f"{token!r} is not finite ({valid})")
        if value <= 0:
            raise ValueError(f"{token!r} is not > 0 ({valid})")
        if value not in scales:
            scales.append(value)
    return scales


def scaled_sampler(run: Run, scale: float) -> Sampler:
    """``sample(n) -> (x, y)`` on the CPU like the metrics' sampler, with z drawn with the
    prior's spread scaled by ``scale``: y ~ P(c) from a fixed seed, z = prior.sample(n, y,
    scale), x = the evaluation generator (eval mode, no grad). Every call with the same n
    gives the same y and the same noise, whatever the scale."""
    seed = run.config.seed + TRADEOFF_SEED

    @torch.no_grad()
    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = run.conditioner.sample_labels(n, torch.Generator().manual_seed(seed))
        generator = run.eval_generator
        xs = []
        with run.seeded(seed + 1), eval_mode(generator):
            for chunk in labels.split(EVAL_BATCH):
                chunk = chunk.to(run.device)
                z = run.prior.sample(len(chunk), chunk, scale=scale)
                xs.append(generator(z, run.net_labels(chunk)).cpu())
        return torch.cat(xs), labels

    return sample


def compute_metric(
    name: str, metric: Metric, sample: Sampler, run: Run
) -> tuple[dict[str, float], bool, str | None]:
    """``metric``'s finite values on ``sample``, whether it drew samples at all (a metric
    that does not cannot depend on the scale), and why values are missing (or None)."""
    calls: list[int] = []

    def counted(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(n)
        return sample(n)

    try:
        with run.seeded(run.config.seed + TRADEOFF_SEED + 2):
            values = metric.compute(counted, run)
    except MetricError as exc:
        return {}, bool(calls), one_line(exc)
    finite, bad = results.split_finite(values)
    problem = f"returned non-finite {', '.join(sorted(bad))}" if bad else None
    return finite, bool(calls), problem


def tradeoff(
    run: Run, scales: list[float], warn: Callable[[str], None] = lambda message: None
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """The run's metrics at every sampling scale: one row ``{"scale": s, metric: value}``
    per scale, and the values of metrics that draw no samples (e.g. ``cluster_agreement``),
    which the scale cannot change: computed once, at the first scale."""
    nets = [run.generator, run.discriminator, run.eval_generator]
    rows: list[dict[str, float]] = []
    unaffected: dict[str, float] = {}
    skip: set[str] = set()
    with contextlib.ExitStack() as stack:
        for net in nets:
            stack.enter_context(eval_mode(net))
        for scale in scales:
            row = {"scale": scale}
            sample = scaled_sampler(run, scale)
            for name, metric in run.metrics.items():
                if name in skip:
                    continue
                values, sampled, problem = compute_metric(name, metric, sample, run)
                if problem:
                    warn(f"metric {name!r} at scale {scale:g}: {problem}")
                if sampled:
                    row.update(values)
                else:
                    unaffected.update(values)
                    skip.add(name)
            rows.append(row)
    return rows, unaffected


def columns_of(rows: list[dict[str, float]]) -> list[str]:
    return list(dict.fromkeys(key for row in rows for key in row))


def tradeoff_csv(rows: list[dict[str, float]], eval_samples: int) -> str:
    columns = columns_of(rows)
    lines = [",".join([*columns, "eval_samples"])]
    for row in rows:
        cells = [repr(row[c]) if c in row else "" for c in columns]
        lines.append(",".join([*cells, str(eval_samples)]))
    return "\n".join(lines) + "\n"


def format_table(rows: list[dict[str, float]]) -> str:
    columns = columns_of(rows)
    cells = [[f"{row[c]:.4g}" if c in row else "" for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def curve_panels(columns: list[str]) -> list[tuple[str, str]]:
    """(quality, diversity) metric pairs to plot against each other: % HQ against modes and
    reverse KL (2-D data); precision against recall, FID, modes and reverse KL (images)."""
    pairs = []
    for quality in columns:
        if quality == "hq_pct":
            partners = ["modes", "rkl"]
        elif quality.startswith("precision_"):
            suffix = quality.removeprefix("precision_")
            partners = [f"recall_{suffix}", f"fid_{suffix}", "modes", "rkl"]
        else:
            continue
        pairs += [(quality, d) for d in partners if d in columns]
    return pairs[:4]


AXIS_NOTES = {"hq_pct": "% high quality", "modes": "modes covered", "rkl": "reverse KL, nats"}


def axis_label(key: str) -> str:
    if key in AXIS_NOTES:
        return f"{key} ({AXIS_NOTES[key]})"
    if key.startswith(("fid_", "kid_")) or key == "rkl":
        return f"{key} (lower is better)"
    return key


def tradeoff_png(rows: list[dict[str, float]], title: str) -> bytes:
    """The trade-off curve: quality against diversity, one point per scale, annotated with
    sigma; when the run has no such pair of metrics, each metric against sigma."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = [c for c in columns_of(rows) if c != "scale"]
    pairs = curve_panels(columns) or [("scale", c) for c in columns[:6]] or [("scale", "scale")]
    fig = Figure(figsize=(5 * len(pairs), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    ordered = sorted(rows, key=lambda row: row["scale"])
    for ax, (y_key, x_key) in zip(axes, pairs, strict=True):
        if y_key == "scale":  # fallback: metric (y) against sigma (x)
            y_key, x_key = x_key, "scale"
        points = [(row[x_key], row[y_key], row["scale"]) for row in ordered
                  if x_key in row and y_key in row]
        if points:
            xs, ys, sigmas = zip(*points, strict=True)
            ax.plot(xs, ys, "o-")
            for x, y, sigma in points:
                ax.annotate(f"σ={sigma:g}", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize="small")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlabel("sampling scale σ" if x_key == "scale" else axis_label(x_key))
        ax.set_ylabel(axis_label(y_key))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize="medium")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


TRADEOFF_CSV, TRADEOFF_PNG = "tradeoff.csv", "tradeoff.png"


def write_tradeoff(
    run_dir: Path, rows: list[dict[str, float]], eval_samples: int, title: str
) -> list[Path]:
    """``tradeoff.csv`` and ``tradeoff.png``, both made before either is written."""
    paths = [run_dir / TRADEOFF_CSV, run_dir / TRADEOFF_PNG]
    csv, png = tradeoff_csv(rows, eval_samples), tradeoff_png(rows, title)
    atomic_write_text(paths[0], csv)
    results.atomic_write_bytes(paths[1], png)
    return paths
