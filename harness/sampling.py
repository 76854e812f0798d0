"""Labelled samples of a trained run's evaluation generator, reproducible from a seed.

Used by ``harness sample`` (a folder of PNG files or a ``.npz`` for clean-fid, torch-fidelity
or any other tool) and by metrics that need samples of chosen classes (``intra_fid_*``).

The protocol, for ``n`` labels and a seed ``s`` (``harness sample``'s default: the run's
seed), is the evaluation's (``Trainer.evaluate``, ``Trainer.sample``), so that the default
draw of ``n`` samples is exactly what ``harness eval --eval-samples n`` (and the run's own
evaluation) scores:

- labels y: drawn from the conditioner's P(c) (``Conditioner.sample_labels``) with a
  ``torch.Generator`` seeded with ``s + EVAL_LABEL_SEED``, ``BLOCK`` at a time, or ``n / K`` of
  each of the K classes in class order (``per_class``);
- latents z ~ p(z|y): ``BLOCK`` at a time from the global torch RNG (CPU, and the run's CUDA
  device) seeded once with ``s + EVAL_LATENT_SEED`` and continued from block to block (the
  caller's own global RNG state is back between blocks), so z does not depend on
  ``batch_size``;
- images x = G(z, y) of the evaluation generator (the EMA copy when the run has one) in
  eval mode without gradients, ``batch_size`` at a time (on the CPU from a channels-last copy
  when the generator declares it bit-identical, as evaluation does). Images are written as
  ``to_uint8(x)``: uint8 = round((clamp(x, -1, 1) + 1) * 127.5), the conversion the FID
  family applies to generated images, so a metric computed from the files sees the same
  pixels as ours.

The same (run checkpoint, n, seed, per_class, device) give the same samples; ``batch_size``
can change G's arithmetic only in the last bits (kernels are chosen by batch shape), so the
default, ``BLOCK``, is the evaluation's batch.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from harness import __version__, results
from harness.api import Conditioner, Sampler, to_uint8
from harness.build import available_memory
from harness.errors import HarnessError
from harness.run import EVAL_BATCH, EVAL_LABEL_SEED, EVAL_LATENT_SEED
from harness.signals import on_stop_signals, raise_interrupt

if TYPE_CHECKING:
    from harness.run import Run

Format = Literal["png", "npz"]
BLOCK = EVAL_BATCH
"""Labels and latents are drawn this many at a time, as the evaluation draws them."""
MANIFEST, LABELS_CSV, NPZ = "samples.json", "labels.csv", "samples.npz"
PNG_CHANNELS = {1: "L", 3: "RGB"}
"""Channels -> the PIL mode a PNG of them is written in."""
STAGING = "partial"
"""Staging folders are ``.<out name>.partial-<host>-<pid>-<random>`` beside ``out``."""


# ----------------------------------------------------------------------------- sampling
def draw_labels(conditioner: Conditioner, n: int, seed: int, per_class: bool) -> torch.Tensor:
    """``n`` labels (n,) int64 on the CPU: y ~ P(c) from a generator seeded with ``seed +
    EVAL_LABEL_SEED``, ``BLOCK`` at a time (as the evaluation draws them), or with ``per_class``
    n / K of each class 0..K-1, in class order. ``ValueError`` when ``per_class`` and K does
    not divide n."""
    if per_class:
        classes = conditioner.num_classes
        if n % classes:
            raise ValueError(f"{n} samples cannot be split evenly into {classes} classes")
        return torch.arange(classes).repeat_interleave(n // classes)
    generator = torch.Generator().manual_seed(seed + EVAL_LABEL_SEED)
    blocks = [conditioner.sample_labels(len(block), generator).long()
              for block in torch.arange(n).split(BLOCK)]
    return torch.cat(blocks)


class LatentStream:
    """The global torch RNG (CPU, and ``device`` when it is a CUDA device) seeded once with
    ``seed`` and continued from one ``drawing()`` block to the next; outside them the
    caller's own global RNG state is in place."""

    def __init__(self, device: torch.device, seed: int) -> None:
        self.devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=self.devices):
            torch.manual_seed(seed)
            self.states = self.current()

    def current(self) -> list[torch.Tensor]:
        """The CPU's RNG state, then each CUDA device's."""
        return [torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in self.devices)]

    @contextlib.contextmanager
    def drawing(self) -> Iterator[None]:
        """The stream's RNG state in place inside the block, kept for the next one."""
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.states[0])
            for device, state in zip(self.devices, self.states[1:], strict=True):
                torch.cuda.set_rng_state(state, device)
            yield
            self.states = self.current()


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
    run: Run, labels: torch.Tensor, seed: int, batch_size: int = BLOCK
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Samples of the evaluation generator for ``labels`` (n,) int64, batch by batch: ``(x,
    y)`` with x float32 (b, *shape) on the CPU, contiguous (images in [-1, 1], unless G
    diverged) and y (b,) the batch's labels. Latents follow the module's protocol (the global
    RNG seeded with ``seed + EVAL_LATENT_SEED``, ``BLOCK`` at a time, the caller's RNG state
    restored between blocks), so the consumer may draw random numbers between batches
    without changing the samples; ``generate(run, draw_labels(run.conditioner, n, seed,
    False), seed)`` gives the samples of the evaluation of a run of seed ``seed`` (of the
    run's own seed: what its metrics scored). G is in eval mode while the iteration runs and
    back in its own mode when it ends."""
    stream = LatentStream(run.device, seed + EVAL_LATENT_SEED)
    with sampling_generator(run) as generator, torch.no_grad():
        for block in labels.split(BLOCK):
            on_device = block.to(run.device)
            with stream.drawing():
                z = run.prior.sample(len(on_device), on_device)
            net_labels = run.net_labels(on_device)
            for start in range(0, len(block), batch_size):
                stop = start + batch_size
                x = generator(z[start:stop], net_labels[start:stop])
                yield x.float().contiguous().cpu(), block[start:stop]


def sampler(run: Run, seed: int, batch_size: int = BLOCK, per_class: bool = False) -> Sampler:
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
    if out.is_symlink() and not out.exists():
        raise HarnessError(f"{what} --out {out}: a link to nothing (valid: a new or empty "
                           "folder)")
    run_dir = results.run_dir_above(out / "x")
    if run_dir is not None:
        raise HarnessError(f"{what} --out {out}: inside the run directory {run_dir}, whose "
                           "files must not be replaced (valid: a folder outside every run "
                           "directory)")
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


def disk_per_sample(shape: tuple[int, ...], fmt: Format, images: bool) -> int:
    """Bytes of disk one sample of ``shape`` takes at most: in ``samples.npz``, its uint8 or
    float32 values and int64 label; as a PNG, its uint8 pixels with a filter byte per row
    and every chunk and zlib header (PNG never stores more: zlib falls back to stored
    blocks), rounded up to whole 4 KiB blocks, plus its ``labels.csv`` row."""
    values = math.prod(shape)
    if fmt == "npz":
        return values * (1 if images else 4) + 8
    raw = values + shape[1] + 5 * math.ceil((values + shape[1]) / 65_535) + 256
    return math.ceil(raw / 4096) * 4096 + 64


def size(nbytes: int) -> str:
    """``nbytes`` for a message: GiB, or MiB below 1 GiB."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def check_resources(
    run: Run, out: Path, n: int, fmt: Format, batch_size: int, what: str = "harness sample"
) -> None:
    """``HarnessError`` (one line) when the export of ``n`` samples would not fit: on disk
    beside ``out`` (``disk_per_sample``, from ``shutil.disk_usage``), or in memory (a batch
    of G's float32 output three times over: on the device, on the CPU and converted; and
    the labels twice). Samples are streamed to disk, so memory does not grow with ``n``."""
    shape = tuple(run.dataset.spec.shape)
    per_sample = disk_per_sample(shape, fmt, run.dataset.spec.is_image)
    parent = Path(out).absolute().parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if n * per_sample > free:
        raise HarnessError(
            f"{what} --n {n} --format {fmt}: the samples need up to "
            f"{size(n * per_sample)} of disk, {size(free)} is free at "
            f"{parent} (valid here: --n at most {free // per_sample})")
    batch = 3 * 4 * math.prod(shape)
    need, available = min(batch_size, n) * batch + 16 * n, available_memory()
    if need > available:
        most = max(0, (available - 16 * n) // batch)
        raise HarnessError(
            f"{what} --batch-size {batch_size}: a batch needs about {size(need)} of memory, "
            f"{size(available)} is available (valid here: --batch-size at "
            f"most {most})")


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image (C, H, W), C = 1 or 3, as PNG bytes (PIL; gray for C = 1)."""
    import io

    from PIL import Image

    channels = image.shape[0]
    array = image[0] if channels == 1 else image.transpose(1, 2, 0)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array), mode=PNG_CHANNELS[channels]).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> list[str]:
    """Remove the staging folders of ``out`` (``.NAME.partial-<host>-<pid>-*``) that an
    export killed outright (SIGKILL, power loss) left behind: those of this host whose
    process is gone. Folders of a live process, of another host or without a pid in their
    name are left alone. Returns the names removed."""
    out = Path(out).absolute()
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{STAGING}-(?P<host>.+)-(?P<pid>\d+)-"
                         r"[a-z0-9_]+")
    removed = []
    with contextlib.suppress(OSError):
        for entry in sorted(out.parent.iterdir()):
            match = pattern.fullmatch(entry.name)
            if (match and entry.is_dir() and match["host"] == socket.gethostname()
                    and not process_alive(int(match["pid"]))):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    return removed


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` that becomes ``out`` when the block ends without an
    error (an empty ``out`` is replaced); on any error, Ctrl-C included, it is removed. An
    interrupted export therefore never looks complete: a SIGKILL leaves the hidden
    ``.NAME.partial-<host>-<pid>-*`` folder, never ``out``, and the next export to ``out``
    removes it once that process is gone (a note on stderr names it)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_staging(out)
    if removed:
        print(f"note: removed {len(removed)} staging folder(s) left by an export to {out} "
              f"that was killed: {', '.join(removed)}", file=sys.stderr)
    prefix = f".{out.name}.{STAGING}-{socket.gethostname()}-{os.getpid()}-"
    temporary = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
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
def npz_writer(
    path: Path, n: int, shape: tuple[int, ...], dtype: np.dtype, labels: np.ndarray
) -> Iterator[Callable[[np.ndarray], None]]:
    """``write(values)``: append (b, *shape) arrays of ``dtype`` to the array ``x`` (n,
    *shape) of the ``.npz`` at ``path``, streamed to disk (a batch at a time in memory);
    ``y`` = ``labels`` follows when the block ends. The bytes ``np.savez(path, x=..., y=...)``
    writes; the caller writes exactly n samples (else the file is incomplete)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": (n, *shape)}
    with zipfile.ZipFile(path, "w", allowZip64=True) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            yield lambda values: member.write(np.ascontiguousarray(values, dtype).tobytes())
        with archive.open("y.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array(member, labels, allow_pickle=False)


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
    batch_size: int = BLOCK,
    show_progress: bool = False,
    checkpoint: Path = results.CHECKPOINT,
) -> dict[str, Any]:
    """Write the samples of ``labels`` (n,) int64 into the new folder ``out`` and return its
    manifest (``checkpoint``: the file the run's weights came from, relative to its
    directory).

    png: one file per sample, ``NNNNNN.png`` (the sample's index), in ``CLASS/`` subfolders
    (zero-padded, so torchvision's ``ImageFolder`` gives class c index c) with
    ``per_class``; ``labels.csv`` lists ``file,label``. npz: ``samples.npz`` with ``x`` (uint8
    (n, C, H, W) images, or float32 (n, d) points as generated) and ``y`` (int64 (n,)).
    ``samples.json`` is the manifest. Samples are written as they are generated (memory
    holds a batch, whatever n; ``check_resources`` checks disk and memory first).
    Everything is staged in a temporary folder renamed to ``out`` at the end (``staging``);
    Ctrl-C and SIGTERM remove it (``KeyboardInterrupt`` naming the signal, re-raised).
    ``HarnessError`` when a sample is non-finite (nothing is then written)."""
    n, classes = len(labels), run.conditioner.num_classes
    images = run.dataset.spec.is_image
    shape = tuple(run.dataset.spec.shape)
    width = max(6, len(str(n - 1)))
    class_width = len(str(classes - 1))
    done = 0
    with on_stop_signals(raise_interrupt), staging(out) as folder, \
            progress_bar(n, show_progress) as advance, contextlib.ExitStack() as files:
        if fmt == "npz":
            write = files.enter_context(npz_writer(
                folder / NPZ, n, shape, np.dtype(np.uint8 if images else np.float32),
                labels.numpy().astype(np.int64)))
        else:
            rows = csv.writer(files.enter_context((folder / LABELS_CSV).open(
                "w", newline="")), lineterminator="\n")
            rows.writerow(("file", "label"))
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
                write(values)
            else:
                for offset, (image, label) in enumerate(zip(values, y.tolist(), strict=True)):
                    name = f"{done + offset:0{width}d}.png"
                    if per_class:
                        name = f"{label:0{class_width}d}/{name}"
                        (folder / name).parent.mkdir(exist_ok=True)
                    (folder / name).write_bytes(png_bytes(image))
                    rows.writerow((name, label))
            done += len(x)
            advance(len(x))
        files.close()
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
        "protocol": f"harness.sampling, the evaluation's draw: labels from "
                    f"torch.Generator(seed + {EVAL_LABEL_SEED}) and z ~ p(z|y) from the global RNG "
                    f"seeded once with seed + {EVAL_LATENT_SEED}, {BLOCK} at a time; the "
                    "evaluation generator in eval mode",
        "harness_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
