"""What people look at after an evaluation: a confusion matrix, a per-class table and sample images.

``build_report`` turns an evaluation (the results list, the data set, the evaluator's metrics) into an
``EvaluationReport``; ``EvaluationReport.write`` writes ``REPORT_FILES`` into a folder:

    confusion_matrix.png, .csv   counts, rows true class, columns predicted, background last
                                 (matching rule: evaluation/confusion.py)
    per_class.csv                class, instances, detections, precision, recall, AP (COCO: AP, AP50)
    samples.jpg                  ground truth | predictions of the first NUM_SAMPLES images
    error_breakdown.png, .csv    TIDE's error breakdown: the AP fixing each error type would add, overall
                                 and per class (evaluation/tide.py)
    reliability.png              reliability diagram: precision against score per score bin, and the
                                 detection ECE (evaluation/calibration.py)

Precision and recall are those of the confusion matrix: detections scoring ``>= score_threshold``
(0.5, the detections ``predict`` draws), matched one-to-one to ground truth at IoU ``>= 0.5``.
AP is the evaluator's (VOC: AP@0.5 over all detections; COCO: AP@[.5:.95] and AP50). The error breakdown
and the calibration use every detection, matched at IoU 0.5 as COCO does (TIDE's AP is COCO's 101-point AP50).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fasterrcnn.evaluation.calibration import detection_outcomes, expected_calibration_error, reliability_bins
from fasterrcnn.evaluation.confusion import IOU_THRESHOLD, SCORE_THRESHOLD, confusion_matrix, per_class_counts
from fasterrcnn.evaluation.tide import ERROR_TYPES, ErrorBreakdown, error_breakdown
from fasterrcnn.io import atomic_save, atomic_write_text

__all__ = [
    "NUM_SAMPLES", "REPORT_FILES", "EvaluationReport", "build_report", "format_breakdown_table", "format_per_class_table", "per_class_rows",
]  # fmt: skip

REPORT_FILES = (
    "confusion_matrix.png", "confusion_matrix.csv", "per_class.csv", "samples.jpg", "error_breakdown.png", "error_breakdown.csv",
    "reliability.png",
)  # fmt: skip
NUM_SAMPLES = 6  # images in samples.jpg (and in TensorBoard): the data set's first ones, the same at every evaluation


def per_class_rows(metrics: Mapping[str, Any], matrix: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """The per-class table: ``per_class_counts`` of ``matrix`` plus ``AP`` (and ``AP50`` for COCO) from ``metrics``
    (NaN for a class without ground truth)."""
    aps = metrics.get("per_class", {})
    ap50s = metrics.get("per_class_ap50") if metrics.get("metric") == "coco" else None
    rows = []
    for row in per_class_counts(matrix, class_names):
        name = row["class"]
        row["AP"] = float(aps[name]) if name in aps else math.nan
        if ap50s is not None:
            row["AP50"] = float(ap50s[name]) if name in ap50s else math.nan
        rows.append(row)
    return rows


def _cell(value: Any, width: int) -> str:
    if isinstance(value, float):
        return f"{'-' if math.isnan(value) else f'{value:.4f}':>{width}}"
    return f"{value:>{width}}"


def format_per_class_table(rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any], score_threshold: float = SCORE_THRESHOLD) -> str:
    """A plain-text table of ``per_class_rows``, an ``all`` row (sums, and the headline AP), and how to read it."""
    coco = metrics.get("metric") == "coco"
    columns = ["instances", "detections", "precision", "recall", "AP@[.5:.95]" if coco else "AP@0.5", *(["AP50"] if coco else [])]
    keys = ["instances", "detections", "precision", "recall", "AP", *(["AP50"] if coco else [])]
    width = max([len("class")] + [len(str(r["class"])) for r in rows])
    instances, detections = sum(r["instances"] for r in rows), sum(r["detections"] for r in rows)
    tp = sum(r["true_positives"] for r in rows)
    total = {
        "class": "all", "instances": instances, "detections": detections,
        "precision": tp / detections if detections else math.nan, "recall": tp / instances if instances else math.nan,
        "AP": float(metrics["AP"] if coco else metrics["mAP"]), **({"AP50": float(metrics["AP50"])} if coco else {}),
    }  # fmt: skip
    widths = [max(len(c), 10) for c in columns]
    header = f"{'class':<{width}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths))
    rule = "-" * len(header)
    lines = [header, rule]
    for row in [*rows, None, total]:
        if row is None:
            lines.append(rule)
            continue
        lines.append(f"{row['class']:<{width}}  " + "  ".join(_cell(row[k], w) for k, w in zip(keys, widths)))
    lines.append(
        f"precision, recall: detections scoring >= {score_threshold:g}, matched at IoU >= {IOU_THRESHOLD:g}; "
        f"AP ({metrics.get('metric', 'voc')}): all detections; -: undefined"
    )
    return "\n".join(lines)


def format_breakdown_table(breakdown: ErrorBreakdown, ece: float) -> str:
    """TIDE's dAP per error type (overall), the dominant one, and the detection ECE, as plain text."""
    widths = [max(len(e), 7) for e in ERROR_TYPES]
    lines = [
        f"error breakdown (TIDE, AP50 {breakdown.ap:.4f}): AP added by fixing each error type",
        "  " + "  ".join(f"{e:>{w}}" for e, w in zip(ERROR_TYPES, widths)),
        "  " + "  ".join(f"{breakdown.delta_ap[e]:>{w}.4f}" for e, w in zip(ERROR_TYPES, widths)),
    ]
    dominant = breakdown.dominant()
    lines.append(f"dominant error: {dominant or 'none'}; detection ECE {'-' if math.isnan(ece) else f'{ece:.4f}'} (0: scores are precisions)")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvaluationReport:
    """An evaluation's confusion matrix [C+1, C+1], per-class rows (``per_class_rows``) and sample picture."""

    class_names: tuple[str, ...]
    metrics: Mapping[str, Any]
    matrix: np.ndarray
    rows: list[dict[str, Any]]
    samples: Any  # a PIL image, or None when the data set is empty
    score_threshold: float = SCORE_THRESHOLD
    breakdown: ErrorBreakdown | None = None
    reliability: list[dict[str, float]] | None = None  # calibration.reliability_bins
    ece: float = math.nan

    def table(self) -> str:
        table = format_per_class_table(self.rows, self.metrics, self.score_threshold)
        return table if self.breakdown is None else f"{table}\n\n{format_breakdown_table(self.breakdown, self.ece)}"

    def summary(self) -> dict[str, Any]:
        """What metrics.json records of the breakdown and the calibration: ``ece`` and ``error_breakdown``."""
        if self.breakdown is None:
            return {}
        return {"ece": self.ece, "error_breakdown": {"AP50": self.breakdown.ap, **self.breakdown.delta_ap}}

    def write(self, directory: str | Path) -> None:
        """Write ``REPORT_FILES`` into ``directory`` (atomically, each replacing an earlier one)."""
        from fasterrcnn.evaluation.plots import plot_confusion_matrix

        directory = Path(directory)
        labels = [*self.class_names, "background"]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["true \\ predicted", *labels])
        writer.writerows([name, *counts] for name, counts in zip(labels, self.matrix.tolist()))
        atomic_write_text(directory / "confusion_matrix.csv", buffer.getvalue())
        plot_confusion_matrix(
            self.matrix, labels, directory / "confusion_matrix.png",
            title=f"Confusion matrix (score >= {self.score_threshold:g}, IoU >= {IOU_THRESHOLD:g})",
        )  # fmt: skip
        atomic_write_text(directory / "per_class.csv", _rows_csv(self.rows))
        if self.samples is not None:
            atomic_save(directory / "samples.jpg", lambda f: self.samples.save(f, format="JPEG", quality=90))
        if self.breakdown is not None:
            from fasterrcnn.evaluation.plots import plot_error_breakdown, plot_reliability

            b = self.breakdown
            rows = [{"class": "all", "AP": b.ap, **b.delta_ap, **{f"{e}_count": b.counts[e] for e in ERROR_TYPES}}]
            rows += [{"class": name, **values} for name, values in b.per_class.items()]
            atomic_write_text(directory / "error_breakdown.csv", _rows_csv(rows))
            plot_error_breakdown(b.delta_ap, b.counts, directory / "error_breakdown.png", title=f"Error breakdown (TIDE; AP50 {b.ap:.3f})")
            plot_reliability(self.reliability, self.ece, directory / "reliability.png")


