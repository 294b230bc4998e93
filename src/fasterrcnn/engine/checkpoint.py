"""Checkpoints: the one owner of their layout. Tensors and plain containers only, written atomically,
loaded with ``weights_only=True``.

A checkpoint file holds a dict::

    {"model": state_dict, "config": {"preset": str, "model": dict, "train": dict},
     "class_names": [str, ...], "label_to_category_id": {label: category id} (COCO data only),
     # a training checkpoint (written by the trainer; what --resume needs) adds:
     "optimizer": state_dict, "scheduler": {"iteration": i, "warmup_iters": w, "lr_steps": [s, ...]},
     "iteration": int, "epoch": int, "epoch_iteration": int, "best_metric": float | None, "rng": rng_state(),
     "scaler": (fp16 only), "time": {"budget": s, "elapsed": s, "max_iters": n, "fixed": schedule fields set by the user}
     (a time budget only), "ema": {"updates": n, "model": state_dict} (weight averaging only)}

With weight averaging (``train.ema_decay``) "model" holds the average, the weights every reader uses (eval,
predict, export), and "ema" the weights being trained with the number of steps averaged (what --resume needs).
The scheduler adds "cosine_iters" (the iteration its cosine reaches 0) for a cosine schedule.

``Checkpoint`` is that dict as an object: ``Checkpoint.read(path)`` loads and checks a file once
(configurations validated, class names matching the model), and everything that reads checkpoints
(resume, ``Detector``, ``compress``, ``eval``, ``predict``) goes through it; ``write`` is atomic.
``CheckpointFolder`` is ``DIR/checkpoints/`` of a run: ``last.pt``, ``best.pt`` and the periodic
``iter_XXXXXXX.pt``, of which it keeps the newest ``keep``.
"""

from __future__ import annotations

import pickle
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fasterrcnn.config import ModelConfig, TrainConfig, config_from_checkpoint, to_dict
from fasterrcnn.errors import DataError
from fasterrcnn.io import atomic_save, load_tensors
from fasterrcnn.paths import WriteError, disk_full

__all__ = [
    "TRAINING_KEYS",
    "Checkpoint",
    "CheckpointFolder",
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda f: torch.save(state, f))
    except Exception as e:
        # A full disk or a file-size limit, found in the chain: torch's zip writer wraps the file's OSError in
        # RuntimeErrors that do not say so ("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598").
        full = disk_full(e)
        if full is not None:
            raise WriteError(path, f"cannot write checkpoint (the disk is full or the file system refused it: {full.strerror or full})") from None
        if isinstance(e, OSError):
            raise WriteError(path, f"cannot write checkpoint ({e.strerror or e})") from None
        if isinstance(e, RuntimeError) and ("write" in str(e) or "inline_container" in str(e)):  # torch's writer failed
            raise WriteError(path, f"cannot write checkpoint (the disk is full or the file system refused it: {_reason(e)})") from None
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)``.

    Raises DataError (naming the file) when it is missing, unreadable, not a checkpoint, or holds
    objects other than tensors and plain containers (a pickle that could run code is refused).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such checkpoint file" if not path.exists() else "not a file")
    try:
        state = load_tensors(path, map_location=map_location, what="checkpoint")
    except DataError:  # plainly another kind of file (an image, text ...)
        raise
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


TRAINING_KEYS = ("optimizer", "scheduler", "iteration", "epoch", "epoch_iteration", "best_metric", "rng", "scaler", "time", "ema")


