"""Run-directory files: atomic writes with ordinary permissions."""

import os
import stat

import pytest

from harness.results import atomic_write_bytes, atomic_write_json


def test_atomic_write_has_umask_permissions_and_leaves_no_temp_file(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "run.json", {"status": "finished"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]

def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
