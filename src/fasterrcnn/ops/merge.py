"""Merging detections of one image found in several passes (tiles, test-time augmentations), pure torch.

Boxes are float ``(x1, y1, x2, y2)`` in absolute pixels of one image; ``scores`` ``[N]``;
``labels`` ``[N]`` int64. Every rule is class-wise (a box only merges with boxes of its label) and
returns ``(boxes [K, 4], scores [K], labels [K])`` by decreasing score (ties: input order).

- ``greedy_nmm``: greedy non-maximum merging, SAHI's ``GREEDYNMM``: in score order, a box not yet
  merged takes every lower-scored box of its label that it matches (``match`` ``"ios"``,
  intersection over the smaller box's area, or ``"iou"``, ``> threshold``); the group becomes
  one box, the enclosing box of the group, with the group's highest score. An object cut by a tile
  edge is found as two parts in two tiles: the parts match by IoS and merge into the whole box,
  where NMS would keep the larger part.
- ``weighted_box_fusion`` (Solovyev et al., 2021, "Weighted boxes fusion"): the boxes of ``passes``
  passes are clustered in score order, each joining the cluster whose fused box it overlaps most
  (IoU ``> threshold``), else starting one; a fused box is the score-weighted mean of its cluster's
  boxes, its score the mean score times ``min(T, passes) / passes`` for a cluster of T boxes (a box
  found by one pass of four keeps a quarter of its score), as ``ensemble_boxes``' ``conf_type="avg"``.
- ``box_voting`` (Gidaris and Komodakis, 2015, as Detectron's ``BBOX_VOTE``): class-wise NMS at
  ``nms_threshold``, then every kept box is replaced by the score-weighted mean of all the boxes of
  its label with IoU ``>= vote_threshold`` with it (itself included); it keeps its score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fasterrcnn.ops.boxes import _check_boxes, box_area, box_iou
from fasterrcnn.ops.nms import batched_nms

__all__ = ["box_voting", "greedy_nmm", "merge_detections", "weighted_box_fusion", "MERGE_RULES"]

MERGE_RULES = ("nmm", "nms")  # the rules merge_detections knows (across tiles)


def _by_score(scores: Tensor) -> Tensor:
    return torch.sort(scores, descending=True, stable=True).indices


def _check(boxes: Tensor, scores: Tensor, labels: Tensor) -> None:
    _check_boxes(boxes)
    if scores.shape != (boxes.shape[0],) or labels.shape != (boxes.shape[0],):
        raise ValueError(f"expected scores and labels of shape [{boxes.shape[0]}], got {list(scores.shape)} and {list(labels.shape)}")


def _matching_pairs(boxes: Tensor, labels: Tensor, threshold: float, match: str) -> tuple[Tensor, Tensor]:
    """``(a [E], b [E])``: every pair a < b of boxes with the same label whose match is ``> threshold``.

    Without a pairwise matrix: the classes are moved apart along x (as ``batched_nms`` does), the boxes
    sorted by x1, and each box is compared with the boxes after it whose x1 lies before its x2, the
    only ones that can intersect it, a block of boxes at a time."""
    n = len(boxes)
    if n < 2:
        return boxes.new_zeros(0, dtype=torch.int64), boxes.new_zeros(0, dtype=torch.int64)
    span = float((boxes[:, 2:] - boxes.min()).max()) + 1.0
    shifted = boxes + (labels.to(boxes.dtype) * span)[:, None] * boxes.new_tensor([1.0, 0.0, 1.0, 0.0])
    x_order = torch.argsort(shifted[:, 0], stable=True)
    ordered = shifted[x_order]
    ends = torch.searchsorted(ordered[:, 0].contiguous(), ordered[:, 2].contiguous(), side="left")  # first box starting at or after x2
    firsts, seconds = [], []
    for start in range(0, n, 2048):
        stop = min(n, start + 2048)
        counts = (ends[start:stop] - torch.arange(start + 1, stop + 1, device=boxes.device)).clamp(min=0)
        first = torch.repeat_interleave(torch.arange(start, stop, device=boxes.device), counts)
        if not len(first):
            continue
        offsets = torch.arange(len(first), device=boxes.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        second = first + 1 + offsets
        a, b = ordered[first], ordered[second]
        lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(dim=1)
        area_a, area_b = box_area(a), box_area(b)
        tiny = torch.finfo(boxes.dtype).tiny
        value = inter / (torch.minimum(area_a, area_b) if match == "ios" else area_a + area_b - inter).clamp(min=tiny)
        hit = value > threshold
        firsts.append(x_order[first[hit]])
        seconds.append(x_order[second[hit]])
    if not firsts:
        return boxes.new_zeros(0, dtype=torch.int64), boxes.new_zeros(0, dtype=torch.int64)
    first, second = torch.cat(firsts), torch.cat(seconds)
    return torch.minimum(first, second), torch.maximum(first, second)


def greedy_nmm(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float = 0.5, match: str = "ios") -> tuple[Tensor, Tensor, Tensor]:
    """Greedy non-maximum merging (see the module docstring): ``(boxes [K, 4], scores [K], labels [K])``."""
    _check(boxes, scores, labels)
    if match not in ("ios", "iou"):
        raise ValueError(f"match must be 'ios' or 'iou', got {match!r}")
    order = _by_score(scores)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    better, worse = _matching_pairs(boxes, labels, threshold, match)  # ranks: better < worse
    sorted_edges = torch.argsort(better * len(boxes) + worse)
    matches: dict[int, list[int]] = {}
    for a, b in zip(better[sorted_edges].tolist(), worse[sorted_edges].tolist()):
        matches.setdefault(a, []).append(b)
    group = torch.full((len(boxes),), -1, dtype=torch.int64, device=boxes.device)  # the kept box each box merges into
    free = [True] * len(boxes)
    for i in range(len(boxes)):
        if not free[i]:
            continue
        members = [i] + [j for j in matches.get(i, ()) if free[j]]
        for j in members:
            free[j] = False
        group[members] = i
    keep = torch.unique(group)  # sorted ranks: by decreasing score
    slot = torch.searchsorted(keep, group)
    low = torch.full((len(keep), 2), float("inf"), dtype=boxes.dtype, device=boxes.device).scatter_reduce(0, slot[:, None].expand(-1, 2), boxes[:, :2], "amin")
    high = torch.full((len(keep), 2), float("-inf"), dtype=boxes.dtype, device=boxes.device).scatter_reduce(0, slot[:, None].expand(-1, 2), boxes[:, 2:], "amax")
    return torch.cat([low, high], dim=1), scores[keep], labels[keep]


def weighted_box_fusion(
    boxes: Tensor, scores: Tensor, labels: Tensor, passes: int, threshold: float = 0.55
) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted box fusion of the detections of ``passes`` passes (see the module docstring)."""
    _check(boxes, scores, labels)
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    order = _by_score(scores)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    fused_boxes, fused_scores, fused_labels = [], [], []
    for label in labels.unique().tolist():
        members = torch.nonzero(labels == label).flatten()
        weighted = torch.zeros((0, 4), dtype=boxes.dtype, device=boxes.device)  # sum of score * box per cluster
        totals = torch.zeros(0, dtype=scores.dtype, device=scores.device)  # sum of scores
        counts = torch.zeros(0, dtype=torch.int64, device=scores.device)
        first = []  # the rank of each cluster's first box (ties of the output order)
        for i in members.tolist():
            box, score = boxes[i], scores[i]
            best = -1
            if len(totals):
                ious = box_iou(box[None], weighted / totals[:, None].clamp(min=torch.finfo(scores.dtype).tiny))[0]
                value, index = ious.max(dim=0)
                best = int(index) if float(value) > threshold else -1
            if best < 0:
                weighted = torch.cat([weighted, (score * box)[None]])
                totals = torch.cat([totals, score[None]])
                counts = torch.cat([counts, counts.new_ones(1)])
                first.append(i)
            else:
                weighted[best] += score * box
                totals[best] += score
                counts[best] += 1
        if not first:
            continue
        fused_boxes.append(weighted / totals[:, None].clamp(min=torch.finfo(scores.dtype).tiny))
        fused_scores.append(totals / counts * counts.clamp(max=passes) / passes)
        fused_labels.append(torch.full((len(first),), label, dtype=labels.dtype, device=labels.device))
    if not fused_boxes:
        return boxes[:0], scores[:0], labels[:0]
    out_boxes, out_scores, out_labels = torch.cat(fused_boxes), torch.cat(fused_scores), torch.cat(fused_labels)
    order = _by_score(out_scores)
    return out_boxes[order], out_scores[order], out_labels[order]


