"""Labelled samples of a trained run's evaluation generator, reproducible from a seed.

Used by ``harness sample`` (a folder of PNG files or a ``.npz`` for clean-fid, torch-fidelity
or any other tool) and by metrics that need samples of chosen classes (``intra_fid_*``).

The protocol, for ``n`` labels and a seed ``s``:

- labels y: drawn from the conditioner's P(c) with a ``torch.Generator`` seeded with ``s``
  (``Conditioner.sample_labels``), or ``n / K`` of each of the K classes in class order
  (``per_class``);
- latents z ~ p(z|y): in blocks of ``BLOCK`` samples, block b drawn from the global torch RNG
  (CPU, and the run's CUDA device) seeded with the b-th number of a ``torch.Generator``
  seeded with ``s + 1``, so that z does not depend on ``batch_size``;
- images x = G(z, y) of the evaluation generator (the EMA copy when the run has one) in
  eval mode without gradients, ``batch_size`` at a time (on the CPU from a channels-last copy
  when the generator declares it bit-identical, as evaluation does). Images are written as
  ``to_uint8(x)``: uint8 = round((clamp(x, -1, 1) + 1) * 127.5), the conversion the FID
  family applies to generated images, so a metric computed from the files sees the same
  pixels as ours.

The same (run checkpoint, n, seed, per_class, device) give the same samples; ``batch_size``
can change G's arithmetic only in the last bits (kernels are chosen by batch shape).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from harness import __version__, results
from harness.api import Conditioner, Sampler, to_uint8
from harness.errors import HarnessError
from harness.signals import on_stop_signals, raise_interrupt

if TYPE_CHECKING:
    from harness.run import Run

Format = Literal["png", "npz"]
BLOCK = 10_000
"""Latents are drawn in blocks of this many samples, each from its own seed."""
MANIFEST, LABELS_CSV, NPZ = "samples.json", "labels.csv", "samples.npz"
PNG_CHANNELS = {1: "L", 3: "RGB"}
"""Channels -> the PIL mode a PNG of them is written in."""


# ----------------------------------------------------------------------------- sampling
def draw_labels(conditioner: Conditioner, n: int, seed: int, per_class: bool) -> torch.Tensor:
    """``n`` labels (n,) long on the CPU: y ~ P(c) from a generator seeded with ``seed``, or
    with ``per_class`` n / K of each class 0..K-1, in class order. ``ValueError`` when
    ``per_class`` and K does not divide n."""
    if per_class:
        classes = conditioner.num_classes
        if n % classes:
            raise ValueError(f"{n} samples cannot be split evenly into {classes} classes")
        return torch.arange(classes).repeat_interleave(n // classes)
    return conditioner.sample_labels(n, torch.Generator().manual_seed(seed)).long()


def block_seeds(blocks: int, seed: int) -> list[int]:
    """The seed of each block of ``BLOCK`` latents: numbers from a generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2**62, (blocks,), generator=generator).tolist()


@contextlib.contextmanager
def sampling_generator(run: Run) -> Iterator[torch.nn.Module]:
    """The evaluation generator in eval mode (a channels-last copy on the CPU when it samples
    bit-identically that way); the run's generator is left in the mode it was in."""
    generator = run.eval_generator
    if generator.channels_last_sampling and run.device.type == "cpu":
        generator = copy.deepcopy(generator).to(memory_format=torch.channels_last)
    was_training = generator.training
    generator.eval()
    try:
        yield generator
    finally:
        generator.train(was_training)


