"""``harness sample``: labelled samples of a trained run as PNG files or a .npz, reproducible
from a seed, staged so that an interrupted export never looks complete; torch-fidelity on
the PNG folder gives the FID our ``fid_digits`` gives on the same samples."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness import restore, sampling
from harness.api import to_uint8
from harness.cli import main
from harness_plugins.metrics.fidelity import DigitsFidelity, UInt8Images
from tests.conftest import only_run

IMAGE_RUN = [
    "run", "--dataset", "stacked_digits", "--dataset-opt", "size=600", "--backbone", "dcgan",
    "--backbone-opt", "width=8", "--z-dim", "16", "--cond", "kmeans_d", "--cond-opt", "k=3",
    "--cond-opt", "subset=300", "--cond-opt", "n_init=1", "--batch-size", "16", "--steps", "4",
    "--eval-samples", "100", "--ema-decay", "0.9", "--metrics", "cluster_agreement",
    "--checkpoint-every", "2", "--keep-checkpoints", "2",
    "--no-progress", "--threads", "1",
]
SAMPLE = ["--no-progress", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    """``--threads 1`` sets torch's global thread count: give the rest of the session its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stacked digits (RGB), a tiny DCGAN with an EMA copy, kmeans_d with 3 clusters."""
    out = tmp_path_factory.mktemp("image-run")
    assert main([*IMAGE_RUN, "--out", str(out)]) == 0
    return only_run(out)


@pytest.fixture(scope="module")
def ring_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ring-run")
    assert main(["run", "--dataset", "ring", "--dataset-opt", "size=1000", "--steps", "3",
                 "--cond", "ground_truth", "--eval-samples", "100", "--no-progress",
                 "--threads", "1", "--out", str(out)]) == 0
    return only_run(out)


def error_line(result) -> str:
    """The one line of a refusal (plugin-load warnings aside); exit code 2."""
    assert result.code == 2, result.err
    lines = [line for line in result.err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


def read_labels(folder: Path) -> list[tuple[str, int]]:
    with (folder / "labels.csv").open(newline="") as handle:
        return [(row["file"], int(row["label"])) for row in csv.DictReader(handle)]


def digest(folder: Path) -> str:
    """SHA-256 over every file's relative name and bytes, but the manifest's (it has a time)."""
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != sampling.MANIFEST:
            sha.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return sha.hexdigest()


def test_png_export_is_labelled_exact_and_reproducible(cli, image_run, tmp_path):
    out = tmp_path / "png"
    result = cli("sample", image_run, "--n", "300", "--out", out, *SAMPLE)
    assert result.code == 0, result.err
    assert "wrote 300 samples (png)" in result.out and "step 4" in result.out
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["run_dir"] == str(image_run.absolute()) and manifest["checkpoint_step"] == 4
    assert (manifest["n"], manifest["seed"], manifest["format"]) == (300, 0, "png")
    assert manifest["generator"] == "ema" and manifest["shape"] == [3, 32, 32]
    labels = read_labels(out)
    assert [name for name, _ in labels] == [f"{i:06d}.png" for i in range(300)]
    counts = np.bincount([label for _, label in labels], minlength=3).tolist()
    assert manifest["labels"]["counts"] == counts and sum(counts) == 300 and min(counts) > 0
    assert {p.name for p in out.iterdir()} == {*(n for n, _ in labels), "labels.csv",
                                               "samples.json"}

    # the pixels are exactly to_uint8 of the generated samples the same seed gives
    run = restore.load_run(image_run)
    x, y = sampling.sampler(run, seed=0)(300)
    assert y.tolist() == [label for _, label in labels]
    files = np.stack([np.asarray(Image.open(out / name)) for name, _ in labels])
    assert np.array_equal(files.transpose(0, 3, 1, 2), to_uint8(x).numpy())

    # torch-fidelity reading the folder: the FID our metric gives on the same samples
    import torch_fidelity

    metric = DigitsFidelity(DigitsFidelity.Options(samples=300, metrics=["fid"]))
    metric.cache_root = None
    ours = metric.compute(sampling.sampler(run, seed=0), run)["fid_digits_300"]
    name, weights, _ = metric.extractor(run)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(out), input2=UInt8Images(metric.reference_images(run)), fid=True,
        feature_extractor=name, feature_extractor_weights_path=weights, cuda=False,
        batch_size=metric.options.batch_size, save_cpu_ram=True, verbose=False,
    )[torch_fidelity.KEY_METRIC_FID]
    assert theirs == ours

    again, other = tmp_path / "again", tmp_path / "other"
    assert cli("sample", image_run, "--n", "300", "--out", again, "--batch-size", "1000",
               *SAMPLE).code == 0
    assert cli("sample", image_run, "--n", "300", "--out", other, "--seed", "1",
               *SAMPLE).code == 0
    assert digest(again) == digest(out) and digest(other) != digest(out)


