"""An exported model (``.onnx`` through onnxruntime, OpenVINO ``.xml``) called like ``FasterRCNN`` in eval mode.

    model = load_exported("model.onnx")
    model([image])  # -> [{"boxes" [D, 4], "labels" [D], "scores" [D]}], as the eager model

``Detector.from_checkpoint("model.onnx")`` wraps one, so ``predict``, ``eval`` and ``serve`` take an
exported file as ``--weights``. The graph runs on the CPU in float32 (OpenVINO's precision hint is
set to f32, not its bf16 default, so the detections are those of the eager model).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from fasterrcnn.errors import DataError

__all__ = ["EXPORTED_SUFFIXES", "ExportedModel", "load_exported"]

EXPORTED_SUFFIXES = (".onnx", ".xml")


class ExportedModel(nn.Module):
    """``forward(images: list of Tensor[3, H, W]) -> list of {"boxes", "labels", "scores"}`` by one
    runtime call per image. ``num_classes``, ``class_names``, ``config`` (a dict) and ``transform``
    (``min_size`` / ``max_size``, for ``Detector``'s reduced decoding) come from the file's metadata.
    ``to`` and ``eval`` / ``train`` are accepted (the runtime stays on the CPU; outputs are moved
    to the input's device)."""

    def __init__(self, run, meta: dict[str, str], path: Path):
        super().__init__()
        self._run = run
        self.path = path
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
        return f"{self.path.name}, {self.num_classes} classes"


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """The runtime model of an exported file: ``.onnx`` (onnxruntime) or ``.xml`` (OpenVINO, float32).

    Raises DataError naming the file when it is missing, not loadable, or lacks the class names.
    """
    from fasterrcnn.deploy.metadata import read_metadata

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such file")
    try:
        meta = read_metadata(path)
        if path.suffix == ".xml":
            import openvino as ov

            config = {"INFERENCE_PRECISION_HINT": "f32"}
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
    except ImportError as e:
        raise DataError(path, f"the runtime is not installed ({e.name}); pip install 'fasterrcnn[deploy]'") from None
    except Exception as e:  # the runtimes raise their own error types for a bad file
        raise DataError(path, f"not a loadable exported model ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if "class_names" not in meta:
        raise DataError(path, "no class_names in the file's metadata (not written by fasterrcnn export)")
    return ExportedModel(run, meta, path)
