"""A small CNN that reads one handwritten digit per image channel.

It is the feature extractor of ``fid_digits`` and the classifier of ``stacked_modes``.
Trained once, deterministically, on MNIST when its files are under the data root, else on
scikit-learn's bundled digits (offline), and cached in the user cache directory
(``$HARNESS_CACHE_DIR``, else ``~/.cache/gan-harness``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.api import DataLocation, Options
from harness.errors import MetricUnavailable
from harness.results import atomic_write_bytes, unwritable_reason

Source = Literal["auto", "digits", "mnist"]
SIZE = 32
CACHE_ENV = "HARNESS_CACHE_DIR"
VERSION = 1
"""Bump when the architecture or the training code changes: it invalidates cached weights."""
MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
"""torchvision's extracted MNIST files (checked without importing torchvision)."""


class SourceOptions(Options):
    source: Source = Field(
        "auto",
        description="classifier training data: auto (MNIST if under --data-root, else digits), "
        "digits (scikit-learn) or mnist",
    )


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters (part of the cache key)."""

    epochs: int
    batch_size: int = 64
    lr: float = 1e-3
    max_shift: int = 3
    """Random translation of training images, in pixels (both axes)."""
    heldout: float = 0.2
    """Fraction of scikit-learn digits kept for the accuracy figure (MNIST: its test set)."""
    seed: int = 0


RECIPES: dict[str, Recipe] = {"digits": Recipe(epochs=20), "mnist": Recipe(epochs=3)}


class DigitClassifier(nn.Module):
    """(n, 1, 32, 32) float in [0, 1] -> (penultimate features (n, 128), logits (n, 10))."""

    feature_dim = 128

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.AvgPool2d(2),  # 16x16 keeps what the 32x32 digits hold, at a quarter of the cost
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(self.feature_dim, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 1, H, W) -> float (n, 1, 32, 32) in [0, 1], the classifier's input."""
    x = images.float() / 255
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return x


@torch.no_grad()
def classify_channels(
    model: DigitClassifier, images: torch.Tensor, device: torch.device, batch_size: int = 4096
) -> torch.Tensor:
    """The digit (n, C) in every channel of uint8 images (n, C, H, W); ``model`` in eval mode."""
    n, c = images.shape[:2]
    single = images.reshape(n * c, 1, *images.shape[2:])
    digits = [
        model(prepare(chunk.to(device)))[1].argmax(1).cpu() for chunk in single.split(batch_size)
    ]
    return torch.cat(digits).reshape(n, c)


