"""Reading files the project did not write: every text, JSON and YAML input goes through here.

A user's files, or files handed to ``serve`` and ``predict``, may be anything: a named pipe (opening it
blocks until someone writes), a link to ``/dev/zero`` (endless), a sparse file of gigabytes, JSON numbers of
thousands of digits or nesting thousands of levels deep, a YAML document of a few hundred bytes whose
aliases expand to 10^8 items. Each of these ends here in one ``DataError`` naming the file, before
anything is built from it:

- ``check_regular_file(path)``: anything but a regular file (a named pipe, a device, a socket, a folder)
  is refused from ``os.stat``, before it is opened;
- ``read_bytes`` / ``read_text(path, limit)``: at most ``limit`` bytes, a size that no real file of
  that kind reaches (the ``*_BYTES`` constants below); a larger file is refused from its size, and
  no more than ``limit + 1`` bytes are ever read (a file that grows, or reports no size);
- ``loads_json(text)``: ``json.loads`` whose every failure is a ``JSONError`` (a ValueError) with a
  one-line ``problem``: bad syntax, nesting deeper than the parser's recursion allows. An integer of
  more than ``MAX_INT_DIGITS`` digits reads as infinity, as ``1e400`` does, so that every check for a
  finite number refuses it (Python's ``int`` refuses 4300 digits with a ValueError, and
  ``math.isfinite`` raises OverflowError on 400); ``load_json`` reads a file with it;
- ``yaml_loader()``: PyYAML's safe loader (plain data, no tags that build objects) that refuses
  aliases (``*name``, and so ``<<: *name`` merges): a document is read as written, never expanded.
"""

from __future__ import annotations

import functools
import json
import math
import os
import stat
from typing import Any

from fasterrcnn.errors import DataError

__all__ = [
    "ANNOTATION_BYTES",
    "COCO_JSON_BYTES",
    "CONFIG_BYTES",
    "JSONError",
    "LIST_BYTES",
    "MAX_INT_DIGITS",
    "METRICS_BYTES",
    "RESULTS_BYTES",
    "check_regular_file",
    "load_json",
    "loads_json",
    "parse_yaml",
    "read_bytes",
    "read_text",
    "yaml_loader",
]

MiB = 2**20
# Size limits, far above any real file of the kind (the largest public data sets' files in brackets).
ANNOTATION_BYTES = 16 * MiB  # one image's annotation: a VOC XML, a YOLO label file (polygons: ~100 KB)
LIST_BYTES = 256 * MiB  # a list of image ids or paths: VOC split files, YOLO image lists (COCO train: 6 MB)
CONFIG_BYTES = 16 * MiB  # config files, data.yaml, a run's config.json with its history (LVIS names: 30 KB)
COCO_JSON_BYTES = 4096 * MiB  # a COCO instances file (COCO train2017: 448 MB, Objects365: ~2 GB)
RESULTS_BYTES = 4096 * MiB  # detections in COCO results form (5000 images x 100 detections: ~50 MB)
METRICS_BYTES = 256 * MiB  # a run's metrics.jsonl (a record every 20 of 1M iterations: ~30 MB)

MAX_INT_DIGITS = 300  # a JSON integer with more digits reads as infinity (a float holds up to ~1.8e308)

_KINDS = {
    stat.S_ISFIFO: "a named pipe (FIFO)",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
    stat.S_ISSOCK: "a socket",
    stat.S_ISDIR: "a folder",
}


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit} bytes"


def check_regular_file(path: str | os.PathLike) -> os.stat_result:
    """``os.stat(path)`` (links followed) when it is a regular file; else ``DataError`` saying what it is.

    Raises FileNotFoundError / PermissionError (OSError) as ``os.stat`` does, for the caller to word.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS.items() if test(info.st_mode)), "not a regular file")
        raise DataError(path, f"is {kind}, not a regular file")
    return info


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them (see the module docstring).

    ``DataError(path, ...)``: not a regular file, or larger than ``limit``. OSError (missing, unreadable)
    propagates for the caller to word.
    """
    info = check_regular_file(path)
    if info.st_size > limit:
        raise DataError(path, f"{what} is {info.st_size / MiB:.0f} MiB, more than the {_size(limit)} any real one needs")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise DataError(path, f"{what} is larger than the {_size(limit)} any real one needs")
    return data


def read_text(path: str | os.PathLike, limit: int, what: str = "file", encoding: str = "utf-8-sig") -> str:
    """``read_bytes`` decoded (``utf-8-sig``: UTF-8, a leading byte order mark dropped); bytes that are not
    in ``encoding`` are a ``DataError`` naming the first bad byte's offset."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise DataError(path, f"{what} is not {e.encoding.upper().removesuffix('-SIG')} text (byte {e.start})") from None


class JSONError(ValueError):
    """JSON text that ``loads_json`` cannot read; ``problem`` says why in one line, ``syntax`` whether it is
    not JSON at all (rather than JSON beyond the limits)."""

    def __init__(self, problem: str, syntax: bool = False):
        super().__init__(problem)
        self.problem = problem
        self.syntax = syntax


def _bounded_int(text: str) -> int | float:
    """A JSON integer; one of more than ``MAX_INT_DIGITS`` digits is infinite, as ``1e400`` reads."""
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return -math.inf if text.startswith("-") else math.inf
    return int(text)


def loads_json(text: str | bytes) -> Any:
    """``json.loads(text)``, raising ``JSONError`` for every failure (see the module docstring)."""
    try:
        return json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as e:
        raise JSONError(f"not valid JSON (line {e.lineno} column {e.colno}: {e.msg})", syntax=True) from None
    except RecursionError:
        raise JSONError("JSON nested too deeply to read") from None
    except (ValueError, UnicodeDecodeError) as e:  # bytes in no UTF encoding; what the parser refuses otherwise
        raise JSONError(f"not valid JSON ({str(e).splitlines()[0] if str(e) else type(e).__name__})", syntax=True) from None


def load_json(path: str | os.PathLike, limit: int, what: str = "JSON file") -> Any:
    """The JSON file ``path`` (at most ``limit`` bytes) as data; every failure is a ``DataError`` naming it."""
    try:
        text = read_text(path, limit, what)
    except FileNotFoundError:
        raise DataError(path, f"{what} not found") from None
    except OSError as e:
        raise DataError(path, f"cannot read {what} ({e.strerror or e})") from None
    try:
        return loads_json(text)
    except JSONError as e:
        raise DataError(path, e.problem) from None


@functools.cache
def yaml_loader():
    """``(yaml, Loader)``: PyYAML and its SafeLoader refusing aliases (see the module docstring)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"found the alias *{event.anchor}: aliases are not read here, write the value out", event.start_mark
                )
            return super().compose_node(parent, index)

    return yaml, Loader


def parse_yaml(text: str, path: str | os.PathLike, loader=None) -> Any:
    """The YAML document ``text`` (read from ``path``) as plain data, with ``loader`` (default: ``yaml_loader()``'s).

    ``DataError(path, "not valid YAML (line N column M: problem)")`` for a document that does not parse, uses
    an alias, or nests too deeply.
    """
    yaml, base = yaml_loader()
    try:
        return yaml.load(text, Loader=loader or base)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(path, f"not valid YAML ({where}{problem})") from None
    except RecursionError:
        raise DataError(path, "not valid YAML (nested too deeply to read)") from None
    except ValueError as e:  # an integer of more than 4300 digits, a timestamp that is no date ...
        raise DataError(path, f"not valid YAML ({str(e).split(';')[0].strip() or type(e).__name__})") from None