def test_per_class_folders_and_npz(cli, image_run, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "classes"
    assert cli("sample", image_run, "--n", "30", "--per-class", "--out", out, *SAMPLE).code == 0
    labels = read_labels(out)
    assert [label for _, label in labels] == [0] * 10 + [1] * 10 + [2] * 10
    assert all(name.startswith(f"{label}/") for name, label in labels)
    folder = ImageFolder(str(out))  # class subfolders: index = label
    assert folder.class_to_idx == {"0": 0, "1": 1, "2": 2}
    assert [target for _, target in folder.samples] == [label for _, label in labels]
    assert json.loads((out / "samples.json").read_text())["labels"]["counts"] == [10, 10, 10]

    npz = tmp_path / "npz"
    assert cli("sample", image_run, "--n", "30", "--per-class", "--format", "npz",
               "--out", npz, *SAMPLE).code == 0
    arrays = np.load(npz / "samples.npz")
    assert arrays["x"].dtype == np.uint8 and arrays["x"].shape == (30, 3, 32, 32)
    assert arrays["y"].dtype == np.int64 and arrays["y"].tolist() == [lab for _, lab in labels]
    png = np.stack([np.asarray(Image.open(out / name)) for name, _ in labels])
    assert np.array_equal(arrays["x"], png.transpose(0, 3, 1, 2))  # same samples, same pixels


def test_a_kept_checkpoint(cli, image_run, tmp_path):
    out = tmp_path / "step2"
    result = cli("sample", image_run, "--n", "20", "--checkpoint", "2", "--out", out, *SAMPLE)
    assert result.code == 0, result.err
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["checkpoint"] == "checkpoints/step-2.pt" and manifest["checkpoint_step"] == 2
    last = tmp_path / "last"
    assert cli("sample", image_run, "--n", "20", "--out", last, *SAMPLE).code == 0
    assert json.loads((last / "samples.json").read_text())["checkpoint"] == (
        "checkpoints/last.pt")
    assert digest(out) != digest(last)  # G moved between steps 2 and 4
    line = error_line(cli("sample", image_run, "--checkpoint", "3", "--out", tmp_path / "x"))
    assert "no checkpoint of step 3 was saved (saved steps: 2, 4;" in line
    assert not (tmp_path / "x").exists()


def test_points_export_as_npz_and_png_is_refused(cli, ring_run, tmp_path):
    out = tmp_path / "points"
    assert cli("sample", ring_run, "--n", "500", "--out", out, *SAMPLE).code == 0
    arrays = np.load(out / "samples.npz")
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (500, 2)
    manifest = json.loads((out / "samples.json").read_text())
    assert manifest["format"] == "npz" and manifest["dtype"] == "float32"
    assert manifest["labels"]["counts"] == np.bincount(arrays["y"], minlength=8).tolist()
    x, y = sampling.sampler(restore.load_run(ring_run), seed=0)(500)
    assert np.array_equal(arrays["x"], x.numpy()) and np.array_equal(arrays["y"], y.numpy())
    line = error_line(cli("sample", ring_run, "--format", "png", "--out", tmp_path / "p",
                          *SAMPLE))
    assert line == ("error: harness sample --format png: the run's data (ring) are points of "
                    "shape (2,), not images (valid: --format npz)")
    assert not (tmp_path / "p").exists()


def test_refusals_are_one_line_and_write_nothing(cli, image_run, ring_run, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("keep")
    assert "the folder is not empty" in error_line(cli("sample", image_run, "--out", full))
    assert "an existing file" in error_line(cli("sample", image_run, "--out", full / "x.txt"))
    assert "not a run directory" in error_line(
        cli("sample", tmp_path, "--out", tmp_path / "new"))
    assert error_line(cli("sample", image_run, "--n", "31", "--per-class",
                          "--out", tmp_path / "new", *SAMPLE)) == (
        "error: harness sample --n 31 --per-class: not a multiple of the run's 3 classes "
        "(valid: a multiple of 3, e.g. 30, 33)")
    assert "out of range (valid: 1 to" in error_line(
        cli("sample", image_run, "--n", "0", "--out", tmp_path / "new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert [p.name for p in full.iterdir()] == ["x.txt"]


def test_an_interrupted_export_leaves_nothing(cli, image_run, tmp_path, monkeypatch):
    written = []
    png_bytes = sampling.png_bytes

    def interrupted(image):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(1)
        return png_bytes(image)

    monkeypatch.setattr(sampling, "png_bytes", interrupted)
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is accepted, and kept as it was when interrupted
    assert cli("sample", image_run, "--n", "50", "--out", empty, *SAMPLE).code == 130
    assert len(written) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and not any(empty.iterdir())
    monkeypatch.setattr(sampling, "png_bytes", png_bytes)
    assert cli("sample", image_run, "--n", "50", "--out", empty, *SAMPLE).code == 0
    assert len(list(empty.glob("*.png"))) == 50


def test_the_default_export_is_the_evaluations_draw(cli, image_run, tmp_path):
    """``harness sample`` without --seed writes exactly the samples the evaluation scores
    (``Trainer.evaluate``'s draw of n), so FID of the folder is the run's number."""
    from harness.trainer import Trainer

    out = tmp_path / "eval-draw"
    result = cli("sample", image_run, "--n", "120", "--format", "npz", "--out", out, *SAMPLE)
    assert result.code == 0, result.err
    assert "skipping metric" not in result.err  # the run is not evaluated: no metric warnings
    arrays = np.load(out / "samples.npz")

    drawn: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recorder:
        def compute(self, sample, run):
            drawn.append(sample(120))
            return {}

    run = restore.load_run(image_run, overrides={"threads": 1})
    run.metrics = {"recorder": Recorder()}  # type: ignore[dict-item]
    Trainer(run).evaluate()
    (x, y), = drawn
    assert np.array_equal(arrays["y"], y.numpy())
    assert np.array_equal(arrays["x"], to_uint8(x).numpy())
    ours, labels = sampling.sampler(run, seed=0)(120)  # the floats, bit for bit
    assert torch.equal(ours, x) and torch.equal(labels, y)
    other = sampling.sampler(run, seed=1)(120)[0]
    assert not torch.equal(other, x)


def test_a_killed_exports_staging_folder_is_removed_by_the_next(cli, image_run, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead, host = int(child.stdout), socket.gethostname()
    stale = tmp_path / f".out.partial-{host}-{dead}-abc_12"
    alive = tmp_path / f".out.partial-{host}-{os.getpid()}-xyz_34"
    other = tmp_path / ".other.partial-{host}-{dead}-abc_12"
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "000000.png").write_bytes(b"half")
    result = cli("sample", image_run, "--n", "10", "--out", tmp_path / "out", *SAMPLE)
    assert result.code == 0, result.err
    notes = [line for line in result.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and stale.name in notes[0] and alive.name not in notes[0]
    assert not stale.exists() and alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, other.name, "out"])


def test_sigterm_during_an_export_exits_143_and_leaves_nothing(cli, image_run, tmp_path,
                                                               monkeypatch):
    import os
    import signal

    written = []
    png_bytes = sampling.png_bytes

    def terminated(image):
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        written.append(1)
        return png_bytes(image)

    monkeypatch.setattr(sampling, "png_bytes", terminated)
    assert cli("sample", image_run, "--n", "20", "--out", tmp_path / "out", *SAMPLE).code == 143
    assert len(written) == 3 and not any(tmp_path.iterdir())


def test_exports_that_cannot_fit_are_refused_up_front(cli, image_run, tmp_path, monkeypatch):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    line = error_line(cli("sample", image_run, "--n", "10000", "--out", tmp_path / "png",
                          *SAMPLE))
    assert line.startswith("error: harness sample --n 10000 --format png: the samples need up "
                           "to 39.7 MiB of disk, 10.0 MiB is free at ")
    assert line.endswith("(valid here: --n at most 2520)")
    assert cli("sample", image_run, "--n", "2520", "--format", "png", "--out",
               tmp_path / "fits", *SAMPLE).code == 0
    shutil.rmtree(tmp_path / "fits")
    assert "(valid here: --n at most 3404)" in error_line(cli(
        "sample", image_run, "--n", "10000", "--format", "npz", "--out", tmp_path / "npz"))
    monkeypatch.undo()
    monkeypatch.setattr(sampling, "available_memory", lambda: 2**20)
    line = error_line(cli("sample", image_run, "--n", "100", "--batch-size", "1000",
                          "--out", tmp_path / "mem", *SAMPLE))
    assert line == ("error: harness sample --batch-size 1000: a batch needs about 3.5 MiB of "
                    "memory, 1.0 MiB is available (valid here: --batch-size at most 28)")
    assert not any(tmp_path.iterdir())


def test_a_large_npz_is_streamed_as_np_savez_writes_it(tmp_path):
    x = np.arange(5 * 3 * 4 * 4, dtype=np.uint8).reshape(5, 3, 4, 4)
    y = np.arange(5, dtype=np.int64)
    with sampling.npz_writer(tmp_path / "s.npz", 5, (3, 4, 4), np.dtype(np.uint8), y) as write:
        write(x[:2])
        write(x[2:])
    np.savez(tmp_path / "ref.npz", x=x, y=y)
    loaded = np.load(tmp_path / "s.npz")
    assert np.array_equal(loaded["x"], x) and np.array_equal(loaded["y"], y)
    import zipfile

    def members(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(name) for name in archive.namelist()]

    assert members(tmp_path / "s.npz") == members(tmp_path / "ref.npz")