def box_voting(
    boxes: Tensor, scores: Tensor, labels: Tensor, nms_threshold: float = 0.5, vote_threshold: float = 0.8
) -> tuple[Tensor, Tensor, Tensor]:
    """Class-wise NMS, then box voting (see the module docstring)."""
    _check(boxes, scores, labels)
    keep = batched_nms(boxes, scores, labels, nms_threshold)  # by decreasing score
    if not len(keep):
        return boxes[:0], scores[:0], labels[:0]
    same_label = labels[keep][:, None] == labels[None, :]  # [K, N]
    weights = ((box_iou(boxes[keep], boxes) >= vote_threshold) & same_label) * scores[None, :]  # [K, N]
    voted = weights @ boxes / weights.sum(dim=1, keepdim=True).clamp(min=torch.finfo(scores.dtype).tiny)
    return voted, scores[keep], labels[keep]


def merge_detections(boxes: Tensor, scores: Tensor, labels: Tensor, rule: str = "nmm", threshold: float = 0.5) -> tuple[Tensor, Tensor, Tensor]:
    """Duplicates found in several tiles merged by ``rule``: ``"nmm"`` (``greedy_nmm``, IoS > ``threshold``)
    or ``"nms"`` (class-wise NMS, IoU > ``threshold``)."""
    if rule == "nmm":
        return greedy_nmm(boxes, scores, labels, threshold, match="ios")
    if rule == "nms":
        _check(boxes, scores, labels)
        keep = batched_nms(boxes, scores, labels, threshold)
        return boxes[keep], scores[keep], labels[keep]
    raise ValueError(f"unknown merge rule {rule!r}; expected one of {', '.join(MERGE_RULES)}")
