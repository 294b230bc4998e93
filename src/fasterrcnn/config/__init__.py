"""Configuration: frozen dataclasses with documented defaults, named presets, and their validation.

A preset is a pair (``ModelConfig``, ``TrainConfig``). Validation happens once, however a configuration
arrives (command-line flags, ``--set``, config files, Python callers, checkpoints), and reports every
problem in one ``ConfigError`` line. The package holds one module per concern, each importing only
those before it:

- ``schema``: ``ModelConfig``, ``TrainConfig``, the backbones' facts, the names and upper bounds the
  fields are checked against, ``to_dict``;
- ``presets``: ``Preset``, ``PRESETS`` and ``get_preset``;
- ``rules``: each field's rules beyond its type and the relations between fields;
- ``validation``: the type checks, ``check_config``, ``from_dict``, ``replace`` and ``check_score_threshold``;
- ``layering``: a run's configuration from its layers (``resolve``), config files
  (``load_config_file``), ``--set`` items (``parse_overrides``) and ``config_from_checkpoint``.

The names below are re-exported here: import them from ``fasterrcnn.config``.
"""

from fasterrcnn.config.layering import config_from_checkpoint, load_config_file, parse_overrides, resolve
from fasterrcnn.config.presets import PRESETS, get_preset
from fasterrcnn.config.schema import (
    AMP_DTYPES,
    BACKBONES,
    BOX_POOLERS,
    CAFFE_BGR_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MAX_IMAGE_SIDE,
    PIXEL_FORMATS,
    SEED_MAX,
    ModelConfig,
    TrainConfig,
    to_dict,
)
from fasterrcnn.config.validation import check_config, check_score_threshold, from_dict, replace

__all__ = [
    "AMP_DTYPES",
    "BACKBONES",
    "BOX_POOLERS",
    "CAFFE_BGR_MEAN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_IMAGE_SIDE",
    "PIXEL_FORMATS",
    "PRESETS",
    "SEED_MAX",
    "ModelConfig",
    "TrainConfig",
    "check_config",
    "check_score_threshold",
    "config_from_checkpoint",
    "from_dict",
    "get_preset",
    "load_config_file",
    "parse_overrides",
    "replace",
    "resolve",
    "to_dict",
]
