"""PASCAL VOC detection AP, identical to py-faster-rcnn's ``voc_eval`` (the numbers papers report).

Shape shorthand: D detections of one class (all images), K ground-truth boxes, Di / Ki those of
one image.

Coordinates. Our boxes are continuous ``(x1, y1, x2, y2)``; a VOC XML box ``(xmin, ymin, xmax,
ymax)`` (1-based, inclusive pixels) was loaded as ``(xmin - 1, ymin - 1, xmax, ymax)``. Here every
box, ground truth and detection, is converted back to VOC pixel coordinates ``(x1 + 1, y1 + 1,
x2, y2)`` and the overlap is computed with ``voc_eval``'s ``+1`` widths, operation for operation,
so the IoUs are bit-identical to ``voc_eval`` on the original XML coordinates and the detection
file py-faster-rcnn would write. (With this conversion the ``+1`` IoU equals the continuous IoU
of our boxes; applying ``+1`` widths to continuous boxes directly would be wrong.)

Matching (per class, as ``voc_eval``):
- detections are taken in decreasing score; ties keep the order of the results list
  (``np.argsort(-score, kind="stable")``; ``voc_eval``'s default quicksort leaves ties unordered);
- a detection's best ground truth is the same-class box of its image with the largest IoU (the
  first one on ties); if that IoU is ``> iou_threshold`` (strictly) and the box is ``difficult``,
  the detection is ignored (neither TP nor FP); if the box is not difficult and not yet matched
  it is a TP and the box becomes matched; otherwise (already matched, IoU too small, no box) FP;
- detections on images absent from the ground truth are false positives (``voc_eval`` would
  raise ``KeyError``);
- recall = TP / npos with npos the number of non-difficult boxes; precision =
  TP / max(TP + FP, eps) (Detectron's fix: ``voc_eval`` gives NaN there when the top-scoring
  detections are all ignored, which makes its 07 AP NaN; the area AP is unchanged).

Classes with no non-difficult ground truth have no AP: they are listed in
``classes_without_gt`` and left out of ``per_class``, ``pr_curves`` and the mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate_voc", "voc_ap"]


def voc_ap(recall: Sequence[float] | np.ndarray, precision: Sequence[float] | np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision from a precision/recall curve (detections in decreasing score).

    ``use_07_metric=False`` (VOC2010+, "voc"): area under the monotone precision envelope
    ``p_interp(r) = max_{r' >= r} p(r')``, summed where recall changes.
    ``use_07_metric=True`` (VOC2007, "voc07"): mean of ``max(precision[recall >= t])`` (0 when no
    point reaches ``t``) over the 11 thresholds ``np.arange(0, 1.1, 0.1)`` -- exactly
    ``voc_eval``'s thresholds, so e.g. the fourth one is ``0.30000000000000004``.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            above = rec >= t
            p = np.max(prec[above]) if above.any() else 0.0
            ap = ap + p / 11.0
        return float(ap)
    # Sentinels, then the precision envelope (running maximum from the right).
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]  # points where recall changes
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _to_numpy(x: Any, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.double() if dtype == np.float64 else x
        return x.numpy().astype(dtype)
    return np.asarray(x, dtype=dtype)


def _to_voc_pixels(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Continuous ``(x1, y1, x2, y2)`` [K,4] -> VOC 1-based inclusive pixels ``(x1+1, y1+1, x2, y2)`` [K,4]."""
    return np.concatenate([boxes_xyxy[:, :2] + 1.0, boxes_xyxy[:, 2:]], axis=1)


