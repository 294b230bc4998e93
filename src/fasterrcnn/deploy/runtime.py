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

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from fasterrcnn.errors import ConfigError, DataError

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel", "load_exported"]

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
        self.class_names = tuple(json.loads(meta["class_names"]))
        self.config = json.loads(meta.get("config", "{}"))
        self.num_classes = len(self.class_names)
        self.transform = SimpleNamespace(min_size=self.config.get("min_size"), max_size=self.config.get("max_size"))

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        outputs = []
        for image in images:
            boxes, labels, scores = self._run(image.detach().float().cpu().contiguous().numpy())
            outputs.append({
                "boxes": torch.from_numpy(boxes).to(image.device),
                "labels": torch.from_numpy(labels).to(torch.int64).to(image.device),
                "scores": torch.from_numpy(scores).to(image.device),
            })
        return outputs

    def extra_repr(self) -> str:
        return f"{self.path.name}, {self.num_classes} classes, {self.precision}"


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
    from fasterrcnn.deploy.export import read_metadata

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        meta = read_metadata(path)
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
    except Exception as e:  # the runtimes raise their own error types for a bad file
        raise DataError(path, f"not a loadable exported model ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if "class_names" not in meta:
        raise DataError(path, "no class_names in the file's metadata (not written by fasterrcnn export)")
    return ExportedModel(run, meta, path, precision)
