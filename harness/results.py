"""The run directory: the only contract between a run, its executor and the leaderboard.

Files are written atomically (temp file + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harness.errors import HarnessError, one_line

if TYPE_CHECKING:
    import torch

CONFIG, RUN, METRICS, LOG = "config.json", "run.json", "metrics.json", "log.jsonl"
CHECKPOINTS = Path("checkpoints")
CHECKPOINT = CHECKPOINTS / "last.pt"
"""The newest checkpoint: what ``--resume`` continues from."""
BEST_CHECKPOINT = CHECKPOINTS / "best.pt"
"""The weights of the evaluation with the best value of ``--best-metric`` (no optimisers)."""
STEP_CHECKPOINT = re.compile(r"step-([0-9]+)\.pt")
"""Name of a checkpoint kept by ``--keep-checkpoints`` (``checkpoints/step-<N>.pt``)."""
GENERATOR = "generator.pt"
"""The evaluation generator alone, for sampling (``generator_file``)."""
GENERATOR_FORMAT = 1
EVALUATIONS = "evaluations"
"""Folder of ``harness eval``'s results, one JSON file per evaluation."""
LOCK = ".lock"
TRACEBACK = "traceback.txt"
"""Written when a run fails on an unexpected exception; the CLI prints one line naming it."""
CHECKPOINT_FORMAT = 1
"""Version of the checkpoint layout; a checkpoint of another version is refused."""
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


def finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (strict JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def split_finite(values: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """A metric's ``values`` split into the finite ones, as floats, and the rest (NaN,
    infinity, or not a number at all), as given."""
    finite, bad = {}, {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if math.isfinite(number):
            finite[key] = number
        else:
            bad[key] = value
    return finite, bad


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (NaN and infinity are refused with ``ValueError``), written atomically."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    )


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class CheckpointError(HarnessError):
    """A checkpoint is missing, unreadable, of another format or of another run."""


def save_checkpoint(path: Path, state: dict[str, Any], identity: dict[str, Any]) -> None:
    """``state`` with the run's ``identity`` (format, trajectory hash, composition, seed,
    step), atomically; only types ``torch.load(weights_only=True)`` reads back."""
    atomic_write_bytes(path, torch_bytes({**state, "identity": {"format": CHECKPOINT_FORMAT,
                                                                 **identity}}))


def torch_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def load_checkpoint(
    path: Path, identity: dict[str, Any], map_location: torch.device | str = "cpu",
    use: str = "resume from",
) -> dict[str, Any]:
    """The checkpoint at ``path`` (a dict of tensors and plain containers) if it belongs to
    the run of ``identity``.

    Loaded with ``weights_only=True`` (tensors and plain containers only) onto
    ``map_location``, so a run trained on a GPU resumes on a CPU. Raises ``CheckpointError``
    (one line) for a truncated or foreign file, another format version, or another run's
    checkpoint (different trajectory hash or seed); ``use`` is what the caller would do with
    it, as the refusals say it (``"resume from"``, ``"load"`` for evaluating or sampling).
    """
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as exc:  # torch's unpickler raises many kinds (KeyError for text files)
        reason = one_line(exc)[:160]
        raise CheckpointError(
            f"{path} is not a readable gan-harness checkpoint (truncated or another kind of "
            f"file): {type(exc).__name__}: {reason}"
        ) from None
    saved = state.get("identity") if isinstance(state, dict) else None
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        found = saved.get("format") if isinstance(saved, dict) else None
        raise CheckpointError(
            f"{path} is not a gan-harness checkpoint of format {CHECKPOINT_FORMAT} "
            f"(found format {found}); this version cannot {use} it"
        )
    keys = ("trajectory", "seed")
    if any(saved.get(key) != identity[key] for key in keys):
        def describe(ident: dict[str, Any]) -> str:
            parts = "-".join(str(v) for v in ident.get("composition", {}).values())
            return f"{parts} seed {ident.get('seed')}, config {ident.get('trajectory')}"

        raise CheckpointError(
            f"{path} belongs to another run ({describe(saved)}, step {saved.get('step')}; "
            f"this run: {describe(identity)}); refusing to {use} it"
        )
    return state


def step_checkpoint(step: int) -> Path:
    """``checkpoints/step-<step>.pt``, relative to the run directory: the checkpoint of
    ``step`` kept by ``--keep-checkpoints``."""
    return CHECKPOINTS / f"step-{step}.pt"


def kept_steps(run_dir: Path) -> list[int]:
    """Steps of the ``checkpoints/step-<N>.pt`` files in ``run_dir``, ascending."""
    try:
        names = os.listdir(Path(run_dir) / CHECKPOINTS)
    except OSError:
        return []
    return sorted(int(m[1]) for name in names if (m := STEP_CHECKPOINT.fullmatch(name)))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint (or ``best.pt``) at ``path`` records, read through a memory map
    (its tensors are not read); None when it is missing or unreadable."""
    import torch

    try:
        step = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"]
    except Exception:  # missing, truncated, not a checkpoint: torch raises many kinds
        return None
    return step if isinstance(step, int) else None


def link_or_copy(source: Path, target: Path) -> None:
    """Replace ``target`` by a copy of ``source``, atomically: a hard link renamed into place
    (no data copied; every file here is replaced by rename, never rewritten in place, so the
    two names never change together), or the bytes on a file system without hard links."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        atomic_write_bytes(target, Path(source).read_bytes())
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_new_json(folder: Path, stem: str, obj: Any) -> Path:
    """``obj`` as strict JSON in a new file ``folder/<stem>.json`` (``<stem>-2.json``, ...
    when the name is taken), never replacing a file: written to a temporary file, then
    hard-linked under the first free name, so readers see the whole file or none and two
    writers at once never share a name. Returns the file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~current_umask())
        for attempt in range(1, 1000):
            path = folder / (f"{stem}.json" if attempt == 1 else f"{stem}-{attempt}.json")
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
        raise HarnessError(f"no free file name for {stem}.json in {folder}")
    finally:
        Path(tmp).unlink(missing_ok=True)


class RunLock:
    """An exclusive lock on a run directory, held while one process trains it.

    ``fcntl.flock`` on ``<run>/.lock``: the kernel releases it when the holder exits or is
    killed, so a lock left by a dead process is stale by construction and is taken over.
    The file names the holder (pid, host, start time) for the refusal message.
    Raises ``HarnessError`` when another process holds the lock.
    """

    def __init__(self, run_dir: Path, what: str = "run directory",
                 then: str = "then resume") -> None:
        self.path = Path(run_dir) / LOCK
        self.what, self.then = what, then
        self.handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        try:
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as exc:
            raise HarnessError(f"cannot lock run directory {self.path.parent}: "
                               f"{exc.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise HarnessError(
                f"{self.what} {self.path.parent} is in use by {holder}; wait for it to "
                f"finish or stop it (Ctrl-C / kill), {self.then}"
            ) from None
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {started}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()  # releases the lock; the file stays (harmless, reused)
            self.handle = None


def lock_holder(run_dir: Path) -> str | None:
    """Who holds ``run_dir``'s ``RunLock`` (its line), or None when no live process does."""
    path = Path(run_dir) / LOCK
    try:
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return handle.read().strip() or "another process"
    except OSError:  # no lock file: never locked
        pass
    return None


def unwritable_reason(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (made if missing), or None if they can.
    Probes its nearest existing ancestor with a temporary file and leaves nothing behind:
    permission bits tell nothing for root or on /proc-like file systems."""
    folder = Path(folder).absolute()
    try:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            return f"{existing} is not a folder"
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"{folder} cannot be written ({exc.strerror})"
    return None


def run_dir_above(path: Path) -> Path | None:
    """The nearest folder above ``path`` that is a run directory (holds ``config.json`` and
    ``run.json``), also where a symbolic link leads; None when there is none."""
    for folder in (*Path(os.path.abspath(path)).parents, *Path(os.path.realpath(path)).parents):
        if (folder / CONFIG).is_file() and (folder / RUN).is_file():
            return folder
    return None


def check_output_dir(out: Path, flag: str = "--out") -> None:
    """Raise ``HarnessError`` unless run directories (or a command's other results) can be
    created under ``out``: a folder, new or old, writable, and neither a run directory nor
    inside one (whose files it could replace)."""
    out = Path(out)
    try:
        is_file = out.exists() and not out.is_dir()
    except OSError as exc:
        raise HarnessError(f"{flag} {out}: {exc.strerror} (valid: a writable folder)") from None
    if is_file:
        raise HarnessError(f"{flag} {out} is an existing file (valid: a folder, new or old)")
    if out.is_symlink() and not out.exists():
        raise HarnessError(f"{flag} {out} is a link to nothing (valid: a folder, new or old)")
    run_dir = run_dir_above(out / "x")
    if run_dir is not None:
        raise HarnessError(f"{flag} {out}: inside the run directory {run_dir}, whose files "
                           "must not be replaced (valid: a folder outside every run directory)")
    reason = unwritable_reason(out)
    if reason:
        raise HarnessError(f"{flag} {out}: {reason} (valid: a writable folder)")


def create_run_dir(out: Path, name: str) -> Path:
    """Make ``out/<time>-<name>`` exclusively; safe when several runs start at once."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"--out {out}: cannot create the folder: {exc.strerror}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        path = out / (f"{stamp}-{name}" + (f"-{attempt}" if attempt else ""))
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise HarnessError(f"--out {out}: cannot create a run directory: {exc.strerror}") \
                from None
    raise HarnessError(f"could not create a run directory under {out}")


def require_run_dir(path: Path, what: str) -> None:
    """``HarnessError`` (one line, after ``what``, e.g. ``--resume``) unless ``path`` is a
    folder; a file inside a run directory (``RUN/config.json``) is answered with that run
    directory."""
    if path.is_dir():
        return
    usual = "a folder made by harness run, e.g. results/<run-id>"
    if path.exists():
        valid = (f"its run directory {path.parent}" if (path.parent / CONFIG).is_file()
                 else usual)
        raise HarnessError(f"{what} {path}: a file, not a run directory (valid: {valid})")
    raise HarnessError(f"{what} {path}: no such run directory (valid: {usual})")


def run_status(directory: Path | None) -> str | None:
    """The status a run directory's run.json records: ``running``, ``finished``,
    ``interrupted`` or ``failed``; None when there is no directory, no run.json or it
    cannot be read."""
    if directory is None:
        return None
    try:
        info = read_json(Path(directory) / RUN)
    except (OSError, ValueError):
        return None
    return info.get("status") if isinstance(info, dict) else None


def remove_unstarted(directory: Path) -> bool:
    """Remove a run directory this process made that never started training: no run.json,
    nothing in it but its lock, config.json or a temporary file of an atomic write. Returns
    whether it was removed (a directory holding anything else is left as it is)."""
    if (directory / RUN).exists():
        return False
    entries = list(directory.iterdir()) if directory.is_dir() else []
    if not all(e.is_file() and (e.name in (LOCK, CONFIG) or e.name.endswith(".tmp"))
               for e in entries):
        return False
    for entry in entries:
        entry.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        directory.rmdir()
    return not directory.exists()


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
    import torch

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