def _voc_overlaps(det: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU [Di, Ki] of VOC-pixel boxes det [Di,4] and gt [Ki,4], computed as ``voc_eval`` does."""
    bb = det[:, None, :]  # [Di, 1, 4]
    g = gt[None, :, :]  # [1, Ki, 4]
    ixmin = np.maximum(g[..., 0], bb[..., 0])
    iymin = np.maximum(g[..., 1], bb[..., 1])
    ixmax = np.minimum(g[..., 2], bb[..., 2])
    iymax = np.minimum(g[..., 3], bb[..., 3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = (bb[..., 2] - bb[..., 0] + 1.0) * (bb[..., 3] - bb[..., 1] + 1.0) + (g[..., 2] - g[..., 0] + 1.0) * (
        g[..., 3] - g[..., 1] + 1.0
    ) - inters
    with np.errstate(divide="ignore", invalid="ignore"):
        return inters / uni


def evaluate_voc(
    results: Sequence[Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
) -> dict:
    """VOC AP per class and mAP (see the module docstring for the exact matching rules).

    Args:
        results: results entries (``evaluation.results`` format): ``image_id``, ``category_id`` in
            1..C, ``bbox`` [x, y, w, h] continuous pixels, ``score``; an optional
            ``category_name`` must equal ``class_names[category_id - 1]``.
        ground_truth: one dict per evaluated image: ``image_id``, ``boxes`` [K,4] continuous xyxy
            (tensor or array), ``labels`` [K] in 1..C, ``difficult`` [K] bool (optional: all False).
        class_names: the C class names; category id / label ``c`` is ``class_names[c - 1]``.
        iou_threshold: a detection can match when its IoU is strictly greater.
        use_07_metric: 11-point VOC2007 AP instead of the area under the envelope.

    Returns:
        ``{"mAP": mean AP over classes with non-difficult ground truth (0.0 when there is none),
        "metric": "voc07" | "voc", "iou_threshold": float,
        "per_class": {name: AP}, "classes_without_gt": [names],
        "pr_curves": {name: (recall list, precision list)} in decreasing score,
        "num_gt": {name: non-difficult boxes}, "num_detections": {name: detections}}``.

    Raises:
        ValueError: duplicate ground-truth image ids, labels / category ids outside 1..C, a
            category name that does not match ``class_names``, malformed boxes.
    """
    num_classes = len(class_names)

    # Ground truth: all images concatenated, each box with its image index.
    image_index: dict[Any, int] = {}
    gt_boxes, gt_labels, gt_difficult, gt_image = [], [], [], []
    for entry in ground_truth:
        image_id = entry["image_id"]
        if image_id in image_index:
            raise ValueError(f"ground truth: image id {image_id!r} appears twice")
        image_index[image_id] = len(image_index)
        boxes = _to_numpy(entry["boxes"], np.float64).reshape(-1, 4)
        labels = _to_numpy(entry["labels"], np.int64).reshape(-1)
        difficult = entry.get("difficult")
        difficult = np.zeros(len(labels), bool) if difficult is None else _to_numpy(difficult, bool).reshape(-1)
        if not len(boxes) == len(labels) == len(difficult):
            raise ValueError(
                f"ground truth of image {image_id!r}: {len(boxes)} boxes, {len(labels)} labels, "
                f"{len(difficult)} difficult flags"
            )
        if len(labels) and not ((labels >= 1) & (labels <= num_classes)).all():
            raise ValueError(f"ground truth of image {image_id!r}: labels {labels.tolist()} outside 1..{num_classes}")
        gt_boxes.append(_to_voc_pixels(boxes))
        gt_labels.append(labels)
        gt_difficult.append(difficult)
        gt_image.append(np.full(len(labels), image_index[image_id], np.int64))
    gt_boxes_all = np.concatenate(gt_boxes) if gt_boxes else np.zeros((0, 4))
    gt_labels_all = np.concatenate(gt_labels) if gt_labels else np.zeros(0, np.int64)
    gt_difficult_all = np.concatenate(gt_difficult) if gt_difficult else np.zeros(0, bool)
    gt_image_all = np.concatenate(gt_image) if gt_image else np.zeros(0, np.int64)

    # Detections, in the results' order; image index -1 for images without ground truth.
    det_boxes = np.zeros((len(results), 4))
    det_labels = np.zeros(len(results), np.int64)
    det_scores = np.zeros(len(results))
    det_image = np.zeros(len(results), np.int64)
    for i, entry in enumerate(results):
        category_id = int(entry["category_id"])
        if not 1 <= category_id <= num_classes:
            raise ValueError(f"results entry {i}: category_id {category_id} outside 1..{num_classes}")
        name = entry.get("category_name")
        if name is not None and name != class_names[category_id - 1]:
            raise ValueError(
                f"results entry {i}: category {category_id} is {name!r} in the results but "
                f"{class_names[category_id - 1]!r} in the class list (different class lists?)"
            )
        x, y, w, h = (float(v) for v in entry["bbox"])
        det_boxes[i] = (x, y, x + w, y + h)
        det_labels[i] = category_id
        det_scores[i] = float(entry["score"])
        det_image[i] = image_index.get(entry["image_id"], -1)
    det_boxes = _to_voc_pixels(det_boxes)

    per_class: dict[str, float] = {}
    pr_curves: dict[str, tuple[list[float], list[float]]] = {}
    num_gt: dict[str, int] = {}
    num_detections: dict[str, int] = {}
    classes_without_gt: list[str] = []
    for c, name in enumerate(class_names, start=1):
        # Ground truth of class c, grouped by image: gt_c_* [Kc], slices by searchsorted.
        gt_c = np.nonzero(gt_labels_all == c)[0]
        gt_c = gt_c[np.argsort(gt_image_all[gt_c], kind="stable")]
        gt_c_image = gt_image_all[gt_c]
        npos = int((~gt_difficult_all[gt_c]).sum())
        num_gt[name] = npos

        # Detections of class c in decreasing score (stable on ties): order [D].
        det_c = np.nonzero(det_labels == c)[0]
        order = det_c[np.argsort(-det_scores[det_c], kind="stable")]
        num_detections[name] = len(order)
        if npos == 0:
            classes_without_gt.append(name)
            continue

        # Best-overlapping ground truth of every detection: ovmax [D], jmax [D] (index into gt_c).
        ovmax = np.full(len(order), -np.inf)
        jmax = np.zeros(len(order), np.int64)
        images = det_image[order]
        for image in np.unique(images[images >= 0]):
            dets = np.nonzero(images == image)[0]
            start, stop = np.searchsorted(gt_c_image, [image, image + 1])
            if start == stop:
                continue
            overlaps = _voc_overlaps(det_boxes[order[dets]], gt_boxes_all[gt_c[start:stop]])  # [Di, Ki]
            ovmax[dets] = overlaps.max(axis=1)
            jmax[dets] = start + overlaps.argmax(axis=1)

        # Greedy assignment in score order: the first detection to claim a non-difficult box is a
        # TP, later ones are duplicates (FP); claims on difficult boxes are ignored.
        claims = ovmax > iou_threshold
        difficult = claims & gt_difficult_all[gt_c[jmax]]
        counted = claims & ~difficult
        first = np.zeros(len(order), bool)
        _, first_claim = np.unique(jmax[counted], return_index=True)  # first claim of each box
        first[np.nonzero(counted)[0][first_claim]] = True
        tp = first.astype(np.float64)
        fp = (~claims | (counted & ~first)).astype(np.float64)

        tp = np.cumsum(tp)
        fp = np.cumsum(fp)
        recall = tp / float(npos)
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(recall, precision, use_07_metric)
        pr_curves[name] = (recall.tolist(), precision.tolist())

    return {
        "mAP": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "metric": "voc07" if use_07_metric else "voc",
        "iou_threshold": float(iou_threshold),
        "per_class": per_class,
        "classes_without_gt": classes_without_gt,
        "pr_curves": pr_curves,
        "num_gt": num_gt,
        "num_detections": num_detections,
    }
