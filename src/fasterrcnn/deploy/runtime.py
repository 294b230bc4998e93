"""An exported model (``.onnx`` through onnxruntime, OpenVINO ``.xml``) called like ``FasterRCNN`` in eval mode.

    model = load_exported("model.onnx")
    model([image])  # -> [{"boxes" [D, 4], "labels" [D], "scores" [D]}], as the eager model

``Detector.from_checkpoint("model.onnx")`` wraps one, so ``predict``, ``eval`` and ``serve`` take an
exported file as ``--weights``. The graph runs on the CPU. Its precision (``load_exported``): onnxruntime
runs float32; OpenVINO runs its ``INFERENCE_PRECISION_HINT``, f32 (the eager model's detections) or bf16
(``precision="auto"`` on a CPU with bf16 instructions: ``device.bf16_support``); a file written by
``fasterrcnn export --int8`` (its metadata ``precision`` is ``"int8"``) runs its quantized backbone in int8
and the rest in f32.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.reading import JSONError, check_regular_file, loads_json

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel", "ModelOutputError", "load_exported"]

EXPORTED_SUFFIXES = (".onnx", ".xml")


class ExportedModel(nn.Module):
    """``forward(images: list of Tensor[3, H, W]) -> list of {"boxes", "labels", "scores"}`` by one
    runtime call per image. ``num_classes``, ``class_names``, ``config`` (a dict) and ``transform``
    (``min_size`` / ``max_size``, for ``Detector``'s reduced decoding) come from the file's metadata.
    ``to`` and ``eval`` / ``train`` are accepted (the runtime stays on the CPU; outputs are moved
    to the input's device). ``precision``: what the runtime computes in, "f32", "bf16" or "int8"."""

    def __init__(self, run, meta: dict[str, str], path: Path, precision: str = "f32"):
        super().__init__()
        self._run = run
        self.path = path
        self.precision = precision
        self.class_names, self.config = _checked_metadata(meta, path)
        self.num_classes = len(self.class_names)
        self.transform = SimpleNamespace(min_size=self.config["min_size"], max_size=self.config["max_size"])

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        outputs = []
        for image in images:
            boxes, labels, scores = _checked_outputs(self._run(image.detach().float().cpu().contiguous().numpy()), self.num_classes, self.path)
            outputs.append({"boxes": boxes.to(image.device), "labels": labels.to(image.device), "scores": scores.to(image.device)})
        return outputs

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.num_classes} classes, {self.precision}"


class ModelOutputError(DataError):
    """An exported graph answered what no graph of ``fasterrcnn export`` answers (the file's fault, not the image's)."""


def _checked_metadata(meta: dict[str, str], path: Path) -> tuple[tuple[str, ...], dict[str, Any]]:
    """``(class_names, config)`` from an exported file's metadata; DataError naming ``path`` for anything
    ``fasterrcnn export`` does not write: class_names not a JSON list of names, config not a JSON mapping
    with the input size (``min_size`` <= ``max_size``, whole numbers in [1, MAX_IMAGE_SIDE])."""
    from fasterrcnn.config import MAX_IMAGE_SIDE

    def parsed(key: str):
        if key not in meta:
            raise DataError(path, f"no {key} in the file's metadata (not written by fasterrcnn export)")
        try:
            return loads_json(meta[key])
        except JSONError as e:
            raise DataError(path, f"the metadata's {key} is {e.problem}") from None

    names = parsed("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(name, str) and name for name in names):
        raise DataError(path, "the metadata's class_names is not a list of class names")
    config = parsed("config")
    if not isinstance(config, dict):
        raise DataError(path, f"the metadata's config is a {type(config).__name__}, expected a mapping of model fields")
    sizes = [config.get("min_size"), config.get("max_size")]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE for v in sizes) or sizes[0] > sizes[1]:
        raise DataError(path, f"the metadata's config has min_size {sizes[0]!r} and max_size {sizes[1]!r}, expected whole numbers 1 <= min_size <= max_size <= {MAX_IMAGE_SIDE}")
    return tuple(names), config


def _checked_outputs(outputs, num_classes: int, path: Path) -> tuple[Tensor, Tensor, Tensor]:
    """The graph's ``(boxes [D, 4] float32, labels [D] int64 in 1..C, scores [D] float32)``; ModelOutputError otherwise."""
    import numpy as np

    if len(outputs) != 3 or not all(isinstance(o, np.ndarray) for o in outputs):
        raise ModelOutputError(path, f"the graph answered {len(outputs)} outputs, expected boxes, labels and scores")
    boxes, labels, scores = outputs
    count = boxes.shape[0] if boxes.ndim == 2 else -1
    if boxes.shape != (count, 4) or labels.shape != (count,) or scores.shape != (count,):
        raise ModelOutputError(path, f"the graph answered shapes {list(boxes.shape)}, {list(labels.shape)}, {list(scores.shape)}, expected [D, 4], [D], [D]")
    if not np.issubdtype(labels.dtype, np.integer) or not (np.issubdtype(boxes.dtype, np.floating) and np.issubdtype(scores.dtype, np.floating)):
        raise ModelOutputError(path, f"the graph answered {boxes.dtype} boxes, {labels.dtype} labels and {scores.dtype} scores")
    if count and (labels.min() < 1 or labels.max() > num_classes):
        raise ModelOutputError(path, f"the graph answered labels {labels.min()}..{labels.max()}, outside 1..{num_classes} (its {num_classes} classes)")
    return torch.from_numpy(boxes).float(), torch.from_numpy(labels).to(torch.int64), torch.from_numpy(scores).float()


def exported_precision(path: Path, file_precision: str, precision: str) -> str:
    """The precision an exported file runs in: ``precision`` asked (``device.PRECISIONS``) of a file whose metadata
    says ``file_precision`` ("f32", or "int8" for ``export --int8``). Raises ConfigError for one it cannot run."""
    from fasterrcnn.device import PRECISIONS, resolve_precision

    if precision not in PRECISIONS:
        raise ConfigError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
    if file_precision == "int8" or precision == "int8":
        if file_precision != precision and precision != "auto":
            quantized = "an int8 model: run it with precision int8 or auto" if file_precision == "int8" else "not an int8 model; write one with 'fasterrcnn export --int8'"
            raise ConfigError(f"{path} is {quantized}")
        return "int8"
    if path.suffix != ".xml":
        if precision not in ("auto", "f32"):
            raise ConfigError(f"{path}: onnxruntime runs float32 only; precision {precision} needs an OpenVINO .xml or a checkpoint")
        return "f32"
    if precision == "fp16":
        raise ConfigError(f"{path}: OpenVINO on the CPU runs f32, bf16 or int8, not fp16")
    return resolve_precision(precision, torch.device("cpu"))


def load_exported(path: str | Path, threads: int | None = None, precision: str = "f32") -> ExportedModel:
    """The runtime model of an exported file: ``.onnx`` (onnxruntime, f32) or ``.xml`` (OpenVINO in ``precision``:
    f32, bf16, auto; an int8 file in int8; see ``exported_precision``).

    Raises DataError naming the file when it is missing, not loadable, or lacks the class names.
    """
    from fasterrcnn.deploy.metadata import read_metadata

    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such file")
    _check_exported_file(path)
    try:
        meta = read_metadata(path)
        _checked_metadata(meta, path)  # before the runtime compiles the graph
        precision = exported_precision(path, meta.get("precision", "f32"), precision)
        if path.suffix == ".xml":
            import openvino as ov

            config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
            if threads:
                config["INFERENCE_NUM_THREADS"] = threads
            compiled = ov.Core().compile_model(str(path), "CPU", config)

            def run(image):
                out = compiled({"image": image})
                return tuple(out[i] for i in range(3))
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            def run(image):
                return tuple(session.run(None, {"image": image}))
    except ConfigError:
        raise
    except ImportError as e:
        raise DataError(path, f"the runtime is not installed ({e.name}); pip install 'fasterrcnn[deploy]'") from None
    except DataError:
        raise
    except Exception as e:  # the runtimes raise their own error types for a bad file
        raise DataError(path, f"not a loadable exported model ({runtime_problem(e)})") from None
    return ExportedModel(run, meta, path, precision)


def runtime_problem(error: Exception) -> str:
    """A runtime's error in one line saying what is wrong: OpenVINO's errors start with "Exception from
    src/inference/src/cpp/core.cpp:84:" and name source lines ("Check '...' failed at ..."); those lines are left out."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Exception from ", "Check '", "[ GENERAL_ERROR ]")) and not line.endswith(":")]
    text = ": ".join(telling) or (lines or [type(error).__name__])[0]
    return text if len(text) <= 300 else text[:300] + "..."


ONNX_BYTES = 2**31  # a protobuf (an .onnx without external data) holds at most 2 GiB


def _check_exported_file(path: Path) -> None:
    """Refuse, before a runtime reads it, an exported file that ``fasterrcnn export`` cannot have written:
    not a regular file, an ONNX graph under an ``.xml`` name (or XML under ``.onnx``), an OpenVINO ``.xml``
    without its ``.bin``, an ``.onnx`` over 2 GiB (``read_metadata`` then refuses external data). DataError
    naming the file."""
    size = check_regular_file(path).st_size
    with open(path, "rb") as f:
        head = f.read(64)
    looks_xml = head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")
    if path.suffix == ".xml":
        if not looks_xml:
            kind = "an ONNX model: name it .onnx" if head[:1] == b"\x08" else "not XML"
            raise DataError(path, f"not an OpenVINO model file ({kind})")
        weights = path.with_suffix(".bin")
        if not weights.exists():
            raise DataError(path, f"its weights file {weights.name} is missing (an OpenVINO model is NAME.xml with NAME.bin)")
        check_regular_file(weights)
        return
    if looks_xml:
        raise DataError(path, "not an ONNX model (it is XML: an OpenVINO model is named NAME.xml)")
    if size > ONNX_BYTES:
        raise DataError(path, f"is {size / 2**30:.1f} GiB, more than an ONNX file holds (2 GiB)")
