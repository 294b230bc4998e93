"""``export``: what ``fasterrcnn export`` does, from Python: a checkpoint to ONNX, OpenVINO IR, or int8 OpenVINO IR.

    from fasterrcnn.runs import export
    export("runs/x/checkpoints/best.pt", "model.onnx")
    result = export("best.pt", "model_int8.xml", int8=True, calibration="VOCdevkit/VOC2007")
    print(result.map_f32, result.map_int8)     # on the calibration data's test split (or val_data)

The graph and its files: ``deploy.export``. An int8 export quantizes the backbone on ``calibration_images``
images of ``calibration`` (its ``calibration_split``, evenly spaced), then evaluates the checkpoint (float32,
eager: the exported float32 graph gives its detections) and the int8 file on held-out data (``val_data``,
default the calibration data, ``val_split``), so the accuracy int8 costs is measured, not assumed.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from fasterrcnn.errors import ConfigError
from fasterrcnn.paths import check_output_file

__all__ = ["CALIBRATION_IMAGES", "ExportResult", "export", "require_exporter"]

logger = logging.getLogger("fasterrcnn")

CALIBRATION_IMAGES = 300  # NNCF's default subset size: more rarely changes the ranges
# The packages an export to each format imports (the ``deploy`` extra installs them).
EXPORTER_PACKAGES = {"onnx": ("onnx",), "openvino": ("onnx", "openvino")}


def require_exporter(format: str) -> None:
    """Raise ConfigError (one line, with the install command) when a package the export needs is missing."""
    for name in EXPORTER_PACKAGES.get(format, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"exporting to {format} needs the {name} package, which is not installed; pip install 'fasterrcnn[deploy]'") from None


@dataclass(frozen=True)
class ExportResult:
    """``files`` written, ``seconds`` the export took; for int8, the held-out ``metric`` (mAP or AP) of the
    checkpoint in float32 (``map_f32``) and of the int8 file (``map_int8``), on ``val_images`` images."""

    files: list[Path]
    seconds: float
    metric: str | None = None
    map_f32: float | None = None
    map_int8: float | None = None
    val_images: int = 0


def export(
    weights: str | Path,
    output: str | Path,
    *,
    format: str | None = None,
    overwrite: bool = False,
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_split: str = "train",
    calibration_images: int = CALIBRATION_IMAGES,
    val_data: str | Path | None = None,
    val_split: str = "test",
    metric: str | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Write the checkpoint ``weights`` to ``output`` (``deploy.export.export_files``: ``.onnx``, or ``.xml`` +
    ``.bin``); existing files only with ``overwrite``. ``int8``: the OpenVINO int8 model, quantized on images of
    ``calibration`` (a VOC root or COCO JSON; required) and scored against float32 on the held-out data."""
    from fasterrcnn.data import build_dataset
    from fasterrcnn.deploy.export import export_files, export_model
    from fasterrcnn.detector import Detector
    from fasterrcnn.engine.evaluator import evaluate_model, headline

    format, files = export_files(output, format)
    for path in files:  # before the work: never the checkpoint exported (NAME.bin beside NAME.xml included), never a folder
        check_output_file(path, overwrite=True, inputs=[weights])
    existing = [str(path) for path in files if os.path.lexists(path)]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(f"{' and '.join(existing)} {verb}; pass --overwrite to replace or choose another --output")
    if int8 and calibration is None:
        raise ConfigError("--int8 needs --calibration DATA: images of your data to quantize on (e.g. the training set)")
    if not int8 and (calibration is not None or val_data is not None):
        raise ConfigError("--calibration and --val-data go with --int8")
    if int8 and format != "openvino":
        raise ConfigError(f"an int8 model is written as OpenVINO IR: --output NAME.xml, got {output}")
    if int8 and (isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1):
        raise ConfigError(f"calibration_images must be a whole number >= 1, got {calibration_images!r}")
    require_exporter(format)
    detector = Detector.from_checkpoint(weights, device="cpu", precision="f32", fuse=False, prepack=False)  # traced as it is
    start = time.perf_counter()
    if not int8:
        written = export_model(detector.model, output, detector.class_names, format=format)
        return ExportResult(written, time.perf_counter() - start)
    transform = detector.model.transform
    reduce_to = (transform.min_size, transform.max_size)
    classes = list(detector.class_names)
    source = build_dataset(calibration, split=calibration_split, classes=classes, reduce_to=reduce_to)
    held_out = build_dataset(val_data or calibration, split=val_split, classes=classes, reduce_to=reduce_to)  # before the long work
    count = min(calibration_images, len(source))
    indices = [i * len(source) // count for i in range(count)]  # evenly spaced over the split
    if not quiet:
        print(f"quantizing the backbone, the RPN's 3x3 convolution and the box head on {count} images of {calibration} ({calibration_split})", flush=True)
    written = export_model(detector.model, output, detector.class_names, format=format, calibration=[source[i][0] for i in indices])
    seconds = time.perf_counter() - start
    metric = metric or held_out.default_metric
    scores = {}
    for name, model in (("f32", Detector(detector.model, classes, device="cpu", precision="f32")), ("int8", Detector.from_checkpoint(written[0]))):
        _, metrics = evaluate_model(
            model.model, held_out, metric=metric, class_names=classes, label_to_category_id=held_out.label_to_category_id, shard=False
        )  # fmt: skip
        scores[name] = headline(metrics)[1]
    return ExportResult(written, seconds, metric, scores["f32"], scores["int8"], len(held_out))
