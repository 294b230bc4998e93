"""Validation, once, however a configuration arrives (command-line flags, ``--set``, config files, Python callers, checkpoints).

``check_config`` checks every field's type (a bool is not an int, an int is a float, tuples of the right
length), finite numbers, its range or allowed names (``rules``), and the relations between fields
(thresholds in order, anchors that fit the backbone ...). All problems are reported in one
``ConfigError`` line, each as ``section.field = value: rule``, followed by ``(in FILE)`` when the value
was read from a file. ``from_dict`` builds a checked config from a dict, ``replace`` refuses unknown
field names (not values: ``check_config`` checks those).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasterrcnn.config.rules import _RELATIONS, _RULES
from fasterrcnn.config.schema import _SECTIONS, ModelConfig, TrainConfig, _coerce
from fasterrcnn.errors import ConfigError

_TYPE_NAMES = {  # (singular, plural)
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    str: ("a string", "strings"),
    type(None): ("null", "nulls"),
}


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value, hint) -> bool:
    """Whether ``value`` has type ``hint``: bool is not an int, an int is a float, floats are finite, tuples have the right length."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, h) for v, h in zip(value, args))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond the float range
            return False
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint, plural: bool = False) -> str:
    """A type annotation in words: ``tuple[int, int] | None`` -> "a tuple of 2 integers or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h, plural) for h in args)
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"{'tuples' if plural else 'a tuple'} of {count}{_describe(args[0], plural=True)}"
    return _TYPE_NAMES[hint][plural]


@dataclass(frozen=True)
class _Problem:
    section: str
    field: str
    value: Any
    rule: str

    def text(self, source: str | Path | None = None) -> str:
        return f"{self.section}.{self.field} = {_shown(self.value)}: {self.rule}{_in(source)}"


def _shown(value) -> str:
    """``repr(value)`` for an error message, cut after 60 characters (a value may be a file's worth of data)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _in(source: str | Path | None) -> str:
    return "" if source is None else f" (in {source})"


def _problems(config) -> list[_Problem]:
    """Every problem of ``config``: each field's type, then its rules, then the relations between fields that passed."""
    cls = type(config)
    if cls not in _SECTIONS:
        raise TypeError(f"expected a ModelConfig or TrainConfig, got {cls.__name__}")
    section, rules, hints = _SECTIONS[cls], _RULES[cls], _hints(cls)
    problems = []
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if not _fits(value, hints[f.name]):
            problems.append(_Problem(section, f.name, value, f"must be {_describe(hints[f.name])}"))
        elif value is not None:
            rule = next((p for p in (check(value) for check in rules[f.name]) if p), None)
            if rule is not None:
                problems.append(_Problem(section, f.name, value, rule))
    bad = {p.field for p in problems}
    for name, rule in _RELATIONS[cls](config, lambda *names: bad.isdisjoint(names)):
        problems.append(_Problem(section, name, getattr(config, name), rule))
    return problems


def check_config(config: ModelConfig | TrainConfig, *, source: str | Path | None = None) -> None:
    """Raise ConfigError listing every invalid field of ``config`` in one line.

    Each problem reads ``section.field = value: rule`` (e.g. ``model.pixel_format = 'hsv': must be
    one of rgb01, caffe_bgr255``), followed by ``(in SOURCE)`` when ``source`` (a file) is given;
    problems are joined by "; ".
    """
    problems = _problems(config)
    if problems:
        raise ConfigError("; ".join(p.text(source) for p in problems))


def _check_known(cls, data: dict, source: str | Path | None) -> None:
    """ConfigError for keys of ``data`` that are not fields of ``cls``, with the closest field name as a hint."""
    section, names = _SECTIONS[cls], [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key in sorted(map(str, set(data) - set(names))):
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{section}.{key}: unknown field{hint}{_in(source)}")
    if problems:
        raise ConfigError("; ".join(problems))


def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None):
    """Build and check ``cls`` (ModelConfig or TrainConfig) from a dict of some of its fields (JSON lists become tuples).

    Raises ConfigError for unknown or invalid fields, naming ``source`` (the file the dict came from) when given.
    """
    section = _SECTIONS[cls]
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of {section} fields, got {type(data).__name__}{_in(source)}")
    _check_known(cls, data, source)
    config = cls(**{k: _coerce(v) for k, v in data.items()})
    check_config(config, source=source)
    return config


def check_score_threshold(value) -> float:
    """``value`` if it is a score threshold (a number in [0, 1]; not NaN), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"score threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def replace(config, **overrides):
    """``dataclasses.replace`` with a clear ConfigError for unknown fields (values are not checked: see ``check_config``)."""
    _check_known(type(config), overrides, None)
    return dataclasses.replace(config, **overrides)
