"""Export a model to ONNX or OpenVINO IR: one graph from an image to its detections.

    export_model(model, "model.onnx", class_names)                        # ONNX, opset 17
    export_model(model, "model.xml", class_names, format="openvino")      # + model.bin

(A checkpoint's model: ``fasterrcnn.runs.export``, which the ``export`` command calls.)

The graph (``deploy.graph.DeployGraph``, traced by ``torch.onnx.export(dynamo=False)``):

- input ``image``: float32 [3, H, W], RGB in [0, 1], any H and W (dynamic axes); the graph resizes it
  (``min_size`` / ``max_size``), normalizes and pads it as the model's transform does;
- outputs ``boxes`` float32 [D, 4] ``(x1, y1, x2, y2)`` in pixels of the input image, ``labels`` int64
  [D] in 1..C, ``scores`` float32 [D], by decreasing score, D <= ``box_detections_per_img``;
- operators: standard ONNX (opset 17) only: NonMaxSuppression, RoiAlign / MaxRoiPool, TopK, Resize;
- metadata (``deploy.metadata``: ONNX ``metadata_props``, OpenVINO ``rt_info`` under ``fasterrcnn``):
  ``class_names`` (JSON list, ``class_names[label - 1]``), ``config`` (the ModelConfig as JSON), ``format_version``.

The model's BatchNorm is folded into its convolutions first (``modeling.fuse``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fasterrcnn.errors import ConfigError
from fasterrcnn.deploy.metadata import METADATA_SECTION, metadata, read_metadata
from fasterrcnn.io import atomic_write_bytes

__all__ = ["EXPORT_FORMATS", "OPSET", "export_files", "export_model", "onnx_to_openvino"]

EXPORT_FORMATS = ("onnx", "openvino")
OPSET = 17
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "labels", "scores"]


def _example_image(model) -> torch.Tensor:
    """A fixed random image (the trace's example; its size and content do not enter the graph)."""
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, model.transform.min_size * 3 // 4, model.transform.min_size, generator=g)


def onnx_bytes(model, class_names: Sequence[str], opset: int = OPSET) -> bytes:
    """The serialized ONNX model of ``model`` (a FasterRCNN, eval mode, float32, CPU) with its metadata."""
    import onnx

    from fasterrcnn.deploy.graph import DeployGraph
    from fasterrcnn.modeling.fuse import fuse_batchnorm

    if len(class_names) != model.num_classes:
        raise ConfigError(f"the model has {model.num_classes} classes but {len(class_names)} class names were given")
    graph = DeployGraph(fuse_batchnorm(model)).eval()
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: checked by the parity tests
        torch.onnx.export(
            graph, (_example_image(model),), buffer, dynamo=False, opset_version=opset,
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"}, "labels": {0: "detections"}, "scores": {0: "detections"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    # The tracer records the example's sizes on intermediate values; the graph's sizes are dynamic.
    del proto.graph.value_info[:]
    for key, value in metadata(model, class_names).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fasterrcnn"
    return proto.SerializeToString()


def export_model(model, path: str | Path, class_names: Sequence[str], *, format: str = "onnx", opset: int = OPSET) -> list[Path]:
    """Write ``model`` (a FasterRCNN; a copy is exported, the model is not changed) to ``path``.

    format "onnx": ``path`` (``.onnx``); "openvino": ``path`` (``.xml``) and its weights beside it
    (``.bin``), float32 weights. Returns the files written (atomically).
    """
    import copy

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    path = Path(path)
    model = copy.deepcopy(model).float().cpu().eval()
    data = onnx_bytes(model, class_names, opset)
    if format == "onnx":
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return [path]
    return _write_openvino(data, path, metadata(model, class_names))


def _write_openvino(onnx_data: bytes, path: Path, meta: dict[str, str]) -> list[Path]:
    import tempfile

    import openvino as ov

    if path.suffix != ".xml":
        raise ConfigError(f"an OpenVINO model is written as NAME.xml (+ NAME.bin), got {path}")
    ov_model = ov.Core().read_model(onnx_data, b"")  # ONNX bytes (weights inside) -> ov.Model
    for key, value in meta.items():
        ov_model.set_rt_info(value, [METADATA_SECTION, key])
    path.parent.mkdir(parents=True, exist_ok=True)
    bin_path = path.with_suffix(".bin")
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_xml = Path(tmp) / path.name
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)  # float32 weights, as exported
        tmp_xml.with_suffix(".bin").replace(bin_path)  # the weights first: an .xml is never left without them
        tmp_xml.replace(path)
    return [path, bin_path]


def onnx_to_openvino(onnx_path: str | Path, path: str | Path) -> list[Path]:
    """Write the OpenVINO IR (``path``, ``.xml`` + ``.bin``) of an ``.onnx`` file this module exported, with its
    metadata: the same graph as ``export_model(..., format="openvino")`` without tracing the model again."""
    onnx_path = Path(onnx_path)
    return _write_openvino(onnx_path.read_bytes(), Path(path), read_metadata(onnx_path))


def export_files(path: str | Path, format: str | None = None) -> tuple[str, list[Path]]:
    """The format (``format``, or from ``path``'s suffix: ``.xml`` is openvino, anything else onnx) and the
    files an export to ``path`` writes: ``[path]``, or ``[path, path.bin]`` for OpenVINO IR."""
    path = Path(path)
    format = format or ("openvino" if path.suffix == ".xml" else "onnx")
    return format, [path, path.with_suffix(".bin")] if format == "openvino" else [path]
