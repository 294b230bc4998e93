"""Error breakdown of a detector (TIDE, Bolya et al., ECCV 2020): the AP each kind of error costs.

Every false positive is given one error type, tested in this order (IoU with the image's ground truth,
``fg`` = 0.5 the foreground threshold, ``bg`` = 0.1 the background threshold):

    localisation     IoU with a box of its class in [bg, fg]: right class, box not tight enough
    classification   IoU >= fg with a box of another class: right box, wrong class
    duplicate        IoU >= fg with a box of its class that a higher-scoring detection already took
    background       IoU <= bg with every box (or an image without ground truth): fired on nothing
    both             the rest: a wrong class and IoU in (bg, fg) with some box of another class

and a ground-truth box that no detection matched and no localisation / classification error points at
(unused) is *missed*. The matching is COCO's at IoU 0.5: detections by decreasing score (at most
``max_detections`` per image) each take the unmatched same-class box of highest IoU.

The AP that fixing one type would add (``dAP``) is computed with TIDE's oracles, each type alone on the
original detections: a localisation or classification error becomes a true positive of the box's class
(only the highest-scoring one of the errors pointing at the same unused box; the others are dropped);
duplicate, background and both errors are removed; a missed box is removed from the ground truth.
AP is TIDE's: COCO's 101-point interpolated AP at IoU 0.5 per class (a class with detections but no
ground truth scores 0), averaged over the classes with detections or ground truth; ``dAP = max(AP_fixed
- AP, 0)``. These are the definitions and arithmetic of the ``tidecv`` package (tests compare the two).
One difference: difficult (VOC) / crowd (COCO) boxes are not ground truth, and an unmatched detection
that lies inside one of its class (intersection over the detection's area > fg) is left out altogether,
as VOC AP does (tidecv leaves it out of the AP but still counts it as an error).

Shape shorthand: D detections of an image, K its ground-truth boxes. Boxes are xyxy absolute pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fasterrcnn.evaluation.confusion import as_array, truth_arrays
from fasterrcnn.ops.boxes import box_iou

__all__ = [
    "BACKGROUND_IOU", "ERROR_TYPES", "FOREGROUND_IOU", "MAX_DETECTIONS", "ErrorBreakdown", "average_precision_101",
    "error_breakdown", "greedy_match", "inside_ignored",
]  # fmt: skip

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
MAX_DETECTIONS = 100  # per image, by score (COCO's and TIDE's)
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")  # TIDE's order
_FIXED_TO_TRUE = ("classification", "localisation")


def average_precision_101(scores: np.ndarray, true: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point AP of detections (``scores`` [N], ``true`` [N] bool, listed in push order; ties keep
    it) against ``num_gt`` boxes; 0 when ``num_gt`` is 0 (TIDE's ``APDataObject.get_ap``, in [0, 1])."""
    if num_gt <= 0 or len(scores) == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    tp = np.cumsum(np.asarray(true, bool)[order])
    precision = tp / np.arange(1, len(tp) + 1)
    recall = tp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the envelope: the best precision at any higher recall
    index = np.searchsorted(recall, np.arange(101) / 100, side="left")  # the first point reaching each recall
    return float(precision[index[index < len(precision)]].sum() / 101)


@dataclass(frozen=True)
class ErrorBreakdown:
    """``ap``: the mAP the oracles start from; ``delta_ap``: {error type: dAP} overall; ``per_class``:
    {class name: {"AP": AP, error type: dAP}} (NaN for a class without ground truth); ``counts``:
    {error type: how many} (all in [0, 1] AP units, as the project's mAP)."""

    ap: float
    delta_ap: dict[str, float]
    per_class: dict[str, dict[str, float]]
    counts: dict[str, int]

    def dominant(self) -> str | None:
        """The error type whose fix adds the most AP (None when nothing would)."""
        best = max(ERROR_TYPES, key=lambda e: self.delta_ap[e])
        return best if self.delta_ap[best] > 0 else None


@dataclass
class _Point:
    """One kept detection: its class, score, and (for a false positive) its error and the box it points at."""

    label: int
    score: float
    true: bool
    error: str | None = None
    gt: int = -1  # global index of the box a classification / localisation error would become a match of
    gt_label: int = 0


