"""A run's configuration from its layers: the preset (or, on resume, the checkpoint's config) < a config file < overrides.

``load_config_file`` reads a JSON or YAML config file, ``parse_overrides`` the ``--set`` items,
``resolve`` merges the layers and checks the result once, naming the file each bad value came from;
``config_from_checkpoint`` reads the configuration a checkpoint stores.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from fasterrcnn.config.presets import get_preset
from fasterrcnn.config.schema import _SECTIONS, ModelConfig, TrainConfig, _coerce, to_dict
from fasterrcnn.config.validation import _check_known, _in, _problems, _shown, from_dict
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.reading import CONFIG_BYTES, JSONError, loads_json, parse_yaml, read_text, yaml_loader

_LAYOUT_KEYS = ("preset", "model", "train")
# What a run's config.json records besides its configuration (runs/training.py): read over by --config, so
# that `fasterrcnn train --config runs/x/config.json` repeats the run x.
_RUN_RECORD_KEYS = ("class_names", "data", "max_iters", "processes", "changes")


def _check_layout(data, source: str | Path | None, *, required: tuple[str, ...] = (), what: str = "") -> dict[str, Any]:
    """``data`` if it is ``{"preset": str, "model": {...}, "train": {...}}`` (keys optional unless ``required``).

    Otherwise DataError naming ``source`` (ConfigError without one); ``what`` starts the message.
    """

    def fail(problem: str) -> Exception:
        return DataError(source, what + problem) if source is not None else ConfigError(what + problem)

    if not isinstance(data, dict):
        raise fail(f"expected a mapping with keys {', '.join(_LAYOUT_KEYS)}, got {type(data).__name__}")
    unknown = sorted(map(str, set(data) - set(_LAYOUT_KEYS)))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (expected {', '.join(_LAYOUT_KEYS)})")
    missing = [key for key in required if key not in data]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    if "preset" in data and not isinstance(data["preset"], str):
        raise fail(f"'preset' must be a preset name, got {_shown(data['preset'])}")
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise fail(f"'{section}' must be a mapping of {section} fields")
    return data


@functools.cache
def _yaml_loader():
    """``reading.yaml_loader``'s (plain data, no aliases), reading ``1e-4`` as a float as JSON does.

    YAML 1.1 wants a dot in a float (``1.0e-4``); without this resolver ``lr: 1e-4`` would be the string "1e-4".
    """
    yaml, base = yaml_loader()

    class Loader(base):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return yaml, Loader


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file ``{"preset": NAME, "model": {...}, "train": {...}}`` (every key optional) as data, never code.

    JSON, or YAML for ``.yaml`` / ``.yml`` files (PyYAML's safe loader). A run's own ``config.json`` is one
    too: what it records besides the configuration (class names, data, the run's length) is left out. The values are checked by
    ``resolve``, which names this file for each bad one; here an unreadable or malformed file is a
    DataError naming it.
    """
    path = Path(path)
    try:
        text = read_text(path, CONFIG_BYTES, "config file")
    except OSError as e:
        raise DataError(path, f"cannot read config file ({e.strerror or e})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            _, loader = _yaml_loader()
        except ImportError:
            raise DataError(path, "reading YAML needs PyYAML (pip install pyyaml); or write the file as JSON") from None
        data = parse_yaml(text, path, loader)
    else:
        try:
            data = loads_json(text)
        except JSONError as e:
            raise DataError(path, e.problem) from None
    if isinstance(data, dict) and set(_RUN_RECORD_KEYS) & set(data):
        data = {key: value for key, value in data.items() if key not in _RUN_RECORD_KEYS}
    return _check_layout(data, path)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set`` items ``section.field=VALUE`` -> ``{"model": {...}, "train": {...}}``.

    VALUE is read as JSON (``0.6``, ``[800, 1000]``, ``true``, ``null``), else kept as a string
    (``rgb01``). Field names and values are checked by ``resolve``.
    """
    overrides: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in overrides or not name:
            raise ConfigError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        try:
            value = loads_json(text)
        except JSONError as e:
            if not e.syntax:
                raise ConfigError(f"--set {key.strip()}: {e.problem}") from None
            value = text
        overrides[section][name] = value
    return overrides


def resolve(
    preset: str | None = None,
    *,
    base: dict[str, Any] | None = None,
    file: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base_source: str | Path | None = None,
    file_source: str | Path | None = None,
) -> tuple[str, ModelConfig, TrainConfig]:
    """A run's ``(preset name, ModelConfig, TrainConfig)`` from its layers, each overriding the one before.

    1. the preset's configs (``preset``, else the file's "preset"), or ``base`` when resuming: the
       ``config`` dict of the run's checkpoint (read from ``base_source``), whose preset must then match;
    2. ``file``: a config file's dict (``load_config_file``, read from ``file_source``);
    3. ``overrides``: ``{"model": {...}, "train": {...}}`` (``--set`` items, then command-line flags).

    The merged configs are checked once; each bad value is reported with the file it came from.
    Raises ConfigError (DataError for a ``file`` or ``base`` that is not such a dict).
    """
    file = _check_layout(file if file is not None else {}, file_source)
    overrides = overrides or {}
    unknown = sorted(map(str, set(overrides) - {"model", "train"}))
    if unknown:
        raise ConfigError(f"unknown override section(s) {', '.join(unknown)} (expected model, train)")
    if base is not None:
        base = _check_layout(base, base_source, required=_LAYOUT_KEYS, what="run configuration: ")
        name = base["preset"]
        for given, where in ((preset, ""), (file.get("preset"), _in(file_source))):
            if given is not None and given != name:
                raise ConfigError(f"preset {given!r}{where}: the run to resume was trained with preset {name!r}")
        first = (base, base_source)
    else:
        name = preset if preset is not None else file.get("preset")
        if name is None:
            raise ConfigError('no preset: name one (--preset NAME) or put "preset" in the config file')
        chosen = get_preset(name)
        first = ({"model": to_dict(chosen.model), "train": to_dict(chosen.train)}, None)

    configs, problems = [], []
    for cls in (ModelConfig, TrainConfig):
        section = _SECTIONS[cls]
        values: dict[str, Any] = {}
        origin: dict[str, str | Path | None] = {}  # field -> the file its value came from
        for layer, source in (first, (file, file_source), (overrides, None)):
            fields = layer.get(section, {})
            _check_known(cls, fields, source)
            values.update({k: _coerce(v) for k, v in fields.items()})
            origin.update(dict.fromkeys(fields, source))
        config = cls(**values)
        problems += [p.text(origin.get(p.field)) for p in _problems(config)]
        configs.append(config)
    if problems:
        raise ConfigError("; ".join(problems))
    model_config, train_config = configs
    return name, model_config, train_config


def config_from_checkpoint(config: dict[str, Any], path: str | Path) -> tuple[str | None, ModelConfig, TrainConfig | None]:
    """The ``(preset, ModelConfig, TrainConfig or None)`` stored in a checkpoint's ``config`` entry.

    A missing, malformed or invalid configuration is a DataError naming ``path``, the checkpoint.
    Files written by ``compress`` or by hand may hold no "train" section (None then) or no preset.
    """
    _check_layout(config, path, required=("model",), what="checkpoint configuration: ")
    try:
        model_config = from_dict(ModelConfig, config["model"])
        train_config = from_dict(TrainConfig, config["train"]) if "train" in config else None
    except ConfigError as e:
        raise DataError(path, f"checkpoint holds an invalid configuration: {e}") from None
    return config.get("preset"), model_config, train_config
