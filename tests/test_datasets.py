"""Image datasets on tiny fixtures written in the real file formats; nothing is downloaded."""

from __future__ import annotations

import pickle
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from harness.api import DataLocation, Dataset, DataSpec
from harness.errors import ConfigError
from harness.manager import get_plugin_manager
from harness_plugins.datasets.digits import load_digits_32

IMAGE_DATASETS = ["digits", "stacked_digits", "mnist", "stacked_mnist", "cifar10", "image_folder"]


def make(
    name: str, root: Path | None = None, seed: int = 0, download: bool = False, **opts: object
) -> Any:
    """Build a dataset the way the harness does: through the plugin manager."""
    cls = get_plugin_manager().get("datasets", name).load()
    location = DataLocation(root or Path("data"), download)
    return cls(cls.Options(**opts), seed=seed, location=location)


def write_mnist(root: Path, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    """MNIST idx-ubyte files (the raw, uncompressed format torchvision reads) under root."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) * 7 % 10).astype(np.uint8)
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            struct.pack(">II", 0x801, n) + labels.tobytes()
        )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_cifar(root: Path, n: int = 6) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10 python-pickle batches (rows: 1024 R, 1024 G, 1024 B values) under root."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        batches[name] = data, labels
    names = [f"class {i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return batches


def write_png(path: Path, size: tuple[int, int], colour: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "L" else (colour, 255 - colour, 7)).save(path)


def as_bytes(images: torch.Tensor) -> Counter[bytes]:
    return Counter(image.numpy().tobytes() for image in images)


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records any attempt of torchvision to download."""
    calls: list[str] = []
    for cls in (datasets.MNIST, datasets.CIFAR10):
        monkeypatch.setattr(cls, "download", lambda self: calls.append(type(self).__name__))
    return calls


def check_images(ds: Dataset, spec: DataSpec, n: int) -> None:
    assert ds.spec == spec
    assert ds.x.dtype == torch.uint8 and ds.x.shape == (n, *spec.shape)
    if spec.has_labels:
        assert ds.y is not None and ds.y.dtype == torch.long and ds.y.shape == (n,)
        assert int(ds.y.min()) >= 0 and int(ds.y.max()) < spec.num_classes
    else:
        assert ds.y is None
    batch = ds.batch(torch.arange(min(n, 4)))
    assert batch.dtype == torch.float32 and batch.min() >= -1 and batch.max() <= 1


def test_registered() -> None:
    registry = get_plugin_manager().registry("datasets")
    for name in IMAGE_DATASETS:
        cls = registry[name].load()
        assert issubclass(cls, Dataset)
        for field in cls.Options.model_fields.values():
            assert field.description and not field.is_required()


# ----------------------------------------------------------------------------- digits
def test_digits_split() -> None:
    ds = make("digits", seed=3)
    held = ds.x_heldout
    check_images(ds, DataSpec((1, 32, 32), 10, True, domain="digits"), 1797 - 180)
    assert held is not None and held.dtype == torch.uint8 and held.shape == (180, 1, 32, 32)
    images, labels = load_digits_32()
    assert as_bytes(ds.x) + as_bytes(held) == as_bytes(images)  # a partition of the 1797
    assert (ds.y.bincount(minlength=10) <= labels.bincount()).all()
    again, other = make("digits", seed=3), make("digits", seed=4)
    assert torch.equal(again.x, ds.x) and torch.equal(again.x_heldout, held)
    assert not torch.equal(other.x_heldout, held)
    assert make("digits", heldout_fraction=0.0).x_heldout is None


def test_stacked_digits() -> None:
    ds = make("stacked_digits", seed=5, size=500, heldout_size=50)
    check_images(ds, DataSpec((3, 32, 32), 1000, True, domain="digits"), 500)
    digits = make("digits", seed=5)  # the same seed gives the same split
    a, b, c = ds.triples.T
    assert torch.equal(ds.y, 100 * digits.y[a] + 10 * digits.y[b] + digits.y[c])
    for k in range(3):
        assert torch.equal(ds.x[:, k], digits.x[ds.triples[:, k], 0])
    held = ds.x_heldout
    assert held is not None and held.shape == (50, 3, 32, 32)
    assert set(as_bytes(held.flatten(0, 1).unsqueeze(1))) <= set(as_bytes(digits.x_heldout))
    again, other = (
        make("stacked_digits", seed=5, size=500, heldout_size=50),
        make("stacked_digits", seed=6, size=500, heldout_size=50),
    )
    assert torch.equal(again.x, ds.x) and torch.equal(again.y, ds.y)
    assert torch.equal(again.x_heldout, held)
    assert not torch.equal(other.y, ds.y)
    assert make("stacked_digits", size=10, heldout_fraction=0.0).x_heldout is None


def test_stacked_digits_default_size_covers_all_modes() -> None:
    ds = make("stacked_digits")
    assert ds.x.shape == (100_000, 3, 32, 32) and ds.y.unique().numel() == 1000


# ----------------------------------------------------------------------------- MNIST
def test_mnist(tmp_path: Path, no_download: list[str]) -> None:
    arrays = write_mnist(tmp_path)
    ds = make("mnist", tmp_path)
    check_images(ds, DataSpec((1, 32, 32), 10, True, domain="digits"), 40)
    assert torch.equal(ds.y, torch.from_numpy(arrays["train_labels"]).long())
    # 28 -> 32 exactly as PIL's bilinear resize (the official code's transforms.Resize)
    for i in (0, 17):
        pil = Image.fromarray(arrays["train_images"][i]).resize((32, 32), Image.BILINEAR)
        assert torch.equal(ds.x[i, 0], torch.from_numpy(np.array(pil)))
    assert ds.x_heldout.shape == (20, 1, 32, 32) and ds.x_heldout.dtype == torch.uint8
    assert no_download == []


def test_stacked_mnist(tmp_path: Path, no_download: list[str]) -> None:
    write_mnist(tmp_path)
    mnist = make("mnist", tmp_path)
    ds = make("stacked_mnist", tmp_path, seed=1, size=300, heldout_size=30)
    check_images(ds, DataSpec((3, 32, 32), 1000, True, domain="digits"), 300)
    a, b, c = ds.triples.T
    assert torch.equal(ds.y, 100 * mnist.y[a] + 10 * mnist.y[b] + mnist.y[c])
    for k in range(3):
        assert torch.equal(ds.x[:, k], mnist.x[ds.triples[:, k], 0])
    held = ds.x_heldout
    assert held.shape == (30, 3, 32, 32)
    assert set(as_bytes(held.flatten(0, 1).unsqueeze(1))) <= set(as_bytes(mnist.x_heldout))
    assert torch.equal(make("stacked_mnist", tmp_path, seed=1, size=300, heldout_size=30).x, ds.x)
    assert not torch.equal(make("stacked_mnist", tmp_path, seed=2, size=300).y, ds.y)
    assert no_download == []


@pytest.mark.parametrize("name", ["mnist", "stacked_mnist"])
def test_mnist_missing(tmp_path: Path, no_download: list[str], name: str) -> None:
    with pytest.raises(ConfigError) as info:
        make(name, tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"dataset {name!r}" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "--data-root" in message and "--download" in message
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="missing t10k-labels-idx1-ubyte under"):
        make(name, tmp_path)
    assert no_download == []


def test_mnist_download_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--download goes to torchvision's downloader (here a stand-in writing the fixture)."""
    monkeypatch.setattr(datasets.MNIST, "download", lambda self: write_mnist(tmp_path))
    assert len(make("mnist", tmp_path, download=True)) == 40


def test_mnist_corrupt(tmp_path: Path, no_download: list[str]) -> None:
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(ConfigError, match=r"^dataset 'mnist': cannot read the files under .*raw"):
        make("mnist", tmp_path)
    write_mnist(tmp_path)
    (raw / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 40) + bytes([12] * 40))
    with pytest.raises(ConfigError, match="^dataset 'mnist': labels outside 0..9 .*raw$"):
        make("mnist", tmp_path)
    assert no_download == []