def error_breakdown(
    detections: Mapping[Any, Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    foreground_iou: float = FOREGROUND_IOU,
    background_iou: float = BACKGROUND_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> ErrorBreakdown:
    """The TIDE breakdown (module docstring) of ``detections`` on ``ground_truth``.

    Args:
        detections: {image id: {"boxes": [D,4] xyxy, "labels": [D] in 1..C, "scores": [D]}}, all scores
            (not thresholded: AP needs the low-scoring ones).
        ground_truth: one dict per image: ``image_id``, ``boxes`` [K,4] xyxy, ``labels`` [K] in 1..C,
            optional ``difficult`` [K] bool (``dataset.ground_truth()``).
        class_names: the C class names, ``class_names[label - 1]``.
    """
    num_classes = len(class_names)
    points: list[_Point] = []  # in TIDE's push order: image by image, detections by decreasing score
    missed_label: list[int] = []  # the class of each missed box
    gt_count = np.zeros(num_classes + 1, np.int64)
    best: dict[int, tuple[float, int]] = {}  # unused box -> (best score, point index) of the errors pointing at it
    gt_offset = 0
    images = {entry["image_id"]: entry for entry in ground_truth}
    for image_id in list(images) + [i for i in detections if i not in images]:
        entry = images.get(image_id, {"boxes": [], "labels": []})
        gt_boxes, gt_labels, difficult = truth_arrays(entry)
        found = detections.get(image_id, {"boxes": [], "labels": [], "scores": []})
        scores = as_array(found["scores"], np.float64, (-1,))
        order = np.argsort(-scores, kind="stable")[:max_detections]
        det_boxes, det_labels, scores = as_array(found["boxes"], np.float64, (-1, 4))[order], as_array(found["labels"], np.int64, (-1,))[order], scores[order]
        for labels in (gt_labels, det_labels):
            if len(labels) and not ((labels >= 1) & (labels <= num_classes)).all():
                raise ValueError(f"image {image_id!r}: labels {sorted(set(labels.tolist()))} outside 1..{num_classes}")
        crowd_boxes, crowd_labels = gt_boxes[difficult], gt_labels[difficult]
        gt_boxes, gt_labels = gt_boxes[~difficult], gt_labels[~difficult]
        np.add.at(gt_count, gt_labels, 1)
        iou = box_iou(torch.from_numpy(det_boxes), torch.from_numpy(gt_boxes)).numpy()  # [D, K]
        same = det_labels[:, None] == gt_labels[None, :]
        same_iou = iou * same
        matched, used = greedy_match(same_iou, foreground_iou)
        inside_crowd = inside_ignored(det_boxes, crowd_boxes, det_labels, crowd_labels, foreground_iou)  # [D]
        usable = np.zeros(len(gt_labels), bool)
        other_iou = iou * ~same
        used_iou = same_iou * used[None, :]
        for d in range(len(det_labels)):
            point = _Point(int(det_labels[d]), float(scores[d]), bool(matched[d]))
            if not matched[d]:
                if inside_crowd[d]:
                    continue  # on a difficult / crowd box: neither right nor wrong
                if len(gt_labels) == 0:
                    point.error = "background"
                elif background_iou <= same_iou[d].max() <= foreground_iou:
                    g = int(np.argmax(same_iou[d]))
                    point.error, point.gt_label = "localisation", int(gt_labels[g])
                    point.gt = _point_at(best, usable, used, g, gt_offset, point.score, len(points))
                elif other_iou[d].max() >= foreground_iou:
                    g = int(np.argmax(other_iou[d]))
                    point.error, point.gt_label = "classification", int(gt_labels[g])
                    point.gt = _point_at(best, usable, used, g, gt_offset, point.score, len(points))
                elif used_iou[d].max() >= foreground_iou:
                    point.error = "duplicate"
                elif iou[d].max() <= background_iou:
                    point.error = "background"
                else:
                    point.error = "both"
            points.append(point)
        missed_label.extend(gt_labels[~used & ~usable].tolist())
        gt_offset += len(gt_labels)

    labels = np.array([p.label for p in points], np.int64)
    base_scores = np.array([p.score for p in points], np.float64)
    base_true = np.array([p.true for p in points], bool)
    present = (gt_count > 0) | (np.bincount(labels, minlength=num_classes + 1) > 0)  # TIDE's non-empty classes
    base = _class_aps(labels, base_scores, base_true, gt_count, present)
    ap = _mean(base, present)
    counts = {error: sum(p.error == error for p in points) for error in ERROR_TYPES[:-1]}
    counts["missed"] = len(missed_label)
    delta, per_class = {}, {name: {"AP": base[c] if gt_count[c] else math.nan} for c, name in enumerate(class_names, start=1)}
    for error in ERROR_TYPES:
        fixed_labels, fixed_scores, fixed_true, fixed_gt = _fixed(points, error, best, missed_label, gt_count, num_classes)
        fixed_present = (fixed_gt > 0) | (np.bincount(fixed_labels, minlength=num_classes + 1) > 0)
        fixed = _class_aps(fixed_labels, fixed_scores, fixed_true, fixed_gt, fixed_present)
        delta[error] = max(_mean(fixed, fixed_present) - ap, 0.0)
        for c, name in enumerate(class_names, start=1):
            per_class[name][error] = max(fixed[c] - base[c], 0.0) if gt_count[c] else math.nan
    return ErrorBreakdown(ap, delta, per_class, counts)


def greedy_match(same_class_iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """COCO's matching: ``same_class_iou`` [D, K] (IoU, 0 between different classes; detections by decreasing
    score) -> (matched [D] bool, used [K] bool): each detection in turn takes the free box of highest IoU >= threshold."""
    matched = np.zeros(same_class_iou.shape[0], bool)
    used = np.zeros(same_class_iou.shape[1], bool)
    free = same_class_iou.copy()
    for d in range(len(matched) if len(used) else 0):
        g = int(np.argmax(free[d]))
        if free[d, g] >= threshold:
            matched[d] = used[g] = True
            free[:, g] = 0.0
    return matched, used


def inside_ignored(det_boxes: np.ndarray, crowd_boxes: np.ndarray, det_labels: np.ndarray, crowd_labels: np.ndarray, threshold: float) -> np.ndarray:
    """[D] bool: the detection's area lies more than ``threshold`` inside a crowd / difficult box of its class."""
    if len(crowd_boxes) == 0 or len(det_boxes) == 0:
        return np.zeros(len(det_boxes), bool)
    low = np.maximum(det_boxes[:, None, :2], crowd_boxes[None, :, :2])
    high = np.minimum(det_boxes[:, None, 2:], crowd_boxes[None, :, 2:])
    inter = np.clip(high - low, 0, None).prod(-1)  # [D, crowd]
    area = np.clip(det_boxes[:, 2:] - det_boxes[:, :2], 0, None).prod(-1)[:, None]
    cover = np.where(area > 0, inter / np.where(area > 0, area, 1.0), 0.0)
    return ((cover > threshold) & (det_labels[:, None] == crowd_labels[None, :])).any(1)


def _point_at(best: dict, usable: np.ndarray, used: np.ndarray, g: int, offset: int, score: float, index: int) -> int:
    """The global index of box ``g`` for an error pointing at it, -1 when a detection already took it
    (TIDE's ``BestGTMatch``: the fix is then suppressed); remembers the best-scoring error per box."""
    if used[g]:
        return -1
    usable[g] = True
    key = offset + g
    if key not in best or best[key][0] < score:
        best[key] = (score, index)
    return key


def _fixed(points: list[_Point], error: str, best: dict, missed_label: list[int], gt_count: np.ndarray, num_classes: int):
    """(labels, scores, true, ground-truth count per class) after TIDE's oracle for ``error``: the errors
    first (fixed when of that type), then the true positives, as ``TIDERun.fix_errors`` pushes them."""
    winners = {index for _, index in best.values()}
    errors = [(i, p) for i, p in enumerate(points) if p.error is not None]
    labels, scores, true = [], [], []
    for i, p in errors:
        if p.error != error:
            labels.append(p.label), scores.append(p.score), true.append(False)
        elif error in _FIXED_TO_TRUE and p.gt >= 0 and i in winners:
            labels.append(p.gt_label if error == "classification" else p.label), scores.append(p.score), true.append(True)
    for p in points:
        if p.true:
            labels.append(p.label), scores.append(p.score), true.append(True)
    gt = gt_count.copy()
    if error == "missed":
        np.subtract.at(gt, np.array(missed_label, np.int64), 1)
    return np.array(labels, np.int64), np.array(scores, np.float64), np.array(true, bool), gt


def _class_aps(labels: np.ndarray, scores: np.ndarray, true: np.ndarray, gt_count: np.ndarray, present: np.ndarray) -> np.ndarray:
    """[C+1] AP per class (index 0 unused; NaN for a class neither detected nor annotated)."""
    aps = np.full(len(gt_count), math.nan)
    for c in np.nonzero(present)[0]:
        mine = labels == c
        aps[c] = average_precision_101(scores[mine], true[mine], int(gt_count[c]))
    return aps


def _mean(aps: np.ndarray, present: np.ndarray) -> float:
    return float(np.mean(aps[present])) if present.any() else 0.0
