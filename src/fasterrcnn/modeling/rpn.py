"""Region Proposal Network (Ren et al., section 3.1): objectness and box deltas for every anchor.

Shape shorthand:
    N   images in the batch
    L   feature levels
    A   anchors per cell
    Hi x Wi  feature map of level i;  T = sum_i Hi*Wi*A  anchors of all levels
    G   ground-truth boxes of an image (Gmax: the most in the batch)
    K   proposals kept before NMS, per image, over all levels
    P   proposals returned for an image

Boxes are ``(x1, y1, x2, y2)`` in pixels of the transformed (resized) image. The algorithm is
torchvision's (``torchvision/models/detection/rpn.py``), computed for the whole batch at once:
one top-k over the padded levels, decoding of the selected anchors only, one batched NMS for all
images and levels, one IoU matrix and one sampling call for the anchor targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasterrcnn import ops
from fasterrcnn.modeling.anchors import AnchorGenerator
from fasterrcnn.modeling.matching import IGNORE, NEGATIVE, POSITIVE, Matcher, sample_labels


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 convs to A objectness logits and 4A box deltas per cell.

    Submodule names are torchvision's (``conv.0.0``, ``cls_logits``, ``bbox_pred``); the same head
    serves every level. Weights ~ N(0, 0.01), biases 0 (the paper and torchvision).
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0.0)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """features: list of Tensor[N, C, Hi, Wi] -> (logits [N, A, Hi, Wi] per level, deltas [N, 4A, Hi, Wi] per level)."""
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def flatten_head_outputs(logits: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> objectness Tensor[N, T] and deltas Tensor[N, T, 4], anchor order (y, x, a)."""
    flat_logits, flat_deltas = [], []
    for lg, dl in zip(logits, deltas):
        n, a, h, w = lg.shape
        flat_logits.append(lg.permute(0, 2, 3, 1).reshape(n, h * w * a))  # [N, Hi*Wi*A]
        flat_deltas.append(dl.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))  # [N, Hi*Wi*A, 4]
    return torch.cat(flat_logits, dim=1), torch.cat(flat_deltas, dim=1)