# ----------------------------------------------------------------------------- CIFAR-10
def test_cifar10(tmp_path: Path, no_download: list[str]) -> None:
    batches = write_cifar(tmp_path)
    ds = make("cifar10", tmp_path)
    check_images(ds, DataSpec((3, 32, 32), 10, True), 30)
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert torch.equal(ds.x, torch.from_numpy(data).view(30, 3, 32, 32))
    assert ds.y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    test_data = torch.from_numpy(batches["test_batch"][0]).view(6, 3, 32, 32)
    assert torch.equal(ds.x_heldout, test_data)
    assert no_download == []


def test_cifar10_missing_and_corrupt(tmp_path: Path, no_download: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        make("cifar10", tmp_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith("dataset 'cifar10': no data under")
    assert str(tmp_path / "cifar-10-batches-py") in message and "batches.meta" in message
    assert "--data-root" in message and "--download" in message
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ConfigError, match=r"^dataset 'cifar10': cannot read .*cifar-10-batches-py"):
        make("cifar10", tmp_path)
    assert no_download == []


# ----------------------------------------------------------------------------- image folder
def test_image_folder_classes(tmp_path: Path) -> None:
    for i in range(4):
        write_png(tmp_path / "imgs" / "cat" / f"{i}.png", (40, 30), 10 * i)
    for i in range(2):
        write_png(tmp_path / "imgs" / "dog" / f"{i}.png", (20, 20), 200, mode="L")
    (tmp_path / "imgs" / "dog" / "notes.txt").write_text("not an image")
    ds = make("image_folder", tmp_path, path="imgs", resolution=16)
    check_images(ds, DataSpec((3, 16, 16), 2, True), 6)
    assert ds.y.tolist() == [0, 0, 0, 0, 1, 1] and ds.x_heldout is None
    assert torch.equal(
        ds.x[1], torch.tensor([10, 245, 7], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
    )
    assert (ds.x[5] == 200).all()  # grayscale -> RGB
    absolute = make("image_folder", path=str(tmp_path / "imgs"), resolution=16)
    assert torch.equal(absolute.x, ds.x)


def test_image_folder_flat_resize_crop_and_split(tmp_path: Path) -> None:
    # 64x32: red, green, blue columns 0:8, 8:56, 56:64; resized to 32x16, centre 16x16 is green
    stripes = np.zeros((32, 64, 3), dtype=np.uint8)
    stripes[:, :8, 0], stripes[:, 8:56, 1], stripes[:, 56:, 2] = 255, 255, 255
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    for i in range(9):
        write_png(tmp_path / f"plain{i}.jpg", (24, 24), 20 * i)
    ds = make("image_folder", tmp_path, path=".", resolution=16)
    check_images(ds, DataSpec((3, 16, 16), None, False), 10)
    wide = ds.x[-1]  # sorted by name: plain0..8, wide
    assert (wide[1] == 255).all() and (wide[0] == 0).all() and (wide[2] == 0).all()
    split = make("image_folder", tmp_path, seed=2, path=".", resolution=16, heldout_fraction=0.3)
    held = split.x_heldout
    assert held is not None and len(split) == 7 and len(held) == 3
    assert as_bytes(split.x) + as_bytes(held) == as_bytes(ds.x)
    assert torch.equal(
        make("image_folder", tmp_path, seed=2, path=".", resolution=16, heldout_fraction=0.3).x,
        split.x,
    )


def test_image_folder_errors(tmp_path: Path) -> None:
    def error(**opts: object) -> str:
        with pytest.raises(ConfigError) as info:
            make("image_folder", tmp_path, **opts)
        message = str(info.value)
        assert "\n" not in message and message.startswith("dataset 'image_folder'")
        return message

    assert "path=DIR" in error()
    assert str(tmp_path / "nowhere") in error(path="nowhere")
    (tmp_path / "empty").mkdir()
    assert "no images in" in error(path="empty")
    write_png(tmp_path / "mixed" / "a.png", (8, 8), 1)
    write_png(tmp_path / "mixed" / "cls" / "b.png", (8, 8), 1)
    assert "both images and subfolders" in error(path="mixed")
    (tmp_path / "classes" / "empty_class").mkdir(parents=True)
    write_png(tmp_path / "classes" / "full" / "b.png", (8, 8), 1)
    assert "empty_class" in error(path="classes")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    assert "broken.png" in error(path="bad")


def test_image_folder_skips_hidden_files_and_folders(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "flat" / f"{i}.png", (8, 8), 10 * i)
        write_png(tmp_path / "classes" / "cat" / f"{i}.png", (8, 8), 10 * i)
        write_png(tmp_path / "classes" / "dog" / f"{i}.png", (8, 8), 200)
    for folder in (tmp_path / "flat", tmp_path / "classes", tmp_path / "classes" / "cat"):
        write_png(folder / ".ipynb_checkpoints" / "0-checkpoint.png", (8, 8), 99)
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "._0.png").write_bytes(b"AppleDouble resource fork, not a png")
    flat = make("image_folder", tmp_path, path="flat", resolution=8)
    check_images(flat, DataSpec((3, 8, 8), None, False), 3)
    classes = make("image_folder", tmp_path, path="classes", resolution=8)
    check_images(classes, DataSpec((3, 8, 8), 2, True), 6)
    assert classes.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert not (classes.x[:, 0] == 99).any()  # no checkpoint copy among the cats


def test_image_folder_reads_16_bit_grayscale(tmp_path: Path) -> None:
    levels = [0, 129, 1000, 32768, 65535]  # -> 0, 1, 4, 128, 255 (rounded division by 257)
    writers = {".png": "<u2", ".tif": ">u2", ".tiff": "<i4"}  # modes I;16, I;16B and I
    for i, level in enumerate(levels):
        for suffix, dtype in writers.items():
            image = Image.fromarray(np.full((8, 8), level, dtype=dtype))
            assert image.mode in ("I;16", "I;16B", "I")
            image.save(tmp_path / f"{i}{suffix}")
    ds = make("image_folder", tmp_path, path=".", resolution=8)
    check_images(ds, DataSpec((3, 8, 8), None, False), 3 * len(levels))
    expected = torch.tensor([0, 1, 4, 128, 255], dtype=torch.uint8).repeat_interleave(3)
    assert torch.equal(ds.x.flatten(1).unique(dim=1).squeeze(1), expected)
