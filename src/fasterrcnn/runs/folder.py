"""Folders a command writes into, and the rule that keeps a user's files safe: a command writes only
files it creates in that run, or files it is told to replace (``overwrite``), never an input.

``RunFolder`` is a training run's folder::

    DIR/.lock              held (flock) by the process training in DIR; holds its PID
    DIR/config.json        the run's settings, the data and every accepted change on --resume
    DIR/checkpoints/       last.pt, best.pt, the newest iter_XXXXXXX.pt (engine.checkpoint.CheckpointFolder)
    DIR/metrics.jsonl, DIR/tb/, DIR/results.csv, DIR/results.png    engine/logging.py, evaluation/plots.py
    DIR/confusion_matrix.png, .csv, DIR/per_class.csv, DIR/samples.jpg    the last evaluation's (engine/report.py)
    DIR/error.log          the traceback of a run that ended with an unexpected exception
    DIR/labels.jpg         the training set's labels: class counts, box positions and sizes (evaluation/plots.py)
    DIR/log.txt            the run's console lines (engine.logging.console_log), appended on --resume

``OutputFolder`` is the folder of ``eval`` and ``predict``: its files are claimed before the long work
starts (the folder is created and written to once, existing files are refused unless ``overwrite``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fasterrcnn.engine.checkpoint import CheckpointFolder
from fasterrcnn.engine.report import REPORT_FILES
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.io import atomic_write_text, remove_temp_files

__all__ = ["OutputFolder", "RunFolder", "RunLock"]

logger = logging.getLogger("fasterrcnn")

# loss.png: the figure of runs written before results.png, so that --overwrite replaces such a run too
RUN_ENTRIES = (
    "config.json", "checkpoints", "metrics.jsonl", "tb", "results.csv", "results.png", *REPORT_FILES, "loss.png", "error.log", "log.txt",
    "labels.jpg",
)  # fmt: skip
LOCK_NAME = ".lock"


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_writable(folder: Path) -> None:
    """Create ``folder`` (and parents) and write a probe file in it, so a command fails before its long work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataError(folder, f"cannot write into this folder ({e.strerror or e})") from None


class RunLock:
    """An exclusive ``flock`` on ``DIR/.lock`` while a process trains in DIR.

    A second process is refused with the holder's PID. The kernel releases the lock when its holder dies,
    so a lock left by a dead process (its PID still in the file) is taken over, with a warning.
    """

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another training (PID {holder}); wait for it to end or choose another --output"
            ) from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if previous:
            logger.warning(f"{self.path}: taking over the lock left by PID {previous}, which is no longer running")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RunFolder:
    """A training run's folder (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_file = self.path / "config.json"
        self.checkpoints = CheckpointFolder(self.path / "checkpoints")
        self.error_log = self.path / "error.log"

    def _entries(self) -> list[str]:
        if not self.path.exists():
            return []
        if not self.path.is_dir():
            raise DataError(self.path, "is a file, not a folder for a training run")
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME and not p.name.startswith(".write-test-"))

    def run_files(self) -> list[str]:
        """The names of a run's files present in the folder."""
        return [name for name in self._entries() if name in RUN_ENTRIES]

    def lock(self) -> RunLock:
        """The folder's lock (a context manager); creates the folder."""
        check_writable(self.path)
        return RunLock(self.path)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Check the folder before training starts; call it holding the lock.

        A new run needs an empty or new folder; ``overwrite`` first deletes an earlier run's files (and only
        those); ``resume`` needs ``checkpoints/last.pt``. Files that are not a run's are never touched.
        """
        foreign = [name for name in self._entries() if name not in RUN_ENTRIES]
        if foreign:
            raise ConfigError(
                f"{self.path} holds files that are not a training run's ({_listing(foreign)}); "
                "choose an empty or new --output"
            )
        if resume:
            if not self.checkpoints.last.is_file():
                raise DataError(self.checkpoints.last, "no checkpoint to resume from (train without --resume first)")
            remove_temp_files(self.checkpoints.path)  # of a checkpoint write that was killed half-way
            return
        present = self.run_files()
        if present and not overwrite:
            raise ConfigError(
                f"{self.path} already holds a training run ({_listing(present)}); pass --resume to continue it, "
                "--overwrite to delete it and start over, or choose another --output"
            )
        for name in present:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as written by ``write_config`` ({} when absent or unreadable: the checkpoint has the settings)."""
        try:
            record = json.loads(self.config_file.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def write_config(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.config_file, json.dumps(record, indent=2, allow_nan=False) + "\n")


class OutputFolder:
    """The output folder of ``eval`` / ``predict``: ``claim`` its files before the long work starts."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def claim(
        self, names: Iterable[str], *, overwrite: bool = False, inputs: Iterable[Path] = (), input_folders: Iterable[Path] = ()
    ) -> None:
        """Create the folder and check that it is writable; refuse when a file of ``names`` (relative paths)
        exists (unless ``overwrite``), when the folder holds one of the command's ``inputs`` (never written
        over), or when it is or lies inside one of the ``input_folders`` (searched recursively: its outputs
        would be read as inputs by the next run)."""
        if self.path.exists() and not self.path.is_dir():
            raise DataError(self.path, "is a file, not an output folder")
        folder = self.path.resolve()
        held = [str(p) for p in inputs if folder in p.resolve().parents]
        if held:
            raise ConfigError(f"--output {self.path} holds input file(s) {_listing(held)}; choose another folder for the outputs")
        around = [str(p) for p in input_folders if p.resolve() == folder or p.resolve() in folder.parents]
        if around:
            raise ConfigError(
                f"--output {self.path} lies inside the input folder {around[0]}, which is searched recursively; "
                "choose a folder outside the inputs"
            )
        existing = sorted(name for name in set(names) if (self.path / name).exists())
        if existing and not overwrite:
            raise ConfigError(
                f"--output {self.path} already holds {_listing(existing)}; pass --overwrite to replace them or choose another folder"
            )
        check_writable(self.path)
