"""``--log tensorboard,wandb``: what the files hold, read back with each library's own reader
(W&B offline, never the network); one-line refusals before anything is written."""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness import hookimpl
from harness.cli import main
from harness.errors import ConfigError
from harness.loggers import Logger
from harness.manager import get_plugin_manager
from tests.conftest import FAST, only_run

ARGS = [
    "run", *FAST, "--steps", "20", "--cond", "kmeans_d", "--cond-opt", "k=10", "--cond-opt",
    "subset=500", "--cond-opt", "n_init=2", "--cond-opt", "recluster_every=10", "--eval-every",
    "10", "--sample-every", "10", "--metrics", "modes_2d,cluster_agreement",
]
"""20 steps: losses, re-clusterings, evaluations and sample grids at steps 10 and 20."""


class Recorder(Logger):
    """A third party's logger: records what it sees of the runs that enable it."""


class RecorderPlugin:
    def __init__(self) -> None:
        self.steps: list[int] = []

    @hookimpl
    def harness_loggers(self):
        return {"recorder": Recorder}

    @hookimpl
    def harness_step_end(self, run, step, losses):
        if "recorder" in run.config.log:
            self.steps.append(step)


def offline_wandb(mp: pytest.MonkeyPatch, root: Path) -> None:
    """W&B offline, every folder it writes under ``root``, and a server address that refuses
    connections, should anything try the network."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    mp.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
                 "WANDB_ARTIFACT_DIR"):
        mp.setenv(name, str(root / name.lower()))
    mp.delenv("WANDB_API_KEY", raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run logged to TensorBoard and W&B, and only to a third party's logger."""
    tmp = tmp_path_factory.mktemp("loggers")
    recorder = RecorderPlugin()
    pm = get_plugin_manager()
    pm.register(recorder, name="recorder")
    try:
        with pytest.MonkeyPatch.context() as mp:
            offline_wandb(mp, tmp)
            assert main([*ARGS, "--log", "tensorboard,wandb", "--out", str(tmp / "on")]) == 0
            assert main([*ARGS, "--log", "recorder", "--out", str(tmp / "off")]) == 0
    finally:
        pm.unregister("recorder")
        if "wandb" in sys.modules:
            sys.modules["wandb"].teardown()  # stops W&B's service process
    assert recorder.steps == list(range(1, 21))  # only the run that named it
    return {"on": only_run(tmp / "on"), "off": only_run(tmp / "off")}


