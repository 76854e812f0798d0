"""File-backed image datasets read through torchvision: MNIST, stacked MNIST, CIFAR-10 and a
folder of images. Nothing is downloaded unless ``--download`` is given."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from pydantic import Field
from torchvision import datasets
from torchvision.datasets.folder import is_image_file

from harness.api import DataLocation, Dataset, DataSpec, Options
from harness.errors import ConfigError
from harness_plugins.datasets.images import (
    DIGITS_SPEC,
    STACKED_SPEC,
    holdout_split,
    stack_digits,
)

T = TypeVar("T")
FLAGS = "pass --data-root DIR, or --download to fetch them"
MNIST_FILES = [
    f"{split}-{kind}"
    for split in ("train", "t10k")
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
]


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception with all whitespace runs collapsed to one space."""
    return " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")


def open_files(
    name: str,
    location: DataLocation,
    folder: Path,
    expected: tuple[str, Sequence[str]],
    load: Callable[[], T],
) -> T:
    """Run torchvision's ``load``; turn its failure into a one-line ConfigError that names the
    ``expected`` (description, files) missing under ``folder``, or says why the present ones
    could not be read."""
    try:
        return load()
    except Exception as exc:
        description, files = expected
        missing = [file for file in files if not (folder / file).is_file()]
        if missing and not location.download:
            found = "no data" if len(missing) == len(files) else f"missing {', '.join(missing)}"
            raise ConfigError(
                f"dataset {name!r}: {found} under {folder} (expected {description}: "
                f"{', '.join(files)}); {FLAGS}"
            ) from exc
        action = "download or read" if location.download else "read"
        raise ConfigError(
            f"dataset {name!r}: cannot {action} the files under {folder}: {one_line(exc)}"
        ) from exc


def check_labels(name: str, labels: torch.Tensor, num_classes: int, folder: Path) -> torch.Tensor:
    """``labels`` as long, or a ConfigError if any lies outside [0, num_classes)."""
    labels = labels.long()
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ConfigError(
            f"dataset {name!r}: labels outside 0..{num_classes - 1} in the files under {folder}"
        )
    return labels


