"""Built-in figures: a sample grid with one row per class, and training curves.

Grids go to ``<run>/samples/step_XXXXXXX.png`` every ``--sample-every`` steps and at every
evaluation; ``<run>/curves.png`` plots ``log.jsonl`` (losses, label changes, metrics) when the
run finishes. Uses only the public lifecycle hooks; figures never touch training state.
"""

from __future__ import annotations

import io
import json
import math
from typing import TYPE_CHECKING, Any

from harness import hookimpl
from harness.results import LOG, atomic_write_bytes

if TYPE_CHECKING:  # torch is imported where used: listing plugins must not load it
    import torch
    from matplotlib.figure import Figure

    from harness.run import Run

ROWS = 20
"""Classes shown in a grid: the most probable ones under P(c)."""
COLUMNS = 10
POINTS = 2_000
"""Generated points in a 2-D scatter plot."""
SEED_OFFSET = 20_000
"""Grids use the fixed z seed ``config.seed + SEED_OFFSET``, so grids of one run line up."""


def grid_labels(run: Run, columns: int = COLUMNS, rows: int = ROWS) -> torch.Tensor:
    """``columns`` copies of each of the ``rows`` most probable classes, row-major."""
    weights = run.conditioner.class_weights()
    classes = weights.argsort(descending=True, stable=True)[:rows]
    return classes.repeat_interleave(columns)


def image_grid_png(run: Run) -> bytes:
    from PIL import Image
    from torchvision.utils import make_grid

    from harness.api import to_uint8

    images = run.generate(grid_labels(run), run.config.seed + SEED_OFFSET)
    grid = make_grid(to_uint8(images), nrow=COLUMNS, padding=1)
    buffer = io.BytesIO()
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(buffer, format="png")
    return buffer.getvalue()


def scatter_png(run: Run) -> bytes:
    """Flat 2-D data: real points in grey, generated points coloured by class."""
    import torch

    weights = run.conditioner.class_weights()
    labels = torch.multinomial(
        weights, POINTS, replacement=True, generator=torch.Generator().manual_seed(run.config.seed)
    )
    fake = run.generate(labels, run.config.seed + SEED_OFFSET).flatten(1)
    real = run.dataset.batch(torch.arange(min(POINTS, len(run.dataset)))).flatten(1)
    fig = new_figure(1)
    ax = fig.axes[0]
    ax.scatter(real[:, 0], real[:, 1], s=2, c="lightgrey", label="real")
    ax.scatter(fake[:, 0], fake[:, 1], s=2, c=labels.numpy(), cmap="tab20", label="generated")
    ax.set_aspect("equal")
    ax.set_title(f"step {run.step}")
    ax.legend(loc="upper right", markerscale=4)
    return figure_png(fig)


def save_samples(run: Run) -> None:
    if run.directory is None:
        return
    spec = run.dataset.spec
    if spec.is_image:
        png = image_grid_png(run)
    elif spec.shape == (2,):
        png = scatter_png(run)
    else:
        return
    atomic_write_bytes(run.directory / "samples" / f"step_{run.step:07d}.png", png)


def new_figure(panels: int) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * panels, 4), layout="constrained")
    fig.subplots(1, panels, squeeze=False)
    return fig


def figure_png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def read_log(run: Run) -> list[dict[str, Any]]:
    assert run.directory is not None
    path = run.directory / LOG
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_png(records: list[dict[str, Any]]) -> bytes | None:
    """Losses over steps, the fraction of labels changed at each re-clustering, metrics."""
    losses = [r for r in records if "event" not in r]
    relabels = [r for r in records if r.get("event") == "labels_updated"]
    evaluations = [r for r in records if r.get("event") == "evaluated"]
    metric_names = sorted({k for r in evaluations for k in r if k not in ("step", "event", "time")})
    panels = [p for p, show in (("losses", losses), ("labels", relabels),
                                ("metrics", len(evaluations) > 1)) if show]  # a curve needs 2
    if not losses:
        return None
    fig = new_figure(len(panels))
    for ax, panel in zip(fig.axes, panels, strict=True):
        if panel == "losses":
            for key in sorted({k for r in losses for k in r} - {"step", "time"}):
                values = [r.get(key, math.nan) for r in losses]  # a lazy term skips steps
                ax.plot([r["step"] for r in losses], values, label=key)
            ax.set_title("losses")
        elif panel == "labels":
            ax.plot([r["step"] for r in relabels], [r["changed_fraction"] for r in relabels], "o-")
            ax.set_title("fraction of labels changed by re-clustering")
        else:
            for key in metric_names:
                ax.plot([r["step"] for r in evaluations], [r.get(key) for r in evaluations],
                        "o-", label=key)
            ax.set_yscale("symlog", linthresh=1e-3)
            ax.set_title("metrics")
        ax.set_xlabel("step")
        if panel != "labels":
            ax.legend(fontsize="small")
    return figure_png(fig)


@hookimpl
def harness_step_end(run: Run, step: int, losses: dict[str, Any]) -> None:
    every = run.config.sample_every
    if every and step % every == 0:
        save_samples(run)


@hookimpl
def harness_evaluated(run: Run, step: int, metrics: dict[str, float]) -> None:
    every = run.config.sample_every
    if not (every and step % every == 0):
        save_samples(run)


@hookimpl
def harness_run_finished(run: Run, metrics: dict[str, float]) -> None:
    if run.directory is not None and (png := curves_png(read_log(run))) is not None:
        atomic_write_bytes(run.directory / "curves.png", png)