def _rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["class"], lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if math.isnan(v) else f"{v:.6g}") if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def build_report(
    results: Sequence[Mapping[str, Any]],
    dataset,
    metrics: Mapping[str, Any],
    *,
    class_names: Sequence[str],
    score_threshold: float = SCORE_THRESHOLD,
    num_samples: int = NUM_SAMPLES,
) -> EvaluationReport:
    """The report of ``results`` (a results list, dataset category ids) on ``dataset`` scored as ``metrics``."""
    from fasterrcnn.evaluation import results_to_detections

    to_label = {label: label for label in range(1, len(class_names) + 1)}  # VOC: the category id is the label
    if dataset.label_to_category_id is not None:  # COCO: the JSON's category ids
        to_label = {category_id: label for label, category_id in dataset.label_to_category_id.items()}
    results = [r for r in results if r["category_id"] in to_label]  # other ids are no class of ours (COCOeval ignores them too)
    detections = results_to_detections(results, to_label)
    ground_truth = dataset.ground_truth()  # built once for the three readings of it
    matrix = confusion_matrix(detections, ground_truth, len(class_names), score_threshold=score_threshold)
    samples = _samples(dataset, detections, class_names, score_threshold, num_samples)
    breakdown = error_breakdown(detections, ground_truth, class_names)
    scores, right, _ = detection_outcomes(detections, ground_truth)
    return EvaluationReport(
        tuple(class_names), dict(metrics), matrix, per_class_rows(metrics, matrix, class_names), samples, score_threshold,
        breakdown, reliability_bins(scores, right), expected_calibration_error(scores, right),
    )  # fmt: skip


def _samples(dataset, detections: Mapping[Any, Mapping[str, Any]], class_names, score_threshold: float, count: int):
    """Ground truth | predictions (scoring ``>= score_threshold``) of the data set's first ``count`` images."""
    from fasterrcnn.data.transforms import resize_boxes
    from fasterrcnn.visualize import compare_grid, draw_detections

    pairs = []
    for index in range(min(count, len(dataset))):
        image, target = dataset[index]
        found = detections.get(target["image_id"])
        truth = draw_detections(image, target["boxes"], target["labels"], None, class_names)
        if found is None:
            predicted = draw_detections(image, [], [], [], class_names)
        else:
            boxes = found["boxes"]
            if "orig_size" in target:  # results are in the file's pixels; the image may be decoded reduced
                boxes = resize_boxes(boxes, target["orig_size"], image.shape[-2:])
            predicted = draw_detections(image, boxes, found["labels"], found["scores"], class_names, score_threshold=score_threshold)
        pairs.append((truth, predicted))
    if not pairs:
        return None
    return compare_grid(pairs, titles=("ground truth", f"predictions (score >= {score_threshold:g})"))