# ----------------------------------------------------------------------------- MNIST
def load_mnist_32(
    name: str, location: DataLocation, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's train or test split as uint8 (N, 1, 32, 32) and labels (N,).

    torchvision 0.29 only checks that the four raw files exist (MD5s are checked on the
    downloaded archives), so any file in the idx format loads. Resizing 28 -> 32 is
    bilinear with PIL's filter (``antialias=True``), identical to the ``transforms.Resize``
    of the official stacked-MNIST code.
    """
    folder = Path(location.root) / "MNIST" / "raw"
    source = open_files(
        name,
        location,
        folder,
        ("the uncompressed MNIST idx files", MNIST_FILES),
        lambda: datasets.MNIST(location.root, train=train, download=location.download),
    )
    images = F.interpolate(source.data.unsqueeze(1), size=(32, 32), mode="bilinear", antialias=True)
    return images, check_labels(name, source.targets, 10, folder)


class MNIST(Dataset):
    """MNIST train split (60k) at 1x32x32, labels 0-9; ``x_heldout`` is the test split."""

    def __init__(self, options: Options, seed: int, location: DataLocation | None = None) -> None:
        super().__init__(options, seed, location)
        self.x, self.y = load_mnist_32("mnist", self.location, train=True)
        self.x_heldout = load_mnist_32("mnist", self.location, train=False)[0]
        self.spec = DIGITS_SPEC


class StackedMNISTOptions(Options):
    size: int = Field(
        100_000, ge=1, le=1_000_000, description="number of training triples (official: 100k)"
    )
    heldout_size: int = Field(
        10_000, ge=1, le=1_000_000,
        description="held-out triples, built only from MNIST test digits",
    )


class StackedMNIST(Dataset):
    """Stacked MNIST (official protocol): three independent uniformly drawn MNIST train digits
    at 32x32 as the R, G, B channels; 1000 modes, label 100a + 10b + c.

    ``triples`` holds the indices of each channel's digit into the MNIST train split.
    """

    Options = StackedMNISTOptions

    def __init__(
        self, options: StackedMNISTOptions, seed: int, location: DataLocation | None = None
    ) -> None:
        super().__init__(options, seed, location)
        generator = torch.Generator().manual_seed(seed)
        images, labels = load_mnist_32("stacked_mnist", self.location, train=True)
        self.x, self.y, self.triples = stack_digits(images, labels, options.size, generator)
        images, labels = load_mnist_32("stacked_mnist", self.location, train=False)
        self.x_heldout = stack_digits(images, labels, options.heldout_size, generator)[0]
        self.spec = STACKED_SPEC


# ----------------------------------------------------------------------------- CIFAR-10
class PresentCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 that checks its batch files are present instead of their MD5s.

    torchvision hashes all six batches and the metadata on every load and refuses any file
    that is not byte-identical to the official release, so files in the same format (the
    tests' fixtures) could not go through the same code. Truncated or foreign files still
    fail to unpickle or reshape, labels are range-checked, and ``--download`` still verifies
    the archive's MD5 (``tgz_md5``) before extracting it.
    """

    train_list = [[file, None] for file, _ in datasets.CIFAR10.train_list]
    test_list = [[file, None] for file, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def load_cifar10(location: DataLocation, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10's train or test split as uint8 (N, 3, 32, 32) and labels (N,)."""
    folder = Path(location.root) / PresentCIFAR10.base_folder
    batches = [file for file, _ in PresentCIFAR10.train_list + PresentCIFAR10.test_list]
    source = open_files(
        "cifar10",
        location,
        folder,
        ("cifar-10-python.tar.gz extracted", [*batches, PresentCIFAR10.meta["filename"]]),
        lambda: PresentCIFAR10(location.root, train=train, download=location.download),
    )
    images = torch.from_numpy(source.data).permute(0, 3, 1, 2).contiguous()
    return images, check_labels("cifar10", torch.tensor(source.targets), 10, folder)


class CIFAR10(Dataset):
    """CIFAR-10 train split (50k), 3x32x32, 10 labels; ``x_heldout`` is the test split."""

    def __init__(self, options: Options, seed: int, location: DataLocation | None = None) -> None:
        super().__init__(options, seed, location)
        self.x, self.y = load_cifar10(self.location, train=True)
        self.x_heldout = load_cifar10(self.location, train=False)[0]
        self.spec = DataSpec(shape=(3, 32, 32), num_classes=10, has_labels=True)


# ----------------------------------------------------------------------------- image folder
class ImageFolderOptions(Options):
    path: str = Field(
        "", pattern=r"^[^\x00]*$",
        description="folder of images, absolute or relative to --data-root (required)",
    )
    resolution: int = Field(
        32, ge=1, le=1024,
        description="output size: shorter side resized to it, then centre-cropped",
    )
    heldout_fraction: float = Field(
        0.0, ge=0, lt=1, description="fraction of images kept out of training (seeded)"
    )


SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
"""Pillow's modes of 16-bit grayscale images (PNG, TIFF); ``I`` is 32-bit, read as 16-bit."""


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit grayscale is scaled 0..65535 -> 0..255 (rounded
    division by 257) first: Pillow's own ``convert`` would clip it at 255, i.e. to white."""
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(((levels + 128) // 257).astype(np.uint8))
    return image.convert("RGB")


def load_image(path: str, resolution: int) -> torch.Tensor:
    """One image as RGB uint8 (3, resolution, resolution): shorter side resized (bilinear),
    then centre-cropped, as ``Resize`` + ``CenterCrop`` in the official code."""
    try:
        with Image.open(path) as image:
            resized = TF.resize(to_rgb(image), resolution)
    except Exception as exc:
        raise ConfigError(f"dataset 'image_folder': cannot read {path}: {one_line(exc)}") from exc
    return TF.pil_to_tensor(TF.center_crop(resized, resolution))


def hidden(path: Path) -> bool:
    """Whether a file or folder name starts with '.' (``.DS_Store``, ``.ipynb_checkpoints``,
    macOS ``._x.png`` resource forks): never data."""
    return path.name.startswith(".")


class VisibleImageFolder(datasets.ImageFolder):
    """torchvision's ``ImageFolder`` without hidden class folders, hidden files, or images
    under hidden subfolders of a class."""

    def __init__(self, root: Path) -> None:
        def visible_image(path: str) -> bool:
            parts = Path(path).relative_to(root).parts
            return is_image_file(path) and not any(part.startswith(".") for part in parts)

        super().__init__(root, is_valid_file=visible_image)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        classes = sorted(p.name for p in Path(directory).iterdir() if p.is_dir() and not hidden(p))
        return classes, {name: i for i, name in enumerate(classes)}


class ImageFolder(Dataset):
    """All images of a folder, RGB at ``resolution``. One subfolder per class gives labels
    (torchvision ``ImageFolder`` semantics); a flat folder of images gives none. Hidden
    files and folders (names starting with '.') are skipped."""

    Options = ImageFolderOptions

    def __init__(
        self, options: ImageFolderOptions, seed: int, location: DataLocation | None = None
    ) -> None:
        super().__init__(options, seed, location)
        paths, labels, classes = self.find_images()
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = torch.stack(list(pool.map(load_image, paths, repeat(options.resolution))))
        kept, held = holdout_split(
            len(images), options.heldout_fraction, torch.Generator().manual_seed(seed)
        )
        self.x = images[kept]
        self.y = None if labels is None else labels[kept]
        self.x_heldout = images[held] if len(held) else None
        self.spec = DataSpec(
            shape=(3, options.resolution, options.resolution),
            num_classes=None if classes is None else len(classes),
            has_labels=classes is not None,
        )


    def find_images(self) -> tuple[list[str], torch.Tensor | None, list[str] | None]:
        """Image paths, labels and class names (both None for a flat folder)."""
        layout = "(expected image files, or one subfolder of images per class)"
        if not self.options.path:
            raise ConfigError(
                f"dataset 'image_folder' needs a folder {layout}: pass --dataset-opt path=DIR, "
                "absolute or relative to --data-root"
            )
        folder = Path(self.options.path)
        if not folder.is_absolute():
            folder = Path(self.location.root) / folder
        if not folder.is_dir():
            raise ConfigError(
                f"dataset 'image_folder': no folder {folder} {layout}; set --dataset-opt "
                "path=DIR, absolute or relative to --data-root DIR"
            )
        entries = sorted(p for p in folder.iterdir() if not hidden(p))
        flat = [str(p) for p in entries if p.is_file() and is_image_file(p.name)]
        if not any(p.is_dir() for p in entries):
            if not flat:
                raise ConfigError(f"dataset 'image_folder': no images in {folder} {layout}")
            return flat, None, None
        if flat:
            raise ConfigError(
                f"dataset 'image_folder': {folder} holds both images and subfolders; put all "
                "images in class subfolders, or none"
            )
        try:
            source = VisibleImageFolder(folder)
        except Exception as exc:
            raise ConfigError(f"dataset 'image_folder': {one_line(exc)}") from exc
        paths, labels = zip(*source.samples, strict=True)
        return list(paths), torch.tensor(labels), source.classes
