"""Logger ``tensorboard``: TensorBoard event files in ``<run>/tensorboard/``.

``pip install 'gan-harness[tensorboard]'``; written with ``torch.utils.tensorboard``, read
with ``tensorboard --logdir results`` (every run directory is one run there). What is logged
and when: ``harness_plugins.loggers``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness.loggers import Logger
from harness_plugins.loggers import Sink, Tracker

if TYPE_CHECKING:
    from harness.run import Run

FOLDER = "tensorboard"


class TensorBoard(Logger):
    """TensorBoard event files in <run>/tensorboard/: losses, re-clustering label changes,
    metrics and sample grids (pip install 'gan-harness[tensorboard]')."""

    requires = ("tensorboard",)
    extra = "tensorboard"


class EventFiles(Sink):
    """A ``SummaryWriter`` on ``<run>/tensorboard/``; a resumed process adds an event file.

    A run resumed from step s re-does the steps after s: the writer marks the events of
    steps s + 1 and later from earlier attempts as purged (``purge_step``), so TensorBoard
    shows each step once, as ``log.jsonl`` keeps it.
    """

    def __init__(self, run: Run) -> None:
        from torch.utils.tensorboard import SummaryWriter

        assert run.directory is not None
        self.writer = SummaryWriter(run.directory / FOLDER, purge_step=run.step + 1)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        self.writer.add_image("samples", pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


plugin = Tracker("tensorboard", TensorBoard, EventFiles)
"""The entry point ``tensorboard`` of group ``harness.plugins``."""
