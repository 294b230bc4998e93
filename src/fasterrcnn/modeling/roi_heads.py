"""RoI heads (Fast R-CNN, Girshick 2015, as used by Ren et al.): per-proposal classes and class-specific boxes.

Shape shorthand:
    N   images;  P  proposals of an image;  G  GT boxes of an image (Gmax: most in the batch)
    M   proposals + GT boxes of an image (Mmax: most in the batch)
    R   RoIs of the batch (sampled in training, all proposals in inference)
    C   foreground classes (the predictor has C + 1 outputs, 0 = background)
    D   box head output width;  S  pooled size

Boxes are ``(x1, y1, x2, y2)`` in pixels of the transformed image. The algorithm is torchvision's
(``torchvision/models/detection/roi_heads.py``), computed for the whole batch at once: one IoU
matrix, one sampling call, one decode and one batched NMS for all images and classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasterrcnn import ops
from fasterrcnn.evaluation.calibration import calibrated_scores
from fasterrcnn.modeling.matching import IGNORE, NEGATIVE, POSITIVE, Matcher, sample_labels
from fasterrcnn.modeling.rpn import full_precision, padded_gt, smooth_l1_sum, split_top_n


class FastRCNNPredictor(nn.Module):
    """Two sibling linear layers: ``cls_score`` Linear(D, C+1) and ``bbox_pred`` Linear(D, 4(C+1)).

    ``num_classes`` here includes the background (torchvision's convention for this module).
    Initialised as the paper's code: N(0, 0.01) for scores, N(0, 0.001) for deltas, zero biases.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [R, D] (or [R, D, 1, 1]) -> (class logits [R, C+1], deltas [R, 4(C+1)])."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class SingleLevelRoIPool(nn.Module):
    """RoIPool or RoIAlign on one named feature map, called like ``MultiScaleRoIAlign``.

    ``forward(features: dict name -> [N, C, H, W], boxes: list of [P, 4], image_shapes) -> [R, C, S, S]``.
    """

    def __init__(self, featmap_name: str, pooler: nn.Module):
        super().__init__()
        self.featmap_name = featmap_name
        self.pooler = pooler

    def forward(self, features: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        return self.pooler(features[self.featmap_name], boxes)


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor, fg_targets: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the R sampled RoIs, mean; smooth-L1 on the foreground RoIs' deltas of their class, summed / R.

    class_logits [R, C+1], box_regression [R, 4(C+1)], labels [R] (0..C), fg_targets [#fg, 4] (fg RoIs in order).
    Both are 0 when R = 0 (no proposal and no GT to sample), not the NaN of a mean over nothing.
    """
    num_sampled = max(labels.numel(), 1)
    loss_classifier = F.cross_entropy(class_logits, labels, reduction="sum") / num_sampled
    fg = torch.nonzero(labels > 0).squeeze(1)
    deltas = box_regression.reshape(len(labels), box_regression.shape[1] // 4, 4)[fg, labels[fg]]  # [#fg, 4]
    loss_box_reg = smooth_l1_sum(deltas, fg_targets, beta) / num_sampled
    return loss_classifier, loss_box_reg


class RoIHeads(nn.Module):
    """Proposal targets + box pooling + box head + predictor, and the inference post-processing.

    Training: GT boxes are appended to the proposals; IoU >= ``fg_iou_thresh`` is foreground (the
    GT's class), IoU in [``bg_iou_low``, ``bg_iou_thresh``) background, below ``bg_iou_low`` ignored
    (the paper uses 0.1, torchvision 0.0); in an image without GT every proposal is background.
    ``batch_size_per_image`` RoIs are sampled, at most ``positive_fraction`` foreground.
    Inference: softmax (of the class logits divided by ``temperature``, 1 unless ``fasterrcnn calibrate``
    fitted one), class-specific decoding, clipping, score > ``score_thresh``, boxes smaller than
    ``min_size`` dropped, NMS per class, at most ``detections_per_img`` per image by score; then, with a
    ``score_map`` (a, b) (``fasterrcnn calibrate``), each kept score s becomes ``sigmoid(a logit(s) + b)``
    (``evaluation.calibration.calibrated_scores``: increasing, so the detections and their order stay).
    With ``class_probabilities`` on (``keeping_probabilities``), each detection also carries its RoI's whole
    softmax row, ``"probabilities"`` [D, C+1] (background at 0): ``probabilities[d, labels[d]] == scores[d]``
    without a ``score_map`` (the map changes the score, not the row).
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: FastRCNNPredictor,
        *,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        bg_iou_low: float,
        batch_size_per_image: int,
        positive_fraction: float,
        bbox_reg_weights: tuple[float, float, float, float],
        score_thresh: float,
        nms_thresh: float,
        detections_per_img: int,
        min_size: float = 1e-2,
        smooth_l1_beta: float = 1.0 / 9.0,
        temperature: float = 1.0,
        score_map: tuple[float, float] | None = None,
    ):
        super().__init__()
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = ops.BoxCoder(weights=tuple(bbox_reg_weights))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.bg_iou_low = bg_iou_low
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.min_size = min_size
        self.smooth_l1_beta = smooth_l1_beta
        self.temperature = temperature
        self.score_map = score_map
        self.class_probabilities = False  # inference: also return each detection's softmax row
        self.generator: torch.Generator | Sequence[torch.Generator] | None = None  # one, or one per image

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sample RoIs for the losses -> (RoIs per image [Ri, 4], class labels [R] (0..C), fg regression targets [#fg, 4])."""
        n = len(proposals)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        candidates = [torch.cat((p, g)) for p, g in zip(proposals, gt_boxes)]  # M per image
        cat_gt, gt_pad, gt_rows = padded_gt(gt_boxes)  # [sumG, 4], [N, Gmax, 4], [N, Gmax]
        gt_labels = torch.cat([t["labels"] for t in targets]).to(device)
        cat_cand, cand_pad, cand_rows = padded_gt(candidates)  # [sumM, 4], [N, Mmax, 4], [N, Mmax]
        valid_gt, valid_cand = gt_rows >= 0, cand_rows >= 0
        has_gt = valid_gt.any(dim=1)  # [N]
        if len(cat_gt):
            iou = ops.box_iou(cat_gt, cat_cand)  # [sumG, sumM] (pairs across images are never read)
            mqm = iou[gt_rows.clamp(min=0)[:, :, None], cand_rows.clamp(min=0)[:, None, :]]  # [N, Gmax, Mmax]
            mqm = torch.where(valid_gt[:, :, None], mqm, mqm.new_full((), -1.0))
        else:
            mqm = cand_pad.new_full((n, 1, cand_pad.shape[1]), -1.0)
        matches = self.proposal_matcher(mqm)  # [N, Mmax]
        max_iou = mqm.max(dim=1).values  # [N, Mmax]
        fg = matches >= 0
        bg = (matches == Matcher.BELOW_LOW_THRESHOLD) & ((max_iou >= self.bg_iou_low) | ~has_gt[:, None])
        labels = torch.full_like(matches, IGNORE)
        labels[bg] = NEGATIVE
        labels[fg] = POSITIVE
        labels[~valid_cand] = IGNORE
        pos, neg = sample_labels(labels, self.batch_size_per_image, self.positive_fraction, self.generator)  # [N, Mmax]
        img, col = torch.nonzero(pos | neg, as_tuple=True)  # sampled RoIs, grouped by image
        rois = cand_pad[img, col]  # [R, 4]
        matched = matches[img, col].clamp(min=0)  # [R]
        gt_row = gt_rows[img, matched]  # [R], -1 in images without GT
        is_fg = pos[img, col]
        class_labels = torch.where(is_fg, gt_labels[gt_row.clamp(min=0)] if len(gt_labels) else torch.zeros_like(img), torch.zeros_like(img))
        fg_targets = self.box_coder.encode(rois[is_fg], gt_pad[img[is_fg], matched[is_fg]])  # [#fg, 4]
        counts = torch.bincount(img, minlength=n).tolist()
        return list(torch.split(rois, counts)), class_labels, fg_targets

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Returns (detections per image, empty in training; losses, empty in inference)."""
        if self.training:
            if targets is None:
                raise ValueError("the RoI heads need targets in training mode")
            proposals, labels, fg_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_sizes))  # [R, D]
        class_logits, box_regression = self.box_predictor(box_features)  # [R, C+1], [R, 4(C+1)]
        box_dtype = full_precision(class_logits.dtype)  # losses, decoding and NMS in float32 under autocast
        class_logits, box_regression = class_logits.to(box_dtype), box_regression.to(box_dtype)
        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, fg_targets, self.smooth_l1_beta)
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}
        return self.postprocess_detections(class_logits, box_regression, proposals, image_sizes), {}

    @contextmanager
    def keeping_probabilities(self, enabled: bool = True) -> Iterator[None]:
        """Inside the block, inference outputs also carry ``"probabilities"`` [D, C+1] when ``enabled``."""
        before, self.class_probabilities = self.class_probabilities, enabled
        try:
            yield
        finally:
            self.class_probabilities = before

    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Scores and class-specific boxes -> per image {"boxes" [D, 4], "labels" [D], "scores" [D]} by decreasing
        score, and ``"probabilities"`` [D, C+1] with ``class_probabilities`` (the RoI of each detection's row)."""
        n, device = len(proposals), class_logits.device
        num_classes = class_logits.shape[-1]  # C + 1
        counts = torch.tensor([len(p) for p in proposals], device=device)
        rois = torch.cat(proposals)  # [R, 4]
        roi_image = torch.repeat_interleave(torch.arange(n, device=device), counts)  # [R]
        if self.temperature != 1.0:
            class_logits = class_logits / self.temperature
        probabilities = F.softmax(class_logits, -1)  # [R, C+1]
        scores = probabilities[:, 1:]  # [R, C], background dropped
        roi_idx, cls = torch.nonzero(scores > self.score_thresh, as_tuple=True)  # candidates, cls in 0..C-1
        cls = cls + 1
        cand_scores = scores[roi_idx, cls - 1]
        deltas = box_regression.view(len(rois), num_classes, 4)[roi_idx, cls]  # [Q, 4]
        boxes = self.box_coder.decode(deltas, rois[roi_idx])  # [Q, 4]
        image = roi_image[roi_idx]
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)[image]  # [Q, 2] (h, w)
        bound = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)
        boxes = torch.minimum(boxes.clamp(min=0), bound)  # clip_boxes_to_image, per image
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_size)
        boxes, cand_scores, cls, image, roi_idx = boxes[keep], cand_scores[keep], cls[keep], image[keep], roi_idx[keep]
        kept = ops.batched_nms(boxes, cand_scores, image * num_classes + cls, self.nms_thresh) if len(boxes) else cls.new_zeros((0,))
        rows = (roi_idx,) if self.class_probabilities else ()  # [Q]: each candidate's RoI, its row gathered once kept
        if self.score_map is not None:
            cand_scores = calibrated_scores(cand_scores, self.score_map)
        per_image = split_top_n(kept, image[kept], n, self.detections_per_img, boxes, cand_scores, cls, *rows)
        return [
            {"boxes": b, "labels": lb, "scores": s, **({"probabilities": probabilities[r[0]]} if r else {})} for b, s, lb, *r in zip(*per_image)
        ]
