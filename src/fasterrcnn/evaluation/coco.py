"""COCO box AP through pycocotools' ``COCOeval`` (the reference implementation, unchanged).

Shape shorthand for ``COCOeval.eval["precision"]``: [T, R, K, A, M] = T IoU thresholds
(.50:.05:.95), R = 101 recall thresholds, K categories (``params.catIds`` order), A area ranges
(all, small, medium, large), M max-detections settings (1, 10, 100).

pycocotools prints progress and its summary table; both are captured here (the summary lines
are returned under ``"summary"`` for the caller to print). Its convention that a metric is
``-1`` when no ground truth falls in its range (e.g. ``APs`` without small objects) is kept.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = ["evaluate_coco"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _load_results(coco_gt: COCO, results: Sequence[Mapping[str, Any]]) -> COCO:
    """``coco_gt.loadRes`` on a copy of ``results``; an empty list gives a COCO with no annotations.

    (``loadRes`` mutates its entries and fails on an empty list.)
    """
    known = set(coco_gt.getImgIds())
    unknown = sorted({r["image_id"] for r in results} - known, key=repr)
    if unknown:
        raise ValueError(
            f"{len(unknown)} result image id(s) are not in the COCO ground truth, e.g. {unknown[:5]!r} "
            "(results of another data set?)"
        )
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            return coco_gt.loadRes([dict(r, bbox=[float(v) for v in r["bbox"]]) for r in results])
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset["categories"]),
            "annotations": [],
        }
        coco_dt.createIndex()
        return coco_dt


def evaluate_coco(coco_gt: COCO, results: Sequence[Mapping[str, Any]]) -> dict:
    """COCO bbox evaluation of ``results`` (COCO category ids, ``bbox`` [x, y, w, h]) against ``coco_gt``.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}``
        as floats (``COCOeval.stats``; -1 where no ground truth is in range), plus
        ``"per_class"``: {category name: AP@[.5:.95], area all, 100 detections} for categories
        with ground truth (mean of the valid entries of ``eval["precision"]``),
        ``"per_class_ap50"``: {category name: AP@0.5} for the same categories (mean over the
        recall thresholds at IoU 0.5),
        ``"classes_without_gt"``: [names] of the other categories,
        ``"pr_curves"``: {category name: (recall thresholds list, precision list)} at IoU 0.5,
        area all, 100 detections, ``"summary"``: pycocotools' 12 summary lines (list of str).

    Results whose ``category_id`` is not a category of ``coco_gt`` are ignored (as COCOeval does).

    Raises:
        ValueError: a result's ``image_id`` is not an image of ``coco_gt``.
    """
    coco_dt = _load_results(coco_gt, results)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval.evaluate()
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()

    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    area_all = params.areaRngLbl.index("all")
    max_dets = len(params.maxDets) - 1  # 100
    iou_50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    recall_thresholds = [float(r) for r in params.recThrs]

    per_class: dict[str, float] = {}
    per_class_ap50: dict[str, float] = {}
    pr_curves: dict[str, tuple[list[float], list[float]]] = {}
    classes_without_gt: list[str] = []
    for k, category_id in enumerate(params.catIds):
        name = coco_gt.cats[category_id]["name"]
        p = precision[:, :, k, area_all, max_dets]  # [T, R]
        valid = p[p > -1]
        if valid.size == 0:
            classes_without_gt.append(name)
            continue
        per_class[name] = float(np.mean(valid))
        at_50 = precision[iou_50, :, k, area_all, max_dets]  # [R]
        per_class_ap50[name] = float(np.mean(at_50[at_50 > -1])) if (at_50 > -1).any() else 0.0
        pr_curves[name] = (list(recall_thresholds), [float(v) for v in precision[iou_50, :, k, area_all, max_dets]])

    metrics: dict[str, Any] = {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats)}
    metrics.update(
        per_class=per_class,
        per_class_ap50=per_class_ap50,
        classes_without_gt=classes_without_gt,
        pr_curves=pr_curves,
        summary=summary.getvalue().splitlines(),
    )
    return metrics
