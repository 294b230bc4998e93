"""Checkpoints: tensors and plain containers only, written atomically, loaded with ``weights_only=True``.

A training checkpoint is a dict::

    {"model": state_dict, "optimizer": state_dict, "scheduler": {"iteration": i},
     "iteration": int, "epoch": int, "epoch_iteration": int, "best_metric": float | None,
     "rng": rng_state(), "config": {"preset": str, "model": dict, "train": dict},
     "class_names": [str, ...], "label_to_category_id": {label: category id} (COCO data only)}

``eval`` and ``predict`` need only ``model``, ``config`` and ``class_names``
(see ``check_model_checkpoint``).
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterrcnn.errors import DataError
from fasterrcnn.io import atomic_save, load_tensors

__all__ = [
    "check_model_checkpoint",
    "get_rng_state",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` with ``torch.save`` to ``path`` atomically (temp file + rename).

    The parent folder is created if needed. If writing fails, a previous file at ``path`` is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises DataError (naming the file) when it is missing, unreadable, not a checkpoint, or holds
    objects other than tensors and plain containers (a pickle that could run code is refused).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such checkpoint file" if not path.exists() else "not a file")
    try:
        state = load_tensors(path, map_location=map_location)
    except pickle.UnpicklingError as e:
        raise DataError(
            path,
            "refused to load: the file holds objects other than tensors and plain containers, "
            f"which could run code when unpickled ({_reason(e, 'GLOBAL')})",
        ) from None
    except OSError as e:
        raise DataError(path, f"cannot read checkpoint ({e.strerror or e})") from None
    except Exception as e:  # truncated zip, empty file, not a torch file at all
        raise DataError(path, f"not a readable checkpoint ({_reason(e)})") from None
    if not isinstance(state, dict):
        raise DataError(path, f"not a fasterrcnn checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def _reason(error: Exception, keyword: str | None = None) -> str:
    """A one-line reason from torch's multi-paragraph messages: the line naming ``keyword``, else the first."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    for line in lines:
        if keyword and keyword in line:
            return line.rstrip(".")
    return lines[0].split(". ")[0].rstrip(".")


def check_model_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Raise DataError unless ``state`` has what is needed to rebuild the model and name classes."""
    missing = [k for k in ("model", "config", "class_names") if k not in state]
    config = state.get("config")
    if isinstance(config, dict) and not isinstance(config.get("model"), dict):
        missing.append("config['model']")
    if missing:
        raise DataError(path, f"not a fasterrcnn checkpoint (missing {', '.join(missing)})")


def get_rng_state() -> dict[str, Any]:
    """The states of torch's CPU generator, Python's ``random`` and NumPy's global generator."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
