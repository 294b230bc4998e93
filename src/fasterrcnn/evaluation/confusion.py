"""Detection confusion matrix with a background class, and per-class precision / recall read from it.

Shape shorthand: C classes; the matrix is [C+1, C+1], rows the true class, columns the predicted
class, index ``c - 1`` for label ``c`` and the last index ``C`` for *background*.

Matching (per image, the convention of ultralytics' ``ConfusionMatrix.process_batch``):
- only detections scoring ``>= score_threshold`` take part;
- every (ground truth, detection) pair with IoU ``>= iou_threshold`` is a candidate, whatever the
  two classes; candidates are taken in decreasing IoU (ties: ground-truth order, then detection
  order) and a pair is kept when neither its ground truth nor its detection is taken yet
  (one-to-one);
- a kept pair counts at ``[true class, predicted class]`` (the diagonal when the classes agree);
- a ground-truth box left unmatched counts at ``[true class, background]``: *missed*;
- a detection left unmatched counts at ``[background, predicted class]``: *false positive*;
- difficult (VOC) / crowd (COCO) boxes are matched like the others but nothing involving them is
  counted, so a detection on a difficult object is neither right nor wrong (as in VOC AP).
``[background, background]`` is always 0.

Per class ``c`` (``per_class_counts``): instances = row sum (true boxes, difficult excluded),
detections = column sum (kept detections predicted as ``c``), true positives = the diagonal entry,
precision = TP / detections, recall = TP / instances (NaN when the denominator is 0). A detection of
the right object with the wrong class counts against both classes' precision and recall.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fasterrcnn.ops.boxes import box_iou

__all__ = ["IOU_THRESHOLD", "SCORE_THRESHOLD", "as_array", "confusion_matrix", "per_class_counts", "truth_arrays"]

IOU_THRESHOLD = 0.5
SCORE_THRESHOLD = 0.5  # predict's default: the detections a user sees


def as_array(value: Any, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor, list or array as a NumPy array of ``dtype`` and ``shape`` (on the CPU)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def truth_arrays(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ground truth ``{"boxes", "labels"[, "difficult"]}`` as ``(boxes [G, 4] float64 xyxy,
    labels [G] int64, difficult [G] bool)`` (no ``difficult``: none is)."""
    boxes = as_array(entry["boxes"], np.float64, (-1, 4))
    labels = as_array(entry["labels"], np.int64, (-1,))
    difficult = entry.get("difficult")
    return boxes, labels, np.zeros(len(labels), bool) if difficult is None else as_array(difficult, bool, (-1,))


def confusion_matrix(
    detections: Mapping[Any, Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    num_classes: int,
    *,
    iou_threshold: float = IOU_THRESHOLD,
    score_threshold: float = SCORE_THRESHOLD,
) -> np.ndarray:
    """The [C+1, C+1] int64 confusion matrix (rows true, columns predicted, background last).

    Args:
        detections: {image id: {"boxes": [D,4] xyxy, "labels": [D] in 1..C, "scores": [D]}};
            an image without an entry has no detections.
        ground_truth: one dict per image: ``image_id``, ``boxes`` [K,4] xyxy, ``labels`` [K] in
            1..C, optional ``difficult`` [K] bool (``dataset.ground_truth()``).
        num_classes: C.
        iou_threshold, score_threshold: see the module docstring.

    Detections of images absent from ``ground_truth`` are false positives.
    """
    background = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    images = {entry["image_id"]: entry for entry in ground_truth}
    for image_id in list(images) + [i for i in detections if i not in images]:
        entry = images.get(image_id, {"boxes": [], "labels": []})
        gt_boxes, gt_labels, difficult = truth_arrays(entry)
        found = detections.get(image_id, {"boxes": [], "labels": [], "scores": []})
        keep = as_array(found["scores"], np.float64, (-1,)) >= score_threshold
        det_boxes = as_array(found["boxes"], np.float64, (-1, 4))[keep]
        det_labels = as_array(found["labels"], np.int64, (-1,))[keep]
        for labels in (gt_labels, det_labels):
            if len(labels) and not ((labels >= 1) & (labels <= num_classes)).all():
                raise ValueError(f"image {image_id!r}: labels {sorted(set(labels.tolist()))} outside 1..{num_classes}")

        iou = box_iou(torch.from_numpy(gt_boxes), torch.from_numpy(det_boxes)).numpy()  # [K, D], float64
        gt_index, det_index = np.nonzero(iou >= iou_threshold)  # candidates, row-major: (gt, det) order
        order = np.argsort(-iou[gt_index, det_index], kind="stable")
        gt_taken = np.zeros(len(gt_labels), bool)
        det_taken = np.zeros(len(det_labels), bool)
        for g, d in zip(gt_index[order], det_index[order]):
            if gt_taken[g] or det_taken[d]:
                continue
            gt_taken[g] = det_taken[d] = True
            if not difficult[g]:
                matrix[gt_labels[g] - 1, det_labels[d] - 1] += 1
        for g in np.nonzero(~gt_taken & ~difficult)[0]:
            matrix[gt_labels[g] - 1, background] += 1
        for d in np.nonzero(~det_taken)[0]:
            matrix[background, det_labels[d] - 1] += 1
    return matrix


def per_class_counts(matrix: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per class from a confusion matrix: ``class``, ``instances``, ``detections``, ``true_positives``,
    ``precision``, ``recall`` (floats, NaN when undefined)."""
    rows = []
    for c, name in enumerate(class_names):
        instances, detections, tp = int(matrix[c].sum()), int(matrix[:, c].sum()), int(matrix[c, c])
        rows.append(
            {
                "class": name,
                "instances": instances,
                "detections": detections,
                "true_positives": tp,
                "precision": tp / detections if detections else math.nan,
                "recall": tp / instances if instances else math.nan,
            }
        )
    return rows