def generate(
    run: Run, labels: torch.Tensor, seed: int, batch_size: int = 1000
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Samples of the evaluation generator for ``labels`` (n,), batch by batch: ``(x, y)``
    with x float (b, *shape) on the CPU (images in [-1, 1], unless G diverged) and y (b,) the
    batch's labels. Latents follow the module's protocol (seeded from ``seed + 1``, block by
    block, each drawn under its own seed with the global RNG restored after it), so the
    consumer may draw random numbers between batches without changing the samples. G is in
    eval mode while the iteration runs and back in its own mode when it ends."""
    seeds = block_seeds(math.ceil(len(labels) / BLOCK), seed + 1)
    with sampling_generator(run) as generator, torch.no_grad():
        for block, block_seed in zip(labels.split(BLOCK), seeds, strict=True):
            on_device = block.to(run.device)
            with run.seeded(block_seed):
                z = run.prior.sample(len(on_device), on_device)
            net_labels = run.net_labels(on_device)
            for start in range(0, len(block), batch_size):
                stop = start + batch_size
                x = generator(z[start:stop], net_labels[start:stop])
                yield x.float().cpu(), block[start:stop]


def sampler(run: Run, seed: int, batch_size: int = 1000, per_class: bool = False) -> Sampler:
    """``sample(n) -> (x, y)``, the metrics' ``Sampler`` over ``generate``: the samples
    ``harness sample --n n --seed seed`` writes, as floats (before ``to_uint8``)."""
    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = draw_labels(run.conditioner, n, seed, per_class)
        xs, ys = zip(*generate(run, labels, seed, batch_size), strict=True)
        return torch.cat(xs), torch.cat(ys)

    return sample


# ----------------------------------------------------------------------------- export
def check_out(out: Path, what: str = "harness sample") -> None:
    """``HarnessError`` (one line) unless ``out`` is a new or empty folder that can be made."""
    out = Path(out)
    try:
        if out.exists() and not out.is_dir():
            raise HarnessError(f"{what} --out {out}: an existing file (valid: a new or empty "
                               "folder)")
        if out.is_dir() and any(out.iterdir()):
            raise HarnessError(f"{what} --out {out}: the folder is not empty (valid: a new or "
                               "empty folder; samples are never written over others)")
    except OSError as exc:
        raise HarnessError(f"{what} --out {out}: {exc.strerror} (valid: a new or empty "
                           "folder)") from None
    reason = results.unwritable_reason(out.parent)
    if reason:
        raise HarnessError(f"{what} --out {out}: {reason} (valid: a writable folder)")


def check_format(run: Run, fmt: Format | None, what: str = "harness sample") -> Format:
    """The format to write: ``fmt``, or by default png for images and npz for other data.
    ``HarnessError`` for png of data that are not 1- or 3-channel images."""
    shape = run.dataset.spec.shape
    if fmt is None:
        fmt = "png" if run.dataset.spec.is_image else "npz"
    if fmt == "png" and not run.dataset.spec.is_image:
        raise HarnessError(
            f"{what} --format png: the run's data ({run.config.dataset}) are points of shape "
            f"{tuple(shape)}, not images (valid: --format npz)"
        )
    if fmt == "png" and shape[0] not in PNG_CHANNELS:
        raise HarnessError(
            f"{what} --format png: images of {shape[0]} channels have no PNG mode (valid: "
            "--format npz, or images of 1 or 3 channels)"
        )
    return fmt


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image (C, H, W), C = 1 or 3, as PNG bytes (PIL; gray for C = 1)."""
    from PIL import Image

    channels = image.shape[0]
    array = image[0] if channels == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=PNG_CHANNELS[channels]).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` when the block ends without an
    error (an empty ``out`` is replaced); on any error, Ctrl-C included, it is removed. An
    interrupted export therefore never looks complete (a SIGKILL leaves the hidden
    ``.NAME.partial-*`` folder, never ``out``)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield temporary
        temporary.chmod(0o777 & ~results.current_umask())
        try:
            os.rename(temporary, out)  # replaces an empty folder, refuses a non-empty one
        except OSError as exc:
            raise HarnessError(f"harness sample --out {out}: cannot be made ({exc.strerror}; "
                               "another process wrote there?); nothing was written") from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def progress_bar(total: int, show: bool) -> Iterator[Any]:
    """``advance(k)``: a rich progress bar on stderr over ``total`` samples, or nothing."""
    if not show:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task("sample", total=total)
        yield lambda k: bar.advance(task, k)


def export(
    run: Run,
    out: Path,
    labels: torch.Tensor,
    seed: int,
    fmt: Format,
    per_class: bool,
    batch_size: int = 1000,
    show_progress: bool = False,
    checkpoint: Path = results.CHECKPOINT,
) -> dict[str, Any]:
    """Write the samples of ``labels`` into the new folder ``out`` and return its manifest
    (``checkpoint``: the file the run's weights came from, relative to its directory).

    png: one file per sample, ``NNNNNN.png`` (the sample's index), in ``CLASS/`` subfolders
    (zero-padded, so torchvision's ``ImageFolder`` gives class c index c) with
    ``per_class``; ``labels.csv`` lists ``file,label``. npz: ``samples.npz`` with ``x`` (uint8
    (n, C, H, W) images, or float32 (n, d) points as generated) and ``y`` (int64 (n,)).
    ``samples.json`` is the manifest. Everything is staged in a temporary folder renamed to
    ``out`` at the end (``staging``); Ctrl-C and SIGTERM remove it (``KeyboardInterrupt``).
    ``HarnessError`` when a sample is non-finite (nothing is then written)."""
    n, classes = len(labels), run.conditioner.num_classes
    images = run.dataset.spec.is_image
    width = max(6, len(str(n - 1)))
    class_width = len(str(classes - 1))
    rows: list[tuple[str, int]] = []
    xs: list[np.ndarray] = []
    done = 0
    with on_stop_signals(raise_interrupt), staging(out) as folder, \
            progress_bar(n, show_progress) as advance:
        for x, y in generate(run, labels, seed, batch_size):
            bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
            if bad:
                raise HarnessError(
                    f"harness sample {run.directory}: {bad} of the {len(x)} samples "
                    f"{done}-{done + len(x) - 1} are non-finite (the generator diverged); "
                    "nothing was written"
                )
            values = to_uint8(x).numpy() if images else x.numpy().astype(np.float32)
            if fmt == "npz":
                xs.append(values)
            else:
                for offset, (image, label) in enumerate(zip(values, y.tolist(), strict=True)):
                    name = f"{done + offset:0{width}d}.png"
                    if per_class:
                        name = f"{label:0{class_width}d}/{name}"
                        (folder / name).parent.mkdir(exist_ok=True)
                    (folder / name).write_bytes(png_bytes(image))
                    rows.append((name, label))
            done += len(x)
            advance(len(x))
        if fmt == "npz":
            np.savez(folder / NPZ, x=np.concatenate(xs), y=labels.numpy().astype(np.int64))
        else:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerows([("file", "label"), *rows])
            (folder / LABELS_CSV).write_text(buffer.getvalue())
        manifest = describe(run, labels, seed, fmt, per_class, batch_size, checkpoint)
        results.atomic_write_json(folder / MANIFEST, manifest)
    return manifest


def describe(
    run: Run, labels: torch.Tensor, seed: int, fmt: Format, per_class: bool, batch_size: int,
    checkpoint: Path = results.CHECKPOINT,
) -> dict[str, Any]:
    """``samples.json``: where the samples come from and how they were drawn."""
    assert run.directory is not None
    classes = run.conditioner.num_classes
    images = run.dataset.spec.is_image

    return {
        "run_dir": str(run.directory.absolute()),
        "run_id": run.directory.name,
        "run_status": results.run_status(run.directory),
        "checkpoint": str(checkpoint),
        "checkpoint_step": run.step,
        "generator": "ema" if run.ema_generator is not None else "generator",
        "n": len(labels),
        "seed": seed,
        "format": fmt,
        "per_class": per_class,
        "files": NPZ if fmt == "npz" else LABELS_CSV,
        "shape": list(run.dataset.spec.shape),
        "dtype": "uint8" if images else "float32",
        "conversion": "uint8 = round((clamp(x, -1, 1) + 1) * 127.5) (harness.api.to_uint8, as "
                      "the FID family)" if images else "none: G's float32 output",
        "labels": {
            "source": f"{len(labels) // classes} per class" if per_class
            else "y ~ P(c) of the conditioner",
            "conditioner": run.config.cond,
            "num_classes": classes,
            "counts": torch.bincount(labels, minlength=classes).tolist(),
        },
        "batch_size": batch_size,
        "device": str(run.device),
        "protocol": "harness.sampling: labels from torch.Generator(seed); z ~ p(z|y) in "
                    f"blocks of {BLOCK}, each from the global RNG seeded from "
                    "torch.Generator(seed + 1); the evaluation generator in eval mode",
        "harness_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
