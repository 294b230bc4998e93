"""May a command write, replace or delete this path: the one owner of the rules that keep a user's files safe.

Every command writes into a folder it owns for the run (``train``'s run folder, the ``--output`` of ``eval``,
``predict`` and ``demo``, the folder of an ``export`` / ``compress`` file, the weights cache) and follows
three rules there, all enforced here:

1. **No link is followed.** A file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (``create_new``) and an
   existing one is replaced by a rename (``io.atomic_save``) or removed first (``open_replacing``), so a
   symbolic link planted under an output's name is replaced itself and its target is never written. A link
   or a non-folder on the way to an output below the owned folder is refused (``check_inside``).
2. **Nothing the project did not write is deleted.** What a command may delete is described by what it
   writes (a ``Layout``: names, and folders with their own layouts); ``owned_entries`` lists those entries
   and refuses, before anything is deleted, a folder that holds anything else (a link included).
3. **Refusal comes before the work and before any deletion.** An output name that is a folder, a link on
   the way, an output that is an input (``check_output_file``): all are checked when the output is claimed.

A write that fails because the disk is full, a quota or ``ulimit -f`` is reached (``ENOSPC``, ``EDQUOT``,
``EFBIG``, found anywhere in the exception's chain, whatever the writer's own message says: torch says
"unexpected pos 704 vs 598") is a ``DataError`` naming the file (``writing``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO, Union

from fasterrcnn.errors import ConfigError, DataError

__all__ = [
    "FILE",
    "WriteError",
    "Layout",
    "check_inside",
    "check_output_file",
    "create_new",
    "disk_full",
    "open_replacing",
    "owned_entries",
    "remove_owned",
    "writing",
]

NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # 0 on Windows, which has no symbolic links a user plants this way
FILE = None  # in a Layout: a regular file (not a link, not a folder)
# A folder's layout: full-match name patterns -> FILE, or the nested Layout of a folder (a real one, not a link).
Layout = Mapping[str, Union[None, "Layout"]]
TEMP_FILE = r"\..+\.[0-9a-f]{12}\.tmp"  # io.atomic_save's temporary files, left by a killed process
_UNKNOWN = object()  # a name the layout does not hold
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


class WriteError(DataError):
    """An output could not be written (a full disk, a file-size limit, a permission): it ends the command, whatever
    its policy for bad inputs (a bad input is skipped, a failed write is not)."""


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # absent, or below a file (the folder's own check says so)
        return None


def create_new(path: str | os.PathLike, mode: int = 0o666) -> int:
    """A file descriptor of a new file at ``path``, open for writing; ``FileExistsError`` when anything is there
    already (a link included: never followed)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NO_FOLLOW | getattr(os, "O_BINARY", 0), mode)


def open_replacing(path: str | os.PathLike, encoding: str = "utf-8") -> TextIO:
    """``path`` open for writing text as a new file: an earlier file or link there (claimed with overwrite) is
    removed first, a link's target is never touched; a folder or a special file there is refused."""
    path = Path(path)
    info = _lstat(path)
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise DataError(path, "is a folder, not a file this command may replace")
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
            raise DataError(path, "is not a regular file; this command replaces only files")
        path.unlink()
    return os.fdopen(create_new(path), "w", encoding=encoding)


def check_inside(folder: Path, relative: str) -> None:
    """Refuse an output ``folder / relative`` that would be written through a link or that cannot be a file:
    each folder on the way below ``folder`` must be absent or a real folder, the output itself absent, a file
    or a link (replaced itself), never a folder. Raises DataError naming the path."""
    parts = Path(relative).parts
    here = folder
    for i, part in enumerate(parts):
        here = here / part
        info = _lstat(here)
        if info is None:
            return
        last = i == len(parts) - 1
        if stat.S_ISLNK(info.st_mode) and not last:
            raise DataError(here, "is a symbolic link inside the output folder; outputs are never written through links")
        if last and stat.S_ISDIR(info.st_mode):
            raise DataError(here, "is a folder where this command writes a file; remove it or choose another output")
        if not last and not stat.S_ISDIR(info.st_mode):
            raise DataError(here, "is a file where this command needs a folder for its outputs")


def check_output_file(path: str | os.PathLike, *, overwrite: bool, inputs: Iterable[str | os.PathLike] = (), option: str = "--output") -> None:
    """Before the work: refuse an output file that is one of ``inputs`` (by path or through a link), that is a
    folder or a special file, or that exists when not ``overwrite``."""
    path = Path(path)
    for item in inputs:
        item = Path(item)
        same = path.resolve() == item.resolve()
        if not same and path.exists() and item.exists():
            same = os.path.samefile(path, item)
        if same:
            raise ConfigError(f"{path} is the input {item}, which is never written over; choose another {option}")
    info = _lstat(path)
    if info is None:
        return
    if stat.S_ISDIR(info.st_mode):
        raise DataError(path, f"is a folder; {option} names the file to write")
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
        raise DataError(path, f"is not a regular file; {option} names the file to write")
    if not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it or choose another {option}")


def owned_entries(folder: Path, layout: Layout) -> tuple[list[Path], list[str]]:
    """What the project wrote in ``folder`` by ``layout``, and what it did not: ``(owned, foreign)``.

    ``owned``: the entries of ``folder`` that match ``layout`` (a nested folder's own entries first, so that
    deleting them in order empties it); ``foreign``: the paths (relative to ``folder``) of everything else, a
    link or a folder where the layout has a file (or the opposite) included. Nothing is deleted here."""
    owned: list[Path] = []
    foreign: list[str] = []

    def walk(here: Path, layout: Layout, prefix: str) -> None:
        with os.scandir(here) as entries:
            entries = sorted(entries, key=lambda e: e.name)
        for entry in entries:
            relative = prefix + entry.name
            rule = next((rule for pattern, rule in layout.items() if re.fullmatch(pattern, entry.name)), _UNKNOWN)
            if entry.is_symlink() or rule is _UNKNOWN:
                foreign.append(relative)
            elif rule is FILE and entry.is_file(follow_symlinks=False):
                owned.append(Path(entry.path))
            elif rule is not FILE and entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), rule, relative + "/")
                owned.append(Path(entry.path))
            else:
                foreign.append(relative)

    if folder.is_symlink():
        return [], ["."]
    if folder.is_dir():
        walk(folder, layout, "")
    return owned, foreign


def remove_owned(paths: Iterable[Path]) -> None:
    """Delete what ``owned_entries`` listed as owned (files, then their emptied folders), never following a link."""
    for path in paths:
        info = _lstat(path)
        if info is None:
            continue
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(path)  # emptied before: a file written there since is never deleted (rmdir fails instead)
        else:
            os.unlink(path)


def disk_full(error: BaseException) -> OSError | None:
    """The ``OSError`` of a full disk, a quota or a file-size limit in ``error``'s chain (causes and contexts)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            return error
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a failed write of ``what`` to ``path`` into ``WriteError(path, "cannot write <what> (...)")``: an
    ``OSError``, or any error whose chain holds a full disk (``disk_full``); other errors propagate."""
    try:
        yield
    except DataError:
        raise
    except Exception as error:
        full = disk_full(error)
        if full is not None:
            reason = "the disk is full" if full.errno == errno.ENOSPC else "the file size limit or quota is reached" if full.errno == errno.EFBIG else "the disk quota is reached"
            raise WriteError(path, f"cannot write {what} ({reason}: {full.strerror or full})") from None
        if isinstance(error, OSError):
            raise WriteError(path, f"cannot write {what} ({error.strerror or error})") from None
        raise
