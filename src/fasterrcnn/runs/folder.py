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

What may be written, replaced or deleted is decided by ``fasterrcnn.paths``: no link in a folder a command
owns is followed (the lock, the write probe and every output are opened with ``O_NOFOLLOW``), and ``train
--overwrite`` deletes only the files a run writes (``RUN_LAYOUT``), after the new run's configuration,
data and model were accepted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fasterrcnn.engine.checkpoint import CheckpointFolder
from fasterrcnn.engine.report import REPORT_FILES
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.io import atomic_write_text, remove_temp_files
from fasterrcnn.paths import FILE, TEMP_FILE, check_inside, create_new, owned_entries, remove_owned
from fasterrcnn.reading import CONFIG_BYTES, load_json

__all__ = ["OutputFolder", "RunFolder", "RunLock"]

logger = logging.getLogger("fasterrcnn")

# loss.png: the figure of runs written before results.png, so that --overwrite replaces such a run too
RUN_ENTRIES = (
    "config.json", "checkpoints", "metrics.jsonl", "tb", "results.csv", "results.png", *REPORT_FILES, "loss.png", "error.log", "log.txt",
    "labels.jpg",
)  # fmt: skip
LOCK_NAME = ".lock"
PROBE_PREFIX = ".write-test-"
# What a run writes, so what --overwrite may delete: its files, its checkpoints, its TensorBoard event files
# (and the temporary files of writes that a killed process left). Anything else, links included, is refused.
RUN_FOLDERS = {
    "checkpoints": {r"last\.pt|best\.pt|iter_\d{7,}\.pt": FILE, TEMP_FILE: FILE},
    "tb": {r"events\.out\.tfevents\..+": FILE},
}
RUN_LAYOUT = {
    **{re.escape(name): RUN_FOLDERS.get(name, FILE) for name in RUN_ENTRIES},
    TEMP_FILE: FILE,
    re.escape(PROBE_PREFIX) + ".+": FILE,
    re.escape(LOCK_NAME): FILE,  # held while the run is prepared: never deleted (see RunFolder.clear)
}
_LOCK_TEXT = re.compile(r"\d+ on [^\s]*")  # what RunLock writes: "<PID> on <host>"


