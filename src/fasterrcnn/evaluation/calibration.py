"""How far a detection's score can be trusted: detection calibration error, reliability bins, temperature fitting.

A detector is calibrated when, of its detections scoring about p, a share p is right (Küppers et al.,
"Multivariate Confidence Calibration for Object Detection", CVPR-W 2020). *Right* is a true positive at
IoU >= 0.5: detections by decreasing score (per image, at most 100) each take the unmatched ground-truth
box of their class with the highest IoU (``tide.greedy_match``; a detection left over that lies inside a
difficult / crowd box of its class is left out, as in VOC AP).

The detection expected calibration error (D-ECE) bins the scores into ``bins`` equal-width bins over
[0, 1] and averages ``|precision(bin) - mean score(bin)|`` weighted by the bin's share of detections.
Every detection the model returns takes part (those above the model's ``box_score_thresh``).

Temperature scaling (Guo et al., 2017, for detectors as in Küppers et al.): the box head's class logits are
divided by one number T > 0 before the softmax; T keeps each RoI's class ranking. ``fit_temperature`` picks
the T minimising the binary cross-entropy between each detection's score ``softmax(z / T)[label]`` and
whether it is right.

Score scaling (Platt scaling of the final score, Küppers et al.): each detection's score s becomes
``sigmoid(a * logit(s) + b)`` (``calibrated_scores``), one (a, b) for every class; a > 0 keeps the order of
all scores, so the detections, their ranking and the mAP stay those of the model. ``fit_score_map`` picks
(a, b) by logistic regression of whether a detection is right on logit(s). Unlike a temperature, which acts
on the class logits of every RoI and mostly moves the scores near 1, it moves the middle and low scores
as much as the data asks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fasterrcnn.evaluation.confusion import as_array, truth_arrays
from fasterrcnn.evaluation.tide import FOREGROUND_IOU, MAX_DETECTIONS, greedy_match, inside_ignored
from fasterrcnn.ops.boxes import box_iou

__all__ = [
    "ECE_BINS", "calibrated_scores", "detection_outcomes", "expected_calibration_error", "fit_score_map", "fit_temperature",
    "reliability_bins",
]  # fmt: skip

ECE_BINS = 10


def detection_outcomes(
    detections: Mapping[Any, Mapping[str, Any]],
    ground_truth: Sequence[Mapping[str, Any]],
    *,
    iou_threshold: float = FOREGROUND_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> tuple[np.ndarray, np.ndarray, dict[Any, np.ndarray]]:
    """(scores [N], right [N] bool, {image id: indices [D] into that image's detections}) of every detection
    taking part (module docstring), image by image; the indices give back each one's row in ``detections``.

    ``detections`` and ``ground_truth`` as for ``tide.error_breakdown``.
    """
    images = {entry["image_id"]: entry for entry in ground_truth}
    scores, right, where = [], [], {}
    for image_id, found in detections.items():
        entry = images.get(image_id, {"boxes": [], "labels": []})
        gt_boxes, gt_labels, difficult = truth_arrays(entry)
        det_scores = as_array(found["scores"], np.float64, (-1,))
        order = np.argsort(-det_scores, kind="stable")[:max_detections]
        det_boxes, det_labels = as_array(found["boxes"], np.float64, (-1, 4))[order], as_array(found["labels"], np.int64, (-1,))[order]
        iou = box_iou(torch.from_numpy(det_boxes), torch.from_numpy(gt_boxes[~difficult])).numpy()  # [D, K]
        matched, _ = greedy_match(iou * (det_labels[:, None] == gt_labels[~difficult][None, :]), iou_threshold)
        ignored = ~matched & inside_ignored(det_boxes, gt_boxes[difficult], det_labels, gt_labels[difficult], iou_threshold)
        where[image_id] = order[~ignored]
        scores.append(det_scores[order][~ignored])
        right.append(matched[~ignored])
    if not scores:
        return np.zeros(0), np.zeros(0, bool), where
    return np.concatenate(scores), np.concatenate(right), where


def reliability_bins(scores: np.ndarray, right: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """One dict per equal-width score bin over [0, 1] (the last one closed): ``low``, ``high``, ``count``,
    ``score`` (the mean score, NaN when empty) and ``precision`` (the share right, NaN when empty)."""
    scores, right = np.asarray(scores, np.float64), np.asarray(right, bool)
    index = np.clip(np.floor(scores * bins).astype(np.int64), 0, bins - 1)
    rows = []
    for b in range(bins):
        mine = index == b
        count = int(mine.sum())
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": count,
                "score": float(scores[mine].mean()) if count else math.nan,
                "precision": float(right[mine].mean()) if count else math.nan,
            }
        )
    return rows


def expected_calibration_error(scores: np.ndarray, right: np.ndarray, bins: int = ECE_BINS) -> float:
    """D-ECE: sum over the bins of (share of detections) x |precision - mean score|; NaN without detections."""
    total = len(scores)
    if total == 0:
        return math.nan
    return float(sum(r["count"] / total * abs(r["precision"] - r["score"]) for r in reliability_bins(scores, right, bins) if r["count"]))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, right: torch.Tensor, *, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature T in [low, high] minimising the binary cross-entropy of ``softmax(logits / T)[labels]``
    against ``right``.

    Args:
        logits: [N, C+1] the box head's class logits (or log-probabilities: a shift per row changes nothing)
            of N detections; labels: [N] their classes (1..C); right: [N] bool, true positives.
    The loss is searched on a grid of log T and refined by golden-section search (it is smooth in log T).
    """
    logits = logits.detach().double()
    labels = labels.long()
    target = right.double()
    if len(logits) == 0:
        return 1.0

    def loss(log_t: float) -> float:
        p = torch.softmax(logits / math.exp(log_t), -1).gather(1, labels[:, None]).squeeze(1).clamp(1e-12, 1 - 1e-12)
        return float(-(target * p.log() + (1 - target) * (1 - p).log()).mean())

    grid = np.linspace(math.log(low), math.log(high), 61)
    values = [loss(x) for x in grid]
    k = int(np.argmin(values))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(40):  # golden-section search on [a, b]
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    return float(math.exp((a + b) / 2))


def calibrated_scores(scores: torch.Tensor, score_map: tuple[float, float]) -> torch.Tensor:
    """``sigmoid(a * logit(scores) + b)`` for ``score_map = (a, b)``, a > 0: [N] scores in (0, 1] -> [N].

    A score of 1 stays 1 (logit +inf); the map is increasing, so it keeps the order of the scores.
    Plain tensor operations, so that ``deploy.graph`` bakes the same map into an exported graph.
    """
    slope, offset = score_map
    return torch.sigmoid(slope * (torch.log(scores) - torch.log(1 - scores)) + offset)


def fit_score_map(scores: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """The (a, b) of ``calibrated_scores`` minimising the binary cross-entropy of ``sigmoid(a * logit(s) + b)``
    against ``right``: logistic regression on logit(s), with a = exp(u) so that it stays > 0 (L-BFGS on (u, b)).

    Args:
        scores: [N] detection scores in (0, 1]; right: [N] bool, true positives.
    As in Platt (1999), the targets are (N+ + 1) / (N+ + 2) for the right detections and 1 / (N- + 2) for the
    wrong ones rather than 1 and 0, so that the fit stays finite when every detection is right (or wrong).
    (1, 0), the identity, without detections.
    """
    scores, right = np.asarray(scores, np.float64), np.asarray(right, bool)
    if len(scores) == 0:
        return 1.0, 0.0
    eps = float(np.finfo(np.float32).eps)  # scores are float32: 1 - eps is the largest below 1
    s = torch.from_numpy(np.clip(scores, eps, 1 - eps))
    logit = s.log() - (-s).log1p()
    positives = int(right.sum())
    target = torch.from_numpy(np.where(right, (positives + 1) / (positives + 2), 1 / (len(right) - positives + 2)))
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # (u, b): the identity
    optimizer = torch.optim.LBFGS([params], max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(params[0].exp() * logit + params[1], target)
        value.backward()
        return value

    optimizer.step(loss)
    u, b = params.detach().tolist()
    return math.exp(u), b
