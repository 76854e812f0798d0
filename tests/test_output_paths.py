"""Where a command may write: never inside a run directory (whose files it could replace),
never through a link to nothing; refused in one line before anything is written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from harness import results
from tests.conftest import only_run

RING = ["--steps", "5", "--eval-samples", "200", "--dataset-opt", "size=500", "--no-progress",
        "--threads", "1", "--cond", "none", "--metrics", "modes_2d"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from harness.cli import main

    out = tmp_path_factory.mktemp("runs")
    assert main(["run", *RING, "--out", str(out)]) == 0
    return only_run(out)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", [
    ["run", *RING],
    ["suite", "liu2020-table1", "--profile", "quick", "--seeds", "1", "--dry-run"],
    ["sample", "RUN", "--n", "10"],
])
@pytest.mark.parametrize("where", ["the run", "inside", "dangling link"])
def test_an_output_folder_in_a_run_directory_or_through_a_dangling_link_is_refused(
        cli, run_dir, tmp_path, command, where):
    out = {"the run": run_dir, "inside": run_dir / "more", "dangling link": tmp_path / "link"}[
        where]
    if where == "dangling link":
        out.symlink_to(tmp_path / "nowhere")
    before = digest(run_dir)
    result = cli(*[str(run_dir) if part == "RUN" else part for part in command], "--out", out)
    assert result.code == 2 and "Traceback" not in result.err
    (line,) = result.err.strip().splitlines()
    expected = ("a link to nothing" if where == "dangling link"
                else f"inside the run directory {run_dir}")
    assert expected in line and "(valid: " in line
    assert digest(run_dir) == before and not (run_dir / "more").exists()
    assert not (tmp_path / "nowhere").exists()


def test_run_status_of_a_folder_that_is_no_run(tmp_path):
    assert results.run_status(tmp_path) is None and results.run_status(None) is None