def _listing(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_writable(folder: Path) -> None:
    """Create ``folder`` (and parents) and write a probe file in it, so a command fails before its long work.

    The probe is a new file (``O_EXCL | O_NOFOLLOW``) under a random name: nothing planted there is written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{PROBE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        os.close(create_new(probe))
        probe.unlink()
    except OSError as e:
        raise DataError(folder, f"cannot write into this folder ({e.strerror or e})") from None


class RunLock:
    """An exclusive ``flock`` on ``DIR/.lock`` while a process trains in DIR.

    A second process is refused with the holder's PID. The kernel releases the lock when its holder dies,
    so a lock left by a dead process (its PID still in the file) is taken over, with a warning. A ``.lock``
    that is a link, not a regular file, or holds anything but a PID line is not this project's: refused,
    never opened through the link, emptied or shown.
    """

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def _open(self) -> int:
        def refuse(problem: str):
            return DataError(self.path, f"{problem}; it is not a fasterrcnn lock, so it is left as it is: remove it or choose another --output")

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            if self.path.is_symlink():
                raise refuse("is a symbolic link") from None
            raise DataError(self.path, f"cannot open the run's lock ({e.strerror or e})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise refuse("is not a regular file")
        return fd

    def __enter__(self) -> "RunLock":
        import fcntl

        fd = self._open()
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if text and not _LOCK_TEXT.fullmatch(text):
            os.close(fd)
            raise DataError(self.path, "holds something other than a PID line; it is not a fasterrcnn lock, so it is left as it is: remove it or choose another --output")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another training (PID {text or 'unknown'}); wait for it to end or choose another --output"
            ) from None
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        if _LOCK_TEXT.fullmatch(previous):
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
        return sorted(p.name for p in self.path.iterdir() if p.name != LOCK_NAME and not p.name.startswith(PROBE_PREFIX))

    def run_files(self) -> list[str]:
        """The names of a run's files present in the folder."""
        return [name for name in self._entries() if name in RUN_ENTRIES]

    def lock(self) -> RunLock:
        """The folder's lock (a context manager); creates the folder."""
        check_writable(self.path)
        return RunLock(self.path)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Check the folder before training starts; call it holding the lock. Deletes nothing.

        A new run needs an empty or new folder; ``overwrite`` needs a folder holding nothing but an earlier run's
        files (``RUN_LAYOUT``), which ``clear`` deletes once the new run is accepted; ``resume`` needs
        ``checkpoints/last.pt``. Files that are not a run's are never touched, and the run's ``checkpoints/`` and
        ``tb/`` are never written through a link.
        """
        foreign = [name for name in self._entries() if name not in RUN_ENTRIES]
        if foreign:
            raise ConfigError(
                f"{self.path} holds files that are not a training run's ({_listing(foreign)}); "
                "choose an empty or new --output"
            )
        for name in RUN_ENTRIES:
            if name in RUN_FOLDERS:
                target = self.path / name
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    raise DataError(target, "is a link or a file, not a folder of this run; a run never writes through links: remove it or choose another --output")
            else:
                check_inside(self.path, name)
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
        if present:
            self._owned()  # what --overwrite will delete: refused now if the folder holds anything else

    def _owned(self) -> list[Path]:
        """The earlier run's files and folders (``RUN_LAYOUT``); ConfigError when the folder holds anything else."""
        owned, foreign = owned_entries(self.path, RUN_LAYOUT)
        if foreign:
            raise ConfigError(
                f"{self.path} holds files that fasterrcnn did not write ({_listing(foreign)}), so --overwrite would delete "
                "them; move them out or choose another --output"
            )
        return [path for path in owned if path != self.path / LOCK_NAME]

    def clear(self) -> None:
        """Delete an earlier run's files (``RUN_LAYOUT``; ``prepare(overwrite=True)`` checked them): call it once the
        new run was accepted (configuration, data, model), so a refused run deletes nothing."""
        remove_owned(self._owned())

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as written by ``write_config`` ({} when absent: the checkpoint has the settings).

        A file edited into something ``write_config`` would not write (not a JSON object, NaN or Infinity,
        ``changes`` not a list) is a DataError naming it, so that resuming never half-rewrites it.
        """
        if not self.config_file.exists():
            return {}
        record = load_json(self.config_file, CONFIG_BYTES, "run configuration")
        if not isinstance(record, dict):
            raise DataError(self.config_file, f"expected a JSON object (the run's configuration), got {type(record).__name__}")
        if not isinstance(record.get("changes", []), list):
            raise DataError(self.config_file, f"'changes' must be a list of the changes made on resuming, got {type(record['changes']).__name__}")
        try:
            json.dumps(record, allow_nan=False)
        except ValueError:
            raise DataError(self.config_file, "holds NaN or Infinity, which a run's configuration never does") from None
        return record

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
        exists (a link included; unless ``overwrite``), is a folder, lies below a link or a file, or is the folder
        of another name, when the folder holds one of the command's ``inputs`` (never written
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
        names = set(names)
        nested = sorted(name for name in names if any(parent.as_posix() in names for parent in Path(name).parents))
        if nested:
            parent = next(p.as_posix() for p in Path(nested[0]).parents if p.as_posix() in names)
            raise ConfigError(f"--output {self.path}: {parent} would be both a file and the folder of {nested[0]}; rename an input")
        for name in sorted(names):  # before the work: never through a link, never over a folder
            check_inside(self.path, name)
        existing = sorted(name for name in names if os.path.lexists(self.path / name))
        if existing and not overwrite:
            raise ConfigError(
                f"--output {self.path} already holds {_listing(existing)}; pass --overwrite to replace them or choose another folder"
            )
        check_writable(self.path)
