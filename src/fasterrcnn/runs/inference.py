"""``evaluate`` and ``compress``: what ``fasterrcnn eval`` and ``compress`` do, from Python (``predict``: ``runs.prediction``).

    from fasterrcnn.runs import evaluate
    result = evaluate("VOCdevkit/VOC2007", weights="runs/voc07/checkpoints/best.pt", output="runs/voc07/eval")
    print(result.metrics["mAP"])

Outputs are claimed before the work starts (``runs.folder.OutputFolder``): an existing output file is
refused unless ``overwrite``, an input is never written over, an unwritable folder fails at once, an output
name that is a folder is refused, and ``eval``'s folder may not lie among the images of a YOLO split (read
recursively, its pictures would be scored by the next evaluation). ``compress`` never replaces its weights.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fasterrcnn.config import check_score_threshold
from fasterrcnn.data.bad_images import check_policy
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.io import atomic_write_text
from fasterrcnn.paths import check_output_file
from fasterrcnn.runs.folder import OutputFolder

if TYPE_CHECKING:
    from fasterrcnn.detector import Detection, Detector
    from fasterrcnn.engine.report import EvaluationReport

__all__ = ["EvalResult", "compress", "evaluate", "load_detector"]

logger = logging.getLogger("fasterrcnn")


@dataclass(frozen=True)
class EvalResult:
    """``metrics``: the evaluator's dict (``mAP`` or ``AP``, ``per_class``, ...); ``metric``: which one;
    ``num_images`` scored; ``skipped``: bad images left out; ``output``: the folder written (or None);
    ``report``: the confusion matrix, per-class table and samples (``engine.report``; None off rank 0);
    ``split``: the data it scored (VOC / YOLO split, or the COCO file's name); ``files``: the files it wrote."""

    metrics: dict[str, Any]
    metric: str
    num_images: int
    skipped: int
    output: Path | None
    report: EvaluationReport | None = None
    split: str = ""
    files: tuple[Path, ...] = ()

    def __repr__(self) -> str:
        # short: the metrics hold the precision / recall curves of every class
        from fasterrcnn.engine.evaluator import headline

        score = "no metrics"
        if self.metrics:
            name, value = headline(self.metrics)
            score = f"{name}={value:.4f} ({self.metric})"
        output = "" if self.output is None else f", output={str(self.output)!r}"
        return f"EvalResult({score} on {self.split or '?'}, {self.num_images} images{output})"


def load_detector(weights, *, device, precision="auto", preset=None, classes=None) -> Detector:
    """A Detector from a Detector, a checkpoint or exported file, or (with ``preset``) a torchvision detection file,
    in ``precision`` (``device.resolve_precision``; a Detector given keeps its own)."""
    from fasterrcnn.detector import Detector

    if isinstance(weights, Detector):
        return weights
    if preset is not None:
        return Detector.from_torchvision(preset, weights, classes="coco" if classes is None else classes, device=device, precision=precision)
    if classes is not None:
        raise ConfigError("classes go with a torchvision file (preset=...): a checkpoint written by 'fasterrcnn train' holds its class names")
    return Detector.from_checkpoint(weights, device=device, precision=precision)


def evaluate(
    data: str | Path,
    *,
    weights: str | Path | Detector | None = None,
    detections: str | Path | None = None,
    output: str | Path | None = None,
    overwrite: bool = False,
    split: str | None = None,
    images: str | Path | None = None,
    classes: list[str] | None = None,
    metric: str | None = None,
    batch_size: int = 1,
    device: str = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    on_bad_image: str = "skip",
    quiet: bool = False,
    score_threshold: float = 0.5,
    slice: int | None = None,
    overlap: float = 0.2,
    full_image: bool = True,
    tta: bool = False,
) -> EvalResult:
    """Score a checkpoint (``weights``: a path or a ``Detector``) or a COCO results file (``detections``) on ``data``.

    ``split``: of a VOC root or a YOLO data.yaml (default: VOC ``test``, YOLO ``val``, as training validates).
    With ``output``, writes ``metrics.json``, ``pr_curves.png``, ``confusion_matrix.png`` / ``.csv`` and
    ``per_class.csv`` there, and with ``weights`` ``detections.json`` and ``samples.jpg`` (ground truth |
    predictions). The confusion matrix and the per-class precision / recall count the detections scoring
    ``>= score_threshold`` (``engine/report.py``). Started by torchrun, the processes share the images and
    rank 0 scores and writes. ``precision``: the checkpoint's (``Detector``), recorded in ``metrics.json``.

    ``slice`` / ``overlap`` / ``full_image`` / ``tta``: sliced inference and test-time augmentation, as
    ``Detector.detect`` (``fasterrcnn.inference``); with ``slice`` the images are decoded at full resolution.
    """
    from fasterrcnn.data import build_dataset, evaluation_split, split_name
    from fasterrcnn.data.yolo import split_folders
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.evaluator import evaluate_model, evaluate_results, headline
    from fasterrcnn.engine.logging import json_safe
    from fasterrcnn.engine.report import NUM_SAMPLES, REPORT_FILES, build_report
    from fasterrcnn.evaluation import load_results, save_results
    from fasterrcnn.evaluation.plots import plot_pr_curves

    if (weights is None) == (detections is None):
        raise ConfigError("evaluate a checkpoint (weights) or a results file (detections): give one of them")
    from fasterrcnn.inference import InferenceOptions

    check_policy(on_bad_image)
    check_score_threshold(score_threshold)
    inference = InferenceOptions(slice=slice, overlap=overlap, full_image=full_image, tta=tta)
    if weights is None and not inference.plain:
        raise ConfigError("slice and tta are ways to run a checkpoint: they go with weights, not with a detections file")
    split = evaluation_split(data, split) or "test"  # a COCO JSON is its own split
    folder = OutputFolder(output) if output is not None else None
    device = distributed.init_distributed(device)  # torchrun: this process's device, process group joined
    main = distributed.is_main_process()
    written = ["metrics.json", "pr_curves.png", *REPORT_FILES, *(["detections.json"] if weights is not None else [])]
    written = [name for name in written if weights is not None or name != "samples.jpg"]  # samples need the images
    if folder is not None and main:  # before the long work; never among a YOLO split's images (read recursively)
        folder.claim(written, overwrite=overwrite, input_folders=split_folders(data, split))
    if weights is not None:
        detector = load_detector(weights, device=device, precision=precision)
        if classes is not None and list(classes) != list(detector.class_names):
            raise ConfigError(f"classes differ from the checkpoint's classes ({', '.join(detector.class_names)})")
        transform = getattr(detector.model, "transform", None)  # a huge image is decoded reduced to about its input size
        reduce_to = None if transform is None or slice is not None else (transform.min_size, transform.max_size)
        dataset = build_dataset(
            data, split=split, images_dir=images, classes=list(detector.class_names), on_bad_image=on_bad_image, reduce_to=reduce_to
        )  # fmt: skip
        metric = metric or dataset.default_metric
        results, metrics = evaluate_model(
            detector.model, dataset, metric=metric, class_names=detector.class_names,
            label_to_category_id=dataset.label_to_category_id, batch_size=batch_size, num_workers=num_workers,
            device=detector.device, progress=not quiet, amp_dtype=detector.amp_dtype, inference=inference,
        )  # fmt: skip
        source = {"weights": repr(weights) if weights is detector else str(weights), "precision": detector.precision}
        if not inference.plain:
            source["inference"] = {"slice": slice, "overlap": overlap, "full_image": full_image, "tta": tta}
    else:
        if not main:
            return EvalResult({}, metric or "", 0, 0, None)  # scoring a results file is rank 0's alone
        results = load_results(detections)
        dataset = build_dataset(data, split=split, images_dir=images, classes=classes, on_bad_image=on_bad_image)
        metric = metric or dataset.default_metric
        try:
            metrics = evaluate_results(results, dataset, metric=metric)
        except ValueError as e:
            hint = "" if classes or dataset.label_to_category_id is not None else "; --classes gives the class list of the category ids"
            raise DataError(detections, f"does not fit {data} ({e}){hint}") from None
        source = {"detections": str(detections)}
    report = None
    if main:  # samples need the images, which a results file's data set may not have
        num_samples = NUM_SAMPLES if weights is not None else 0
        report = build_report(results, dataset, metrics, class_names=dataset.classes, score_threshold=score_threshold, num_samples=num_samples)
    files = tuple(folder.path / name for name in written) if folder is not None and main else ()
    result = EvalResult(metrics, metric, len(dataset), len(dataset.skipped), folder.path if folder else None, report, split_name(dataset), files)
    if folder is None or not main:
        return result
    report.write(folder.path)
    if weights is not None:
        save_results(folder.path / "detections.json", results)
    name, value = headline(metrics)
    record = {
        **json_safe({k: v for k, v in metrics.items() if k not in ("pr_curves", "summary")}), **json_safe(report.summary()),
        "metric": metric, **source, "data": dataset.describe(), "num_images": len(dataset),
    }  # fmt: skip
    atomic_write_text(folder.path / "metrics.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    plot_pr_curves(
        metrics.get("pr_curves", {}), folder.path / "pr_curves.png",
        title=f"{Path(data).name}: {name} {value:.4f} ({metric})", aps=metrics.get("per_class"),
    )  # fmt: skip
    return result


def compress(
    weights: str | Path, output: str | Path, *, ranks: tuple[int, int] = (1024, 256), overwrite: bool = False
) -> list[dict[str, Any]]:
    """Write ``output``: the checkpoint ``weights`` with the box head's fc6 / fc7 replaced by their truncated
    SVDs of ``ranks`` (``modeling.low_rank``). Returns per layer ``{"name", "in", "out", "rank", "error"}``
    (``error``: the relative Frobenius error of the weights). The trained checkpoint is never overwritten."""
    import dataclasses

    import torch

    from fasterrcnn.engine.checkpoint import Checkpoint
    from fasterrcnn.modeling.low_rank import BOX_HEAD_LAYERS, compress_box_head

    output = Path(output)
    if output.resolve() == Path(weights).resolve():
        raise ConfigError("--output must differ from --weights (the trained checkpoint is kept)")
    check_output_file(output, overwrite=overwrite, inputs=[weights])  # not a folder, not the weights through a link
    checkpoint = Checkpoint.read(weights)
    model = checkpoint.build_model()
    box_head = model.roi_heads.box_head
    before = {name: getattr(box_head, name, None) for name in BOX_HEAD_LAYERS}
    compress_box_head(model, ranks)
    report = []
    for name, layer in before.items():
        low_rank = getattr(box_head, name)
        with torch.no_grad():
            error = (low_rank.expand.weight @ low_rank.reduce.weight - layer.weight).norm() / layer.weight.norm()
        report.append({"name": name, "in": layer.in_features, "out": layer.out_features, "rank": low_rank.rank, "error": float(error)})
    # model.config records the ranks, so the compressed checkpoint loads as any other; it cannot resume training
    compressed = dataclasses.replace(checkpoint, model=model.state_dict(), model_config=model.config, training={})
    compressed.write(output)
    return report