def padded_gt(gt_boxes: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """GT boxes of N images -> (concatenated Tensor[sum G, 4], padded Tensor[N, Gmax, 4], row index Tensor[N, Gmax]
    into the concatenation (-1 for padding))."""
    counts = torch.tensor([len(b) for b in gt_boxes])
    gmax = max(int(counts.max()), 1) if len(gt_boxes) else 1
    cat = torch.cat(gt_boxes, dim=0)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.arange(gmax)
    rows = torch.where(col[None, :] < counts[:, None], starts[:, None] + col[None, :], torch.full((1,), -1))  # [N, Gmax]
    rows = rows.to(cat.device)
    padded = torch.where((rows >= 0)[..., None], cat[rows.clamp(min=0)] if len(cat) else cat.new_zeros(rows.shape + (4,)), cat.new_zeros(()))
    return cat, padded, rows


def full_precision(dtype: torch.dtype) -> torch.dtype:
    """float32 for the reduced precisions of autocast (float16, bfloat16), else ``dtype`` (float32 / float64)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def smooth_l1_sum(input: Tensor, target: Tensor, beta: float) -> Tensor:
    """Sum of the smooth-L1 losses (0 for empty inputs)."""
    return F.smooth_l1_loss(input, target, beta=beta, reduction="sum")


class RegionProposalNetwork(nn.Module):
    """Anchors -> head -> proposals (both modes) and, in training, anchor targets and losses.

    Training labels (per image): IoU >= ``fg_iou_thresh`` POSITIVE, < ``bg_iou_thresh`` NEGATIVE,
    the best anchor(s) of every GT POSITIVE, the rest IGNORE; with ``ignore_cross_boundary`` (the
    paper) anchors not inside the (unpadded) image are IGNORE and never matched. Sampled:
    ``batch_size_per_image`` anchors, at most ``positive_fraction`` positive.
    Losses (torchvision): ``loss_objectness`` = mean binary cross-entropy over sampled anchors,
    ``loss_rpn_box_reg`` = smooth-L1 summed over sampled positives / number of sampled anchors
    (both 0 when no anchor is sampled, e.g. no anchor lies inside the image under the border flag).
    Proposals are detached (approximate joint training).
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        *,
        fg_iou_thresh: float,
        bg_iou_thresh: float,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_top_n: dict[str, int],
        post_nms_top_n: dict[str, int],
        nms_thresh: float,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
        ignore_cross_boundary: bool = False,
        smooth_l1_beta: float = 1.0 / 9.0,
    ):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = ops.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self._pre_nms_top_n = dict(pre_nms_top_n)
        self._post_nms_top_n = dict(post_nms_top_n)
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size
        self.ignore_cross_boundary = ignore_cross_boundary
        self.smooth_l1_beta = smooth_l1_beta
        self.generator: torch.Generator | Sequence[torch.Generator] | None = None  # one, or one per image

    def pre_nms_top_n(self) -> int:
        return self._pre_nms_top_n["training" if self.training else "testing"]

    def post_nms_top_n(self) -> int:
        return self._post_nms_top_n["training" if self.training else "testing"]

    def forward(self, images, features: dict[str, Tensor], targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """images: ImageList (padded tensors [N, 3, H, W] + image_sizes); features: name -> [N, C, Hi, Wi].

        Returns (proposals: list of Tensor[P, 4] per image, by decreasing objectness; losses dict,
        empty unless training).
        """
        feats = list(features.values())
        logits, deltas = self.head(feats)
        grid_sizes = [tuple(f.shape[-2:]) for f in feats]
        box_dtype = full_precision(feats[0].dtype)  # float32 boxes under autocast
        anchors_per_level = self.anchor_generator(tuple(images.tensors.shape[-2:]), grid_sizes, dtype=box_dtype, device=feats[0].device)
        num_per_level = [len(a) for a in anchors_per_level]
        anchors = torch.cat(anchors_per_level, dim=0)  # [T, 4]
        objectness, pred_deltas = flatten_head_outputs(logits, deltas)  # [N, T], [N, T, 4]
        objectness, pred_deltas = objectness.to(box_dtype), pred_deltas.to(box_dtype)  # selection, decoding, losses in float32

        proposals = self.filter_proposals(objectness.detach(), pred_deltas.detach(), anchors, num_per_level, images.image_sizes)
        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("the RPN needs targets in training mode")
            losses = self.compute_loss(objectness, pred_deltas, anchors, targets, images.image_sizes)
        return proposals, losses

    def filter_proposals(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, num_per_level: list[int], image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Per level top-N by objectness, decode, clip, drop small and low-score boxes, NMS per level, top-N per image."""
        n, device = objectness.shape[0], objectness.device
        num_levels = len(num_per_level)
        pre_n = self.pre_nms_top_n()
        if num_levels == 1:
            k = min(pre_n, num_per_level[0])
            top_idx = objectness.topk(k, dim=1).indices  # [N, K]
            levels = torch.zeros(k, dtype=torch.int64, device=device)
        else:
            # Pad the levels to one [N, L, Tmax] tensor (-inf) and take every level's top-N in one call.
            tmax = max(num_per_level)
            k = min(pre_n, tmax)
            counts = torch.tensor(num_per_level, device=device)
            starts = torch.cumsum(counts, 0) - counts
            col = torch.arange(tmax, device=device)
            src = (starts[:, None] + col[None, :]).clamp(max=objectness.shape[1] - 1)  # [L, Tmax]
            in_level = col[None, :] < counts[:, None]  # [L, Tmax]
            padded = torch.where(in_level, objectness[:, src], torch.full((), float("-inf"), dtype=objectness.dtype, device=device))  # [N, L, Tmax]
            top_in_level = padded.topk(k, dim=2).indices  # [N, L, K]
            valid = (torch.arange(k, device=device)[None, :] < counts[:, None]).reshape(-1)  # [L*K], same for every image
            top_idx = (top_in_level + starts[None, :, None]).reshape(n, -1)[:, valid]  # [N, K']
            levels = torch.arange(num_levels, device=device)[:, None].expand(num_levels, k).reshape(-1)[valid]  # [K']
            k = top_idx.shape[1]
        scores = torch.sigmoid(objectness.gather(1, top_idx))  # [N, K]
        boxes = self.box_coder.decode(deltas.gather(1, top_idx[..., None].expand(n, k, 4)).reshape(-1, 4), anchors[top_idx.reshape(-1)])
        boxes = boxes.view(n, k, 4)
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)  # [N, 2] (h, w)
        bound = torch.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], dim=1)[:, None, :]  # [N, 1, 4]
        boxes = torch.minimum(boxes.clamp(min=0), bound)  # clip_boxes_to_image, per image
        keep = ((boxes[..., 2] - boxes[..., 0]) >= self.min_size) & ((boxes[..., 3] - boxes[..., 1]) >= self.min_size)
        keep &= scores >= self.score_thresh  # [N, K]
        image_idx = torch.arange(n, device=device)[:, None].expand(n, k)
        group = image_idx * num_levels + levels[None, :]  # NMS within (image, level)
        image_idx, boxes, scores, group = image_idx[keep], boxes[keep], scores[keep], group[keep]
        kept = ops.batched_nms(boxes, scores, group, self.nms_thresh) if len(boxes) else group.new_zeros((0,))
        return split_top_n(kept, image_idx[kept], n, self.post_nms_top_n(), boxes)

    def assign_targets(self, anchors: Tensor, gt_boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Label every anchor of every image -> (labels [N, T] IGNORE/NEGATIVE/POSITIVE, matched GT row [N, T]
        (valid where POSITIVE), padded GT boxes [N, Gmax, 4]).

        anchors [T, 4] (shared by the images of the padded batch); gt_boxes: list of [G, 4].
        """
        n, t = len(gt_boxes), len(anchors)
        cat_gt, gt_pad, rows = padded_gt([b.to(anchors.dtype) for b in gt_boxes])  # [sumG, 4], [N, Gmax, 4], [N, Gmax]
        valid_gt = rows >= 0
        if len(cat_gt):
            iou = ops.box_iou(cat_gt, anchors)  # [sumG, T]
            mqm = torch.where(valid_gt[..., None], iou[rows.clamp(min=0)], iou.new_full((), -1.0))  # [N, Gmax, T]
        else:
            mqm = anchors.new_full((n, 1, t), -1.0)
        if self.ignore_cross_boundary:
            sizes = torch.tensor(image_sizes, dtype=anchors.dtype, device=anchors.device)  # [N, 2] (h, w)
            inside = (anchors[None, :, 0] >= 0) & (anchors[None, :, 1] >= 0)
            inside = inside & (anchors[None, :, 2] <= sizes[:, 1:2]) & (anchors[None, :, 3] <= sizes[:, 0:1])  # [N, T]
            mqm = torch.where(inside[:, None, :], mqm, mqm.new_full((), -1.0))  # never matched, not even as "best"
        matches = self.proposal_matcher(mqm, valid_gt)  # [N, T]
        labels = torch.full_like(matches, IGNORE)
        labels[matches >= 0] = POSITIVE
        labels[matches == Matcher.BELOW_LOW_THRESHOLD] = NEGATIVE
        if self.ignore_cross_boundary:
            labels[~inside] = IGNORE
        return labels, matches, gt_pad

    def compute_loss(self, objectness: Tensor, pred_deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """Anchor targets, sampling and the two RPN losses for the whole batch (see the class docstring).

        objectness [N, T], pred_deltas [N, T, 4], anchors [T, 4].
        """
        labels, matches, gt_pad = self.assign_targets(anchors, [t["boxes"] for t in targets], image_sizes)
        pos, neg = sample_labels(labels, self.batch_size_per_image, self.positive_fraction, self.generator)  # [N, T] each
        sampled = pos | neg
        # Divided by max(1, count): an image with no anchor to sample (the border flag, an image smaller
        # than every anchor) gives losses of 0, not the NaN of a mean over nothing.
        num_sampled = sampled.sum().clamp(min=1)
        loss_objectness = F.binary_cross_entropy_with_logits(objectness[sampled], pos[sampled].to(objectness.dtype), reduction="sum") / num_sampled
        img, anchor_idx = torch.nonzero(pos, as_tuple=True)
        target_deltas = self.box_coder.encode(anchors[anchor_idx], gt_pad[img, matches[img, anchor_idx]])  # [#pos, 4]
        loss_box = smooth_l1_sum(pred_deltas[img, anchor_idx], target_deltas, self.smooth_l1_beta) / num_sampled
        return {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_box}


def split_top_n(kept: Tensor, image_of_kept: Tensor, num_images: int, top_n: int, boxes: Tensor, *others: Tensor):
    """``kept`` indices sorted by decreasing score (all images mixed) -> per image the first ``top_n``.

    Returns a list of ``boxes[...]`` per image (or, with ``others``, a tuple of such lists).
    """
    order = torch.sort(image_of_kept, stable=True).indices  # grouped by image, score order kept
    sorted_img = image_of_kept[order]
    counts = torch.bincount(image_of_kept, minlength=num_images)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(order), device=kept.device) - starts[sorted_img]
    chosen = kept[order[rank < top_n]]
    sizes = counts.clamp(max=top_n).tolist()
    if not others:
        return list(torch.split(boxes[chosen], sizes))
    return tuple(list(torch.split(t[chosen], sizes)) for t in (boxes, *others))
