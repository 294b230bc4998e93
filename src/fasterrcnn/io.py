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
tensors and plain containers only, a pickle that could run code is refused). A file that is plainly
something else (an image, text, an empty file, a zip without PyTorch data; ``not_a_tensor_file``) is
named as such instead of being handed to the unpickler, whose errors would not say so.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import stat
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fasterrcnn.errors import DataError
from fasterrcnn.paths import TEMP_FILE, create_new

__all__ = [
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_tensors",
    "not_a_tensor_file",
    "remove_temp_files",
]

_TEMP_NAME = re.compile(f"^{TEMP_FILE}$")  # .<name>.<12 hex digits>.tmp, see atomic_save


def atomic_save(path: str | os.PathLike, writer: Callable[[BinaryIO], object]) -> None:
    """Call ``writer(f)`` with a binary file object open for writing, then move it to ``path``.

    The parent directory must exist. The new file gets the usual permissions (0o666 minus the
    umask). Exceptions from ``writer`` propagate unchanged after the temporary file
    (``.<name>.<random>.tmp`` next to ``path``) has been removed.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # Mode 0o666 filtered by the umask, like open(path, "wb") (tempfile.mkstemp would give 0o600); a new
    # file, never a link's target; the rename replaces a link at ``path`` itself, never writes through it.
    # The creation inside the try: a Ctrl-C that lands right after it (a signal pending during the open is
    # raised as soon as it returns) still removes the file. Only a FileExistsError of the creation itself
    # means the file there is not this call's, which is never removed.
    fd = None
    try:
        fd = create_new(tmp, 0o666)
        with os.fdopen(fd, "wb") as f:
            writer(_ThroughWrite(f))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if fd is not None or not isinstance(error, FileExistsError):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise


class _ThroughWrite:
    """The temporary file as a writer sees it: everything but ``fileno``, so that a writer that would write to the
    descriptor itself goes through ``write``. Pillow's encoder ignores a short ``write(2)`` (what a file-size
    limit, and a disk filling up mid-write, give) and leaves a truncated picture without an error; the buffered
    ``write`` writes the rest, which raises ``OSError(ENOSPC / EFBIG)``."""

    def __init__(self, file: BinaryIO):
        self._file = file

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name: str):
        return getattr(self._file, name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_save(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (encoded with ``encoding``, no newline translation)."""
    atomic_write_bytes(path, text.encode(encoding))


def remove_temp_files(folder: str | os.PathLike, *, name: str | None = None, older_than: float | None = None) -> list[Path]:
    """Delete the temporary files of ``atomic_save`` writes that never finished in ``folder``.

    Call it only when nothing writes into ``folder`` (e.g. before resuming a run), or give ``older_than``
    (seconds since the file was last written) to spare a write in progress; ``name``: only those of writes
    to ``folder / name``. Links are never followed. Returns the removed paths (none when the folder does
    not exist).
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if not _TEMP_NAME.match(path.name) or (name is not None and not path.name.startswith(f".{name}.")):
            continue
        info = path.lstat()
        if not stat.S_ISREG(info.st_mode) or (older_than is not None and time.time() - info.st_mtime < older_than):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


# File signatures of what is passed as weights by mistake: (leading bytes, what the file is).
_SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF-", "a PDF document"),
    (b"\x1f\x8b", "a gzip file"),
)
_SNIFF_BYTES = 512


def not_a_tensor_file(path: str | os.PathLike) -> str | None:
    """What the file at ``path`` plainly is when it cannot be a ``torch.save`` file, e.g. "it is a JPEG image",
    "the file is empty"; None when it may be one (or cannot be opened: ``torch.load`` then says why).

    Looks at the first bytes only: image and document signatures, text (JSON, HTML, a Git LFS pointer),
    a zip archive without the ``data.pkl`` record that every zip written by ``torch.save`` holds, and
    other binary data that does not start as a pickle does.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_SNIFF_BYTES)
    except OSError:
        return None
    if not head:
        return "the file is empty"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return f"it is {kind}"
    if head.startswith(b"BM") and head[6:10] == bytes(4):  # signature, file size, reserved zeros
        return "it is a BMP image"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "it is a WebP image"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return None  # e.g. a truncated torch file: torch.load's error says more
        return None if any(name.endswith("data.pkl") for name in names) else "it is a zip archive without PyTorch data"
    if head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000:  # u64 header size, JSON header
        return "it is a safetensors file, which is not read here"
    text = _utf8(head.removeprefix(b"\xef\xbb\xbf"), cut_allowed=len(head) == _SNIFF_BYTES)  # without a BOM
    if text is None or not all(c.isprintable() or c in "\t\n\r\f\v" for c in text):  # binary
        # torch.save writes a zip archive, or (legacy format) pickles starting with the PROTO opcode
        return None if head.startswith(b"\x80") else "it is neither a zip archive nor a pickle"
    text = text.lstrip()
    if text.startswith("version https://git-lfs"):
        return "it is a Git LFS pointer: fetch the file itself with 'git lfs pull'"
    if text[:15].lower().startswith(("<!doctype html", "<html")):
        return "it is an HTML page"
    if text.startswith(("{", "[")):
        return "it is a JSON file"
    return "it is a text file"


def _utf8(data: bytes, cut_allowed: bool) -> str | None:
    """``data`` decoded as UTF-8, or None; ``cut_allowed``: a sample whose last character may be cut short."""
    for cut in range(4 if cut_allowed else 1):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def load_tensors(path: str | os.PathLike, map_location="cpu", *, what: str = "PyTorch file"):
    """``torch.load(path, map_location=map_location, weights_only=True)``, without torch's warning.

    A file that ``not_a_tensor_file`` recognises raises ``DataError(path, "not a <what> (it is a JPEG image)")``
    before torch reads it (``what``: the caller's name for the file, e.g. "checkpoint").

    Files written with a pickle protocol other than 2 (``torch.save(..., pickle_protocol=4)``, other
    tools) make the safe unpickler warn "Detected pickle protocol N in the checkpoint": it says
    nothing the user can act on, and what it cannot read raises anyway.  Exactly that UserWarning
    is silenced; torch's errors propagate unchanged (callers turn them into DataError).
    """
    import torch  # here, so that writing files does not need torch

    kind = not_a_tensor_file(path)
    if kind is not None:
        raise DataError(path, f"not a {what} ({kind})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True)