# ----------------------------------------------------------------------------- data
def mnist_available(data_root: Path) -> bool:
    """Whether torchvision's extracted MNIST files are under ``data_root/MNIST/raw``."""
    return all((data_root / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)


def mnist_fingerprint(data_root: Path) -> str:
    """A digest of the MNIST files (labels' bytes, images' sizes): a classifier cached for
    one copy of MNIST is never reused for different files."""
    raw = data_root / "MNIST" / "raw"
    digest = hashlib.sha256()
    for name in MNIST_FILES:
        path = raw / name
        digest.update(path.read_bytes() if "labels" in name else str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


def load_mnist(data_root: Path) -> tuple[torch.Tensor, ...]:
    """MNIST train and test images, uint8 (n, 1, 32, 32), and labels: the ``mnist`` dataset's
    own loader, so the classifier sees digits exactly as the GAN's training data shows them."""
    from harness_plugins.datasets.files import load_mnist_32

    if not mnist_available(data_root):
        raise MetricUnavailable(
            f"digit classifier source 'mnist': MNIST files ({', '.join(MNIST_FILES)}) "
            f"not found in {data_root / 'MNIST' / 'raw'}"
        )
    location = DataLocation(data_root, download=False)
    return (*load_mnist_32("mnist", location, train=True),
            *load_mnist_32("mnist", location, train=False))


def load_digits_split(recipe: Recipe) -> tuple[torch.Tensor, ...]:
    """scikit-learn digits 32x32, split at random (seeded) into train and held-out parts."""
    from harness_plugins.datasets.digits import load_digits_32

    images, labels = load_digits_32()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(recipe.seed))
    cut = len(images) - round(recipe.heldout * len(images))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


# ----------------------------------------------------------------------------- training
def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of (n, 1, H, W) by its own random whole-pixel offset (zero fill)."""
    n, _, h, w = x.shape
    padded = F.pad(x, [max_shift] * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1, 1), generator=generator)
    rows = torch.arange(h).view(1, h, 1) + dy
    cols = torch.arange(w).view(1, 1, w) + dx
    return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def train_classifier(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
    recipe: Recipe,
) -> tuple[DigitClassifier, float]:
    """Train on uint8 images (CPU, seeded, global RNG untouched); return (model, test accuracy)."""
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = DigitClassifier()
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        x = prepare(train_x)
        for _ in range(recipe.epochs):
            for index in torch.randperm(len(x), generator=generator).split(recipe.batch_size):
                logits = model(random_shift(x[index], recipe.max_shift, generator))[1]
                loss = F.cross_entropy(logits, train_y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval().requires_grad_(False)
    predicted = classify_channels(model, test_x, torch.device("cpu"))[:, 0]
    return model, float((predicted == test_y).double().mean())


# ----------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "gan-harness")


def drop_if_damaged(path: Path) -> bool:
    """Delete a cache file that ``torch.save`` wrote but that is damaged (cut short, or its
    contents do not match their checksums), with a warning, so that it is rebuilt. The check
    reads the zip container torch saves into, without unpickling anything. Returns whether
    the file was deleted."""
    if not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        reason = None if damaged is None else f"member {damaged} fails its checksum"
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    if reason is None:
        return False
    print(f"warning: cache file {path} is damaged ({reason}); deleting it to rebuild it",
          file=sys.stderr)
    path.unlink(missing_ok=True)
    return True


def resolve_source(source: Source, data_root: Path | None) -> Literal["digits", "mnist"]:
    """``auto``: MNIST when its files are under ``data_root``, else scikit-learn digits."""
    if source == "auto":
        return "mnist" if data_root is not None and mnist_available(data_root) else "digits"
    return source


def classifier_file(source: Source = "auto", data_root: Path | None = None) -> Path:
    """Where the classifier for ``source`` is cached (keyed by its recipe and training data)."""
    concrete = resolve_source(source, data_root)
    recipe = RECIPES[concrete]
    data = mnist_fingerprint(data_root) if concrete == "mnist" and data_root else "sklearn"
    key = json.dumps(
        {"version": VERSION, "source": concrete, "data": data, **asdict(recipe)}, sort_keys=True
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / f"digit-classifier-{concrete}-{digest}.pt"


def require_classifier(source: Source, data_root: Path | None = None) -> None:
    """MetricUnavailable when the classifier is not cached and cannot be: the cache folder
    cannot be written. Without ``data_root`` (a metric being built, before its data is known)
    any cached classifier that ``source`` may resolve to counts as cached."""
    if data_root is not None or source == "digits":
        cached = classifier_file(source, data_root).is_file()
    else:
        sources = ("digits", "mnist") if source == "auto" else (source,)
        cached = any(any(cache_dir().glob(f"digit-classifier-{s}-*.pt")) for s in sources)
    reason = None if cached else unwritable_reason(cache_dir())
    if reason:
        raise MetricUnavailable(
            f"the digit classifier ({source}) is not cached and cannot be trained into the cache "
            f"folder {cache_dir()} ({reason}); set {CACHE_ENV} to a writable folder"
        )


def classifier_path(source: Source = "auto", data_root: Path | None = None) -> Path:
    """The cached classifier file for ``source``, trained and written (atomically) if missing."""
    path = classifier_file(source, data_root)
    concrete = resolve_source(source, data_root)
    recipe = RECIPES[concrete]
    if not drop_if_damaged(path) and path.is_file():
        try:  # a whole file, but is it a classifier?
            load_classifier(path)
        except Exception as exc:  # noqa: BLE001 - whatever it holds, it is rebuilt
            print(f"warning: cache file {path} holds no digit classifier "
                  f"({type(exc).__name__}: {exc}); deleting it to rebuild it", file=sys.stderr)
            path.unlink(missing_ok=True)
    if not path.is_file():
        if concrete == "mnist":
            assert data_root is not None
            data = load_mnist(data_root)
        else:
            data = load_digits_split(recipe)
        model, accuracy = train_classifier(*data, recipe)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "accuracy": accuracy, "source": concrete}, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


def load_classifier(path: Path) -> tuple[DigitClassifier, float]:
    """A cached classifier (eval mode, no grad) and its held-out accuracy."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = DigitClassifier()
    model.load_state_dict(state["model"])
    return model.eval().requires_grad_(False), float(state["accuracy"])