@dataclass
class Checkpoint:
    """A checkpoint's contents (see the module docstring for the file layout).

    ``training`` holds the trainer's state (the ``TRAINING_KEYS`` present) or is empty for a model-only
    checkpoint (``compress`` writes one); ``train_config`` is None when the file has none.
    """

    model: dict[str, torch.Tensor]
    preset: str | None
    model_config: ModelConfig
    train_config: TrainConfig | None
    class_names: tuple[str, ...]
    label_to_category_id: dict[int, int] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    source: Path | None = field(default=None, compare=False)  # the file it was read from (errors name it)

    @property
    def iteration(self) -> int | None:
        """The training iteration it was written at, None for a model-only checkpoint."""
        return self.training.get("iteration")

    @property
    def config(self) -> dict[str, Any]:
        """``{"preset", "model", "train"}`` as plain dicts (what ``config.json`` and the file store)."""
        return {
            "preset": self.preset,
            "model": to_dict(self.model_config),
            "train": None if self.train_config is None else to_dict(self.train_config),
        }

    def to_state(self) -> dict[str, Any]:
        """The dict written to the file."""
        config = {key: value for key, value in self.config.items() if value is not None}
        state = {"model": self.model, "config": config, "class_names": list(self.class_names), **self.training}
        if self.label_to_category_id is not None:
            state["label_to_category_id"] = dict(self.label_to_category_id)
        return state

    def write(self, path: str | Path) -> None:
        """Write atomically (``save_checkpoint``): a failed write leaves the previous file whole."""
        save_checkpoint(path, self.to_state())

    def build_model(self) -> torch.nn.Module:
        """The ``FasterRCNN`` of ``model_config`` with these weights (on the CPU, in train mode)."""
        from fasterrcnn.modeling.backbones.weights import load_state_dict_strictly
        from fasterrcnn.modeling.faster_rcnn import FasterRCNN

        model = FasterRCNN.from_config(self.model_config)
        load_state_dict_strictly(model, self.model, self.source, "the checkpoint's model configuration")
        return model

    def require_training(self, path: str | Path) -> None:
        """Raise DataError unless this checkpoint can resume training (a trainer wrote it)."""
        missing = [k for k in ("optimizer", "scheduler", "iteration", "epoch", "rng") if k not in self.training]
        if self.train_config is None:
            missing.append("config['train']")
        if missing:
            raise DataError(path, f"not a training checkpoint (missing {', '.join(missing)}); only 'fasterrcnn train' writes those")

    @classmethod
    def from_state(cls, state: dict[str, Any], path: str | Path) -> "Checkpoint":
        """Check a loaded checkpoint dict once: what a model needs is there, its configurations are valid,
        its class names fit the model. Errors name ``path``."""
        check_model_checkpoint(state, path)
        preset, model_config, train_config = config_from_checkpoint(state["config"], path)
        class_names = state["class_names"]
        if not isinstance(class_names, (list, tuple)) or not all(isinstance(name, str) for name in class_names):
            raise DataError(path, "checkpoint's class_names is not a list of names")
        if len(class_names) != model_config.num_classes:
            raise DataError(path, f"checkpoint has {len(class_names)} class names for {model_config.num_classes} classes")
        label_to_category_id = state.get("label_to_category_id")
        if label_to_category_id is not None:
            label_to_category_id = _category_ids(label_to_category_id, len(class_names), path)
        return cls(
            model=state["model"],
            preset=preset,
            model_config=model_config,
            train_config=train_config,
            class_names=tuple(class_names),
            label_to_category_id=label_to_category_id,
            training={key: state[key] for key in TRAINING_KEYS if key in state},
            source=Path(path),
        )

    @classmethod
    def read(cls, path: str | Path) -> "Checkpoint":
        """Load (``load_checkpoint``, on the CPU) and check (``from_state``) the checkpoint at ``path``."""
        return cls.from_state(load_checkpoint(path, map_location="cpu"), path)


def _category_ids(value: Any, num_classes: int, path: str | Path) -> dict[int, int]:
    """A checkpoint's ``label_to_category_id`` as ``{label: category id}`` for every label 1..C; DataError naming ``path`` else."""
    if not isinstance(value, dict):
        raise DataError(path, f"checkpoint's label_to_category_id is a {type(value).__name__}, expected a mapping {{label: category id}}")
    try:
        ids = {int(k): int(v) for k, v in value.items() if not isinstance(k, bool) and not isinstance(v, bool)}
    except (TypeError, ValueError, OverflowError):
        ids = {}
    if len(ids) != len(value) or sorted(ids) != list(range(1, num_classes + 1)):
        raise DataError(path, f"checkpoint's label_to_category_id must map each label 1..{num_classes} to an integer category id")
    return ids


def weights_are_finite(module: torch.nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite (worth a checkpoint)."""
    tensors = [*module.parameters(), *module.buffers()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


class CheckpointFolder:
    """A run's ``checkpoints/`` folder: ``last.pt``, ``best.pt`` and periodic ``iter_XXXXXXX.pt``.

    ``keep``: how many periodic checkpoints to keep, the newest (``None``: all). ``last.pt`` and
    ``best.pt`` are never removed; a periodic checkpoint is removed only after a newer one was written.
    """

    PERIODIC = re.compile(r"^iter_(\d{7,})\.pt$")

    def __init__(self, path: str | Path, keep: int | None = None):
        self.path = Path(path)
        self.keep = keep

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    @staticmethod
    def periodic_name(iteration: int) -> str:
        return f"iter_{iteration:07d}.pt"

    def periodic(self) -> list[Path]:
        """The periodic checkpoints, oldest first."""
        if not self.path.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.path.iterdir() if (m := self.PERIODIC.match(p.name))]
        return [p for _, p in sorted(found)]

    def write(self, checkpoint: Checkpoint, *names: str) -> None:
        """Serialise ``checkpoint`` once per name (atomically), then prune the periodic ones beyond ``keep``."""
        state = checkpoint.to_state()
        for name in names:
            save_checkpoint(self.path / name, state)
        periodic = self.periodic()
        if self.keep is not None and len(periodic) > self.keep:
            for old in periodic[: len(periodic) - self.keep]:
                old.unlink(missing_ok=True)