def jsonl(run_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """log.jsonl's loss, re-clustering and evaluation records."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    losses = [r for r in records if "event" not in r]
    relabels = [r for r in records if r.get("event") == "labels_updated"]
    evaluations = [r for r in records if r.get("event") == "evaluated"]
    return losses, relabels, evaluations


def pixels(png: Path | bytes) -> np.ndarray:
    with Image.open(png if isinstance(png, Path) else io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def test_tensorboard_event_file_read_back_with_tensorboards_reader(runs):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    run_dir = runs["on"]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={IMAGES: 0})
    events.Reload()
    losses, relabels, evaluations = jsonl(run_dir)
    for key in ("d_loss", "g_loss"):
        logged = events.Scalars(f"losses/{key}")
        assert [e.step for e in logged] == [10, 20]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in losses], rel=1e-6)
    fraction = events.Scalars("labels/changed_fraction")
    assert [(e.step, e.value) for e in fraction] == [
        (r["step"], pytest.approx(r["changed_fraction"])) for r in relabels]
    assert [r["step"] for r in relabels] == [10, 20]
    for key in ("modes", "hq_pct", "rkl", "cluster_nmi"):
        logged = events.Scalars(f"metrics/{key}")
        assert [e.step for e in logged] == [10, 20]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in evaluations], rel=1e-6)
    grids = events.Images("samples")
    assert [e.step for e in grids] == [10, 20]  # one each, though evaluations come after
    for grid in grids:
        written = run_dir / "samples" / f"step_{grid.step:07d}.png"
        assert np.array_equal(pixels(grid.encoded_image_string), pixels(written))
    assert not (run_dir / "wandb" / "tensorboard").exists()


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a W&B run file (``run-<id>.wandb``): W&B's header, then a
    LevelDB log (32 KiB blocks of CRC-checked chunks), each record a ``Record`` message of
    W&B's own schema. W&B has no Python reader of its offline files since its core moved to
    Go; this follows its format as the SDK's former ``internal/datastore.py`` read it."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:7] == struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
    records, pending, at = [], b"", 7
    while at + 7 <= len(data):
        if 32768 - at % 32768 < 7:  # a block's tail too short for a header is padding
            at += 32768 - at % 32768
            continue
        checksum, length, kind = struct.unpack("<IHB", data[at:at + 7])
        chunk = data[at + 7:at + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum
        pending, at = pending + chunk, at + 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(Record.FromString(pending))
            pending = b""
    return records


def test_wandb_offline_run_holds_the_logged_values(runs):
    run_dir = runs["on"]
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    (run_file,) = offline.glob("run-*.wandb")
    records = wandb_records(run_file)
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.display_name == run_dir.name and started.project == "gan-harness"
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["cond"] == "kmeans_d" and config["log"] == ["tensorboard", "wandb"]
    history: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            values = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                      for item in record.history.item}
            history.setdefault(record.history.step.num, {}).update(values)
    losses, relabels, evaluations = jsonl(run_dir)
    assert sorted(history) == [10, 20]
    for record in losses:
        logged = history[record["step"]]
        assert logged["losses/d_loss"] == pytest.approx(record["d_loss"], rel=1e-6)
        assert logged["losses/g_loss"] == pytest.approx(record["g_loss"], rel=1e-6)
    for record in relabels:
        assert history[record["step"]]["labels/changed_fraction"] == record["changed_fraction"]
    for record in evaluations:
        assert history[record["step"]]["metrics/rkl"] == pytest.approx(record["rkl"])
        assert history[record["step"]]["metrics/modes"] == record["modes"]
    for step, logged in history.items():
        media = offline / "files" / logged["samples/path"]
        written = run_dir / "samples" / f"step_{step:07d}.png"
        assert np.array_equal(pixels(media), pixels(written))


def test_loggers_leave_training_alone_and_act_only_when_named(runs):
    on, off = runs["on"], runs["off"]
    assert (on / "metrics.json").read_text() == (off / "metrics.json").read_text()
    assert not (off / "tensorboard").exists() and not (off / "wandb").exists()


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_missing_package_is_one_line_naming_the_extra_before_anything_is_written(
    cli, tmp_path, monkeypatch, name
):
    monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    result = cli(*ARGS, "--log", name, "--out", tmp_path / "out")
    assert result.code == 2
    assert result.err == (f"error: --log {name} needs {name}, which is not installed: "
                          f"pip install 'gan-harness[{name}]'\n")
    assert not (tmp_path / "out").exists()


def test_unknown_logger_lists_the_valid_names(cli, tmp_path):
    result = cli(*ARGS, "--log", "tensorbord", "--out", tmp_path)
    assert result.code == 2 and len(result.err.splitlines()) == 1
    assert ("unknown logger 'tensorbord'. Did you mean 'tensorboard'? Available: tensorboard, "
            "wandb") in result.err
    assert list(tmp_path.iterdir()) == []


def test_a_third_partys_missing_module_is_named():
    class Needy(Logger):
        requires = ("harness_no_such_module",)

    with pytest.raises(ConfigError, match=r"^--log needy needs harness_no_such_module, which is "
                       r"not installed: pip install harness_no_such_module$"):
        Needy.check("needy")


def test_resumed_run_shows_each_step_once(cli, pm, tmp_path):
    """A crash after the checkpoint of step 10: the resumed run re-does 11-17, and
    TensorBoard hides the first attempt's events of those steps."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Crash:
        @hookimpl
        def harness_step_end(self, run, step, losses):
            if step == 17:
                raise RuntimeError("crash")

    args = ["run", *FAST, "--cond", "none", "--metrics", "modes_2d", "--steps", "20",
            "--checkpoint-every", "10", "--log-every", "5", "--log", "tensorboard", "--out",
            tmp_path]
    pm.register(Crash(), name="crash")
    try:
        assert cli(*args).code == 1
    finally:
        pm.unregister(name="crash")
    run_dir = only_run(tmp_path)
    assert cli("run", "--resume", run_dir, "--no-progress").code == 0
    assert len(list((run_dir / "tensorboard").iterdir())) == 2  # one event file per attempt
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    logged = events.Scalars("losses/d_loss")
    losses, _, _ = jsonl(run_dir)
    assert [e.step for e in logged] == [5, 10, 15, 20]
    assert [e.value for e in logged] == pytest.approx([r["d_loss"] for r in losses], rel=1e-6)
