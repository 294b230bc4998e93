"""Atomic file writes: a reader sees either the old file or the complete new one, never a torn one.

Every writer goes to a temporary file in the destination's directory (same file system, so the
final ``os.replace`` is atomic), is flushed and ``os.fsync``-ed, then renamed over ``path``.
If anything fails, the temporary file is removed and ``path`` is left as it was.

    atomic_write_text("metrics.json", json.dumps(m))
    atomic_save("model.pt", lambda f: torch.save(state, f))
    atomic_save("curves.png", lambda f: figure.savefig(f, format="png"))

A process killed during a write (SIGKILL, power loss) leaves its temporary file behind and the
previous file whole; ``remove_temp_files(folder)`` deletes such leftovers when no writer runs.

Reading: ``load_tensors(path)`` is the one ``torch.load`` of the project (``weights_only=True``:
tensors and plain containers only, a pickle that could run code is refused).
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "load_tensors", "remove_temp_files"]

_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # .<name>.<12 hex digits>.tmp, see atomic_save


def atomic_save(path: str | os.PathLike, writer: Callable[[BinaryIO], object]) -> None:
    """Call ``writer(f)`` with a binary file object open for writing, then move it to ``path``.

    The parent directory must exist. The new file gets the usual permissions (0o666 minus the
    umask). Exceptions from ``writer`` propagate unchanged after the temporary file
    (``.<name>.<random>.tmp`` next to ``path``) has been removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Mode 0o666 filtered by the umask, like open(path, "wb") (tempfile.mkstemp would give 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_save(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (encoded with ``encoding``, no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def remove_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``atomic_save`` writes that never finished in ``folder``.

    Call it only when nothing writes into ``folder`` (e.g. before resuming a run). Returns the
    removed paths (none when the folder does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _TEMP_NAME.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def load_tensors(path: str | os.PathLike, map_location="cpu"):
    """``torch.load(path, map_location=map_location, weights_only=True)``, without torch's warning.

    Files written with a pickle protocol other than 2 (``torch.save(..., pickle_protocol=4)``, other
    tools) make the safe unpickler warn "Detected pickle protocol N in the checkpoint": it says
    nothing the user can act on, and what it cannot read raises anyway.  Exactly that UserWarning
    is silenced; torch's errors propagate unchanged (callers turn them into DataError).
    """
    import torch  # here, so that writing files does not need torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)
