"""Export a model to ONNX or OpenVINO IR: one graph from an image to its detections.

    export_model(model, "model.onnx", class_names)                        # ONNX, opset 17
    export_model(model, "model.xml", class_names, format="openvino")      # + model.bin

(A checkpoint's model: ``fasterrcnn.runs.export`` in ``runs/exporting.py``, which the ``export`` command calls.)

The graph (``deploy.graph.DeployGraph``, traced by ``torch.onnx.export(dynamo=False)``):

- input ``image``: float32 [3, H, W], RGB in [0, 1], any H and W (dynamic axes); the graph resizes it
  (``min_size`` / ``max_size``), normalizes and pads it as the model's transform does;
- outputs ``boxes`` float32 [D, 4] ``(x1, y1, x2, y2)`` in pixels of the input image, ``labels`` int64
  [D] in 1..C, ``scores`` float32 [D], by decreasing score, D <= ``box_detections_per_img``;
- operators: standard ONNX (opset 17) only: NonMaxSuppression, RoiAlign / MaxRoiPool, TopK, Resize;
- metadata (``deploy.metadata``: ONNX ``metadata_props``, OpenVINO ``rt_info`` under ``fasterrcnn``):
  ``class_names`` (JSON list, ``class_names[label - 1]``), ``config`` (the ModelConfig as JSON), ``format_version``,
  and ``precision`` ``"int8"`` in an int8 file.

The model's BatchNorm is folded into its convolutions first (``modeling.fuse``).

int8 (``export_model(..., calibration=images)``, OpenVINO only): NNCF's post-training quantization of the
layers where the time goes: the backbone (with its FPN: every node under ``/backbone/``), the RPN head's 3x3
convolution (``/head/conv/``, run on every feature level) and the box head's hidden layers (``/box_head/``:
fc6 / fc7, or res5 of the C4 presets, run on every proposal), their weights to int8 and int8 activations at
their inputs (the first one: the padded image), from the statistics of the calibration images. Everything
else stays float: resizing and normalization, the RPN's objectness and box-delta layers, anchor decoding,
proposal selection, NMS, RoI pooling, the box predictor (class scores and box deltas) and the detections'
decoding (quantizing the whole graph gives a model OpenVINO refuses to compile, and int8 scores and box
deltas would move the detections most). It stays one file, loaded like any other.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fasterrcnn.deploy.metadata import METADATA_SECTION, metadata, read_metadata
from fasterrcnn.errors import ConfigError
from fasterrcnn.io import atomic_write_bytes

__all__ = ["EXPORT_FORMATS", "INT8_MISSING", "OPSET", "export_files", "export_model", "onnx_to_openvino"]

EXPORT_FORMATS = ("onnx", "openvino")
OPSET = 17
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "labels", "scores"]
QUANTIZED_SCOPE = r"^/(backbone|head/conv|box_head)/"  # the traced names of the nodes NNCF quantizes (module docstring)
INT8_MISSING = "int8 export needs NNCF: pip install 'fasterrcnn[int8]'"


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


def export_model(
    model, path: str | Path, class_names: Sequence[str], *, format: str = "onnx", opset: int = OPSET, calibration: Sequence[torch.Tensor] | None = None
) -> list[Path]:
    """Write ``model`` (a FasterRCNN; a copy is exported, the model is not changed) to ``path``.

    format "onnx": ``path`` (``.onnx``); "openvino": ``path`` (``.xml``) and its weights beside it
    (``.bin``), float32 weights, or with ``calibration`` (images ``Tensor[3, H, W]`` RGB in [0, 1]) the
    int8 model quantized on them (module docstring; needs NNCF). Returns the files written (atomically).
    """
    import copy

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    path = Path(path)
    if calibration is not None:
        if format != "openvino":
            raise ConfigError(f"an int8 model is written as OpenVINO IR (NAME.xml), got {path}")
        if not calibration:
            raise ConfigError("int8 quantization needs at least one calibration image")
        try:
            import nncf  # noqa: F401
        except ImportError:
            raise ConfigError(INT8_MISSING) from None
    model = copy.deepcopy(model).float().cpu().eval()
    data = onnx_bytes(model, class_names, opset)
    if format == "onnx":
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return [path]
    return _write_openvino(data, path, metadata(model, class_names), calibration)


def quantize(ov_model, calibration: Sequence[torch.Tensor]):
    """The int8 ``ov.Model`` of ``ov_model`` (an exported graph): NNCF post-training quantization of the nodes
    under ``QUANTIZED_SCOPE`` on ``calibration`` (images ``Tensor[3, H, W]``), every other node left float."""
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)  # NNCF lists every node it leaves out at INFO
    dataset = nncf.Dataset([image.detach().float().cpu().contiguous().numpy() for image in calibration], lambda image: {"image": image})
    ignored = nncf.IgnoredScope(patterns=[f"^(?!{QUANTIZED_SCOPE.removeprefix('^')}).*"], validate=False)
    return nncf.quantize(ov_model, dataset, subset_size=len(calibration), ignored_scope=ignored)


def _write_openvino(onnx_data: bytes, path: Path, meta: dict[str, str], calibration: Sequence[torch.Tensor] | None = None) -> list[Path]:
    import tempfile

    import openvino as ov

    if path.suffix != ".xml":
        raise ConfigError(f"an OpenVINO model is written as NAME.xml (+ NAME.bin), got {path}")
    ov_model = ov.Core().read_model(onnx_data, b"")  # ONNX bytes (weights inside) -> ov.Model
    if calibration is not None:
        ov_model = quantize(ov_model, calibration)
        meta = {**meta, "precision": "int8"}
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
