"""The run directory: the only contract between a run, its executor and the leaderboard.

Files are written atomically (temp file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

CONFIG, RUN, METRICS, LOG = "config.json", "run.json", "metrics.json", "log.jsonl"
CHECKPOINT = Path("checkpoints") / "last.pt"
TRACKED_PACKAGES = ("gan-harness", "torch", "torchvision", "torch-fidelity", "lpips", "numpy",
                    "scipy", "scikit-learn", "pandas", "pluggy", "pydantic")


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``.

    The file gets the permissions a plain ``open`` would give (mkstemp's are owner-only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def create_run_dir(out: Path, name: str) -> Path:
    """Make ``out/<time>-<name>`` exclusively; safe when several runs start at once."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = out / (f"{stamp}-{name}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {out}")


def git_commit(path: Path) -> dict[str, Any] | None:
    """Commit (and dirty flag) of the git checkout containing ``path``, if any."""
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", *args], cwd=path, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, platform and code revision: what it takes to re-run a run exactly."""
    versions = {}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "git": git_commit(Path(__file__).resolve().parent),
        "command": sys.argv,
    }


def is_finished(run_dir: Path) -> bool:
    try:
        return read_json(run_dir / RUN).get("status") == "finished" and (
            run_dir / METRICS
        ).exists()
    except (OSError, ValueError):
        return False
