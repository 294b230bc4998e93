"""The inference of a ``FasterRCNN`` as one traceable graph: image in, detections out.

``DeployGraph(model)(image)`` computes, for one image ``Tensor[3, H, W]`` (RGB in [0, 1], any H, W),
the same detections as ``model([image])[0]`` in eval mode, written so that tracing it
(``torch.onnx.export(..., dynamo=False)``) gives a graph of standard ONNX operators whose sizes
follow the input:

- the data-dependent steps are autograd Functions with an ONNX ``symbolic``: TopK with a
  computed k, NonMaxSuppression, RoiAlign, MaxRoiPool, Resize to a computed size, Pad, Range;
  their ``forward`` runs this package's ops, so the module also runs eagerly (tests compare it);
- every size is a tensor computed from the input's shape, never a Python number fixed at trace time.

Shape shorthand:
    H x W    the input image;  h x w  after resizing;  Hp x Wp  padded to ``size_divisible``
    L        feature levels;  Tl  anchors of level l;  K  proposals before NMS (all levels)
    P        proposals after NMS;  C  foreground classes;  S  boxes kept by an NMS;  D  detections

Boxes are ``(x1, y1, x2, y2)`` float pixels: of the resized image inside, of the input image out.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasterrcnn import ops
from fasterrcnn.evaluation.calibration import calibrated_scores
from fasterrcnn.modeling.anchors import cell_anchors
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from fasterrcnn.modeling.roi_heads import SingleLevelRoIPool
from fasterrcnn.ops.roi_align import MultiScaleRoIAlign, RoIAlign, RoIPool, map_levels

# Masked scores for NonMaxSuppression: every real score (sigmoid / softmax, in [0, 1]) is above the
# threshold, every masked one below it, whether a runtime keeps scores > or >= the threshold.
_MASKED_SCORE = -1.0
_NMS_SCORE_THRESHOLD = -0.5


def _const(g, value, dtype=None):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


@contextmanager
def _untraced():
    """Runs the eager body of a Function without recording it (sizes stay Python ints inside)."""
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)


def _omitted(g):
    """An omitted optional input (an empty input name in the ONNX node)."""
    value = g.op("prim::Constant")
    value.setType(torch._C.OptionalType.ofTensor())
    return value


class _Shape(torch.autograd.Function):
    """Tensor[rank] int64: the shape of ``x`` (ONNX Shape)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.tensor(x.shape, dtype=torch.int64)

    @staticmethod
    def symbolic(g, x):
        return g.op("Shape", x)


class _Range(torch.autograd.Function):
    """0, 1, ..., n - 1 for a 0-dim int64 ``n`` (ONNX Range)."""

    @staticmethod
    def forward(ctx, n: Tensor) -> Tensor:
        return torch.arange(int(n), dtype=torch.int64)

    @staticmethod
    def symbolic(g, n):
        return g.op("Range", _const(g, 0, torch.int64), n, _const(g, 1, torch.int64))


class _TopK(torch.autograd.Function):
    """The ``k`` (0-dim int64 tensor) largest of a 1-D ``x``: (values, indices), by decreasing value."""

    @staticmethod
    def forward(ctx, x: Tensor, k: Tensor):
        return torch.topk(x, int(k))

    @staticmethod
    def symbolic(g, x, k):
        k1 = g.op("Reshape", k, _const(g, [1], torch.int64))
        return g.op("TopK", x, k1, axis_i=0, largest_i=1, sorted_i=1, outputs=2)


class _ResizeBilinear(torch.autograd.Function):
    """[1, 3, H, W] -> [1, 3, h, w] for ``size`` = Tensor[2] (h, w): bilinear, half-pixel centres, no
    antialiasing (``F.interpolate(..., mode="bilinear", align_corners=False)``, ONNX Resize 'linear')."""

    @staticmethod
    def forward(ctx, x: Tensor, size: Tensor) -> Tensor:
        return F.interpolate(x, size=tuple(size.tolist()), mode="bilinear", align_corners=False)

    @staticmethod
    def symbolic(g, x, size):
        sizes = g.op("Concat", _const(g, [1, 3], torch.int64), size, axis_i=0)
        return g.op("Resize", x, _omitted(g), _omitted(g), sizes, mode_s="linear", coordinate_transformation_mode_s="half_pixel")


class _PadBottomRight(torch.autograd.Function):
    """[1, 3, h, w] -> [1, 3, Hp, Wp], zeros below and right, for ``size`` = Tensor[2] (Hp, Wp)."""

    @staticmethod
    def forward(ctx, x: Tensor, size: Tensor) -> Tensor:
        hp, wp = size.tolist()
        return F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2]))

    @staticmethod
    def symbolic(g, x, size):
        hw = g.op("Slice", g.op("Shape", x), _const(g, [2], torch.int64), _const(g, [4], torch.int64))
        pads = g.op("Concat", _const(g, [0, 0, 0, 0, 0, 0], torch.int64), g.op("Sub", size, hw), axis_i=0)
        return g.op("Pad", x, pads)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes [B, N, 4] xyxy, scores [B, G, N] (masked entries ``_MASKED_SCORE``)
    -> Tensor[S, 3] int64 (batch, group, box) kept, within each (batch, group) by decreasing score, at most
    ``max_per_group`` per (batch, group); a box is dropped when its IoU (no +1) with a kept one is > iou."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_group: int, iou_threshold: float) -> Tensor:
        with _untraced():
            return _NonMaxSuppression.eager(boxes, scores, max_per_group, iou_threshold)

    @staticmethod
    def eager(boxes: Tensor, scores: Tensor, max_per_group: int, iou_threshold: float) -> Tensor:
        selected = []
        for b in range(boxes.shape[0]):
            for c in range(scores.shape[1]):
                idx = torch.nonzero(scores[b, c] > _NMS_SCORE_THRESHOLD).squeeze(1)
                keep = idx[ops.nms(boxes[b, idx], scores[b, c, idx], iou_threshold)][:max_per_group]
                selected.append(torch.stack((torch.full_like(keep, b), torch.full_like(keep, c), keep), dim=1))
        return torch.cat(selected)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_group, iou_threshold):
        return g.op(
            "NonMaxSuppression", boxes, scores, _const(g, [max_per_group], torch.int64),
            _const(g, [iou_threshold], torch.float32), _const(g, [_NMS_SCORE_THRESHOLD], torch.float32),
        )


class _RoiAlign(torch.autograd.Function):
    """ONNX RoiAlign (mode 'avg') of one image's feature map [1, C, H, W] at ``rois`` [R, 4] -> [R, C, oh, ow].
    aligned=False is 'output_half_pixel' (the RoI is not shifted by half a cell), True 'half_pixel';
    sampling_ratio 0 is adaptive (ceil(RoI size / output size) samples per bin) in both."""

    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
        with _untraced():
            return ops.roi_align(x, [rois], output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def symbolic(g, x, rois, output_size, spatial_scale, sampling_ratio, aligned):
        count = g.op("Slice", g.op("Shape", rois), _const(g, [0], torch.int64), _const(g, [1], torch.int64))
        batch_indices = g.op("ConstantOfShape", count, value_t=torch.tensor([0], dtype=torch.int64))  # [R], all image 0
        return g.op(
            "RoiAlign", x, rois, batch_indices,
            coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel",
            mode_s="avg", output_height_i=output_size[0], output_width_i=output_size[1],
            sampling_ratio_i=sampling_ratio, spatial_scale_f=spatial_scale,
        )


class _MaxRoiPool(torch.autograd.Function):
    """ONNX MaxRoiPool (Fast R-CNN's RoIPool) of a feature map [1, C, H, W] at ``rois`` [R, 4] -> [R, C, oh, ow]."""

    @staticmethod
    def forward(ctx, x: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float) -> Tensor:
        with _untraced():
            return ops.roi_pool(x, [rois], output_size, spatial_scale)

    @staticmethod
    def symbolic(g, x, rois, output_size, spatial_scale):
        count = g.op("Slice", g.op("Shape", rois), _const(g, [0], torch.int64), _const(g, [1], torch.int64))
        zeros = g.op("ConstantOfShape", g.op("Concat", count, _const(g, [1], torch.int64), axis_i=0), value_t=torch.tensor([0.0]))
        rois5 = g.op("Concat", zeros, rois, axis_i=1)  # [R, 5]: (batch index, x1, y1, x2, y2)
        return g.op("MaxRoiPool", x, rois5, pooled_shape_i=list(output_size), spatial_scale_f=spatial_scale)


# Powers of two 2^-11 .. 2^7, exact in float32: the exponent E of a float32 scale by comparisons;
# 2^(16 - k) and 2^-k as float32 for k = 0..40 (gathered, not computed by Pow, which runtimes may approximate).
_POWERS = torch.pow(2.0, torch.arange(-11, 8, dtype=torch.float64)).float()
_POW2 = torch.pow(2.0, torch.arange(0, 41, dtype=torch.float64)).float()
_POW2_INV = torch.pow(2.0, -torch.arange(0, 41, dtype=torch.float64)).float()


def resized_size(size: Tensor, min_size: int, max_size: int) -> Tensor:
    """The (h, w) ``transform.resize_image`` gives an image of ``size`` = Tensor[2] int64 (H, W).

    ``resize_image`` takes s = min(min_size / min(H, W), max_size / max(H, W)) in float32 and the size
    floor(H * s) computed in float64. Runtimes may compute float64 in float32 (OpenVINO does, where
    H * s rounds and is one pixel off for about half of all sizes) and int64 in int32, so the product
    is taken with float32 operations that are all exact: s = M * 2^-k with the 24-bit integer mantissa
    M = a * 2^16 + b * 2^8 + c (bytes a, b, c; products with powers of two are exact), and
    floor(H * s) = floor((H * a + floor((H * b + floor(H * c / 2^8)) / 2^8)) / 2^(k - 16)), where every
    product and sum stays below 2^24. Valid for H, W < 2^15 and scales in [2^-11, 2^8).
    """
    hw = size.to(torch.float32)
    short, long = torch.minimum(hw[0], hw[1]), torch.maximum(hw[0], hw[1])  # not ReduceMin: OpenVINO folds it wrongly here
    scale = torch.minimum(float(min_size) / short, float(max_size) / long)  # float32, as resize_image
    k = (35 - (scale >= _POWERS).sum()).reshape(1)  # [1] 23 - E for 2^E <= s < 2^(E + 1)
    mantissa = scale * _POW2.index_select(0, k)  # [1] M in [2^23, 2^24), integer-valued
    a = torch.floor(mantissa * 2.0**-16)
    b = torch.floor(mantissa * 2.0**-8) - a * 256.0
    c = mantissa - (a * 65536.0 + b * 256.0)
    low = torch.floor(hw * c * 2.0**-8)  # [2]
    floor_y = hw * a + torch.floor((hw * b + low) * 2.0**-8)
    resized = torch.floor(floor_y * _POW2_INV.index_select(0, k - 16)).to(torch.int64)
    # A no-op (both sides are <= max_size) that bounds the size for runtimes that allocate for the
    # upper bound they derive from the graph.
    return torch.clamp(resized, max=max_size)


class DeployGraph(nn.Module):
    """``forward(image: Tensor[3, H, W]) -> (boxes [D, 4] input pixels, labels [D] int64 1..C, scores [D])``.

    ``model`` is a ``FasterRCNN`` (used as is; fold its BatchNorm first for a smaller graph). Resizing
    (``min_size`` / ``max_size``), normalization and padding happen inside, as in ``model.transform``.
    """

    def __init__(self, model: FasterRCNN):
        super().__init__()
        self.model = model.eval()
        t = model.transform
        self.min_size, self.max_size, self.size_divisible = t.min_size, t.max_size, t.size_divisible
        self.register_buffer("mean", torch.tensor(t.image_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(t.image_std).view(3, 1, 1), persistent=False)
        self.bgr255 = t.pixel_format == "caffe_bgr255"
        gen = model.rpn.anchor_generator
        self.cell_anchors = [cell_anchors(s, r) for s, r in zip(gen.sizes, gen.aspect_ratios)]
        self.strides = self._feature_strides()

    @torch.no_grad()
    def _feature_strides(self) -> dict[str, int]:
        """Stride of every feature map of the backbone (from one forward pass of a 128 x 128 input)."""
        features = self.model.backbone(torch.zeros(1, 3, 128, 128))
        if isinstance(features, Tensor):
            features = {"0": features}
        return {name: 128 // f.shape[-1] for name, f in features.items()}

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        size = _Shape.apply(image)[1:]  # [2] (H, W)
        x = image[[2, 1, 0]] * 255.0 - self.mean if self.bgr255 else image - self.mean
        x = x / self.std
        resized = resized_size(size, self.min_size, self.max_size)  # [2] (h, w)
        x = _ResizeBilinear.apply(x[None], resized)  # [1, 3, h, w]
        d = self.size_divisible
        padded = torch.div(resized + (d - 1), d, rounding_mode="floor") * d  # [2] (Hp, Wp)
        x = _PadBottomRight.apply(x, padded)
        features = self.model.backbone(x)
        if isinstance(features, Tensor):
            features = {"0": features}
        bound = resized.flip(0).repeat(2).to(torch.float32)  # [4] (w, h, w, h)
        proposals = self.propose(features, padded, bound)
        rois, pooled = self.pool(features, proposals)
        class_logits, box_regression = self.model.roi_heads.box_predictor(self.model.roi_heads.box_head(pooled))
        boxes, labels, scores = self.detect(class_logits, box_regression, rois, bound)
        ratio = size.to(torch.float32) / resized.to(torch.float32)  # [2] (H / h, W / w), float32 as resize_boxes
        return boxes * ratio.flip(0).repeat(2), labels, scores

    def anchors(self, level: int, feature: Tensor, padded: Tensor) -> Tensor:
        """Anchors [Hl*Wl*A, 4] of ``level`` on the padded image (anchors.grid_anchors, strides Hp // Hl)."""
        grid = _Shape.apply(feature)[2:]  # [2] (Hl, Wl)
        stride = torch.div(padded, grid, rounding_mode="floor")  # [2]
        ys = _Range.apply(grid[0]) * stride[0]
        xs = _Range.apply(grid[1]) * stride[1]
        shift_y = ys[:, None].expand(-1, xs.shape[0]).reshape(-1)
        shift_x = xs[None, :].expand(ys.shape[0], -1).reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(torch.float32)  # [Hl*Wl, 4]
        return (shifts[:, None, :] + self.cell_anchors[level][None]).reshape(-1, 4)

    def propose(self, features: dict[str, Tensor], padded: Tensor, bound: Tensor) -> Tensor:
        """RPN proposals [P, 4] (rpn.filter_proposals): per level top-k, decode, clip, drop small, NMS per level, top-P."""
        rpn = self.model.rpn
        feats = list(features.values())
        logits, deltas = rpn.head(feats)
        level_boxes, level_scores = [], []
        for level, (lg, dl) in enumerate(zip(logits, deltas)):
            objectness = lg[0].permute(1, 2, 0).reshape(-1)  # [Tl] order (y, x, a)
            num_anchors = lg.shape[1]
            level_deltas = dl[0].reshape(num_anchors, 4, -1).permute(2, 0, 1).reshape(-1, 4)  # [Tl, 4]
            k = torch.clamp(_Shape.apply(objectness)[0], max=rpn.pre_nms_top_n())
            top_logits, top = _TopK.apply(objectness, k)
            anchors = self.anchors(level, feats[level], padded).index_select(0, top)
            boxes = rpn.box_coder.decode(level_deltas.index_select(0, top), anchors)  # [k, 4]
            level_boxes.append(torch.minimum(boxes.clamp(min=0), bound))
            level_scores.append(torch.sigmoid(top_logits))
        boxes = torch.cat(level_boxes)  # [K, 4]
        scores = torch.cat(level_scores)  # [K]
        valid = ((boxes[:, 2] - boxes[:, 0]) >= rpn.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= rpn.min_size) & (scores >= rpn.score_thresh)
        # One NMS group per level: scores [1, L, K], a box's score in its own level's row only.
        rows = [torch.full_like(s, float(level)) for level, s in enumerate(level_scores)]
        level_of = torch.cat(rows)  # [K]
        own = (level_of[None, :] == torch.arange(len(feats), dtype=torch.float32)[:, None]) & valid[None, :]  # [L, K]
        masked = torch.where(own, scores[None, :], torch.full_like(scores, _MASKED_SCORE)[None, :])
        post_n = rpn.post_nms_top_n()
        kept = _NonMaxSuppression.apply(boxes[None], masked[None], post_n, rpn.nms_thresh)[:, 2]  # [S]
        k = torch.clamp(_Shape.apply(kept)[0], max=post_n)
        _, top = _TopK.apply(scores.index_select(0, kept), k)
        return boxes.index_select(0, kept.index_select(0, top))  # [P, 4] by decreasing objectness

    def pool(self, features: dict[str, Tensor], proposals: Tensor) -> tuple[Tensor, Tensor]:
        """(RoIs [P, 4] in the order pooled, pooled features [P, C, oh, ow])."""
        pooler = self.model.roi_heads.box_roi_pool
        if isinstance(pooler, SingleLevelRoIPool):
            feature, op = features[pooler.featmap_name], pooler.pooler
            if isinstance(op, RoIPool):
                return proposals, _MaxRoiPool.apply(feature, proposals, op.output_size, op.spatial_scale)
            if isinstance(op, RoIAlign):
                return proposals, _RoiAlign.apply(feature, proposals, op.output_size, op.spatial_scale, op.sampling_ratio, op.aligned)
        if not isinstance(pooler, MultiScaleRoIAlign):
            raise TypeError(f"cannot export the box pooler {type(pooler).__name__}")
        names = [n for n in features if n in pooler.featmap_names]
        scales = [1.0 / self.strides[n] for n in names]
        if len(names) == 1:
            return proposals, _RoiAlign.apply(features[names[0]], proposals, pooler.output_size, scales[0], pooler.sampling_ratio, False)
        k_min, k_max = self.strides[names[0]].bit_length() - 1, self.strides[names[-1]].bit_length() - 1
        levels = map_levels([proposals], k_min, k_max, pooler.canonical_scale, pooler.canonical_level)  # [P]
        # RoIs grouped by level (their order does not matter to the detections): no scatter back needed.
        rois, pooled = [], []
        for level, (name, scale) in enumerate(zip(names, scales)):
            level_rois = proposals.index_select(0, torch.nonzero(levels == level).squeeze(1))
            rois.append(level_rois)
            pooled.append(_RoiAlign.apply(features[name], level_rois, pooler.output_size, scale, pooler.sampling_ratio, False))
        return torch.cat(rois), torch.cat(pooled)

    def detect(self, class_logits: Tensor, box_regression: Tensor, rois: Tensor, bound: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """roi_heads.postprocess_detections for one image: (boxes [D, 4], labels [D], scores [D]) by decreasing score."""
        heads = self.model.roi_heads
        num_classes = class_logits.shape[1] - 1  # C
        if heads.temperature != 1.0:  # a calibrated temperature (fasterrcnn calibrate), baked into the graph
            class_logits = class_logits / heads.temperature
        scores = F.softmax(class_logits, -1)[:, 1:]  # [P, C]
        boxes = heads.box_coder.decode(box_regression, rois).reshape(-1, num_classes + 1, 4)[:, 1:]  # [P, C, 4]
        boxes = torch.minimum(boxes.clamp(min=0), bound)
        valid = (scores > heads.score_thresh) & ((boxes[..., 2] - boxes[..., 0]) >= heads.min_size) & ((boxes[..., 3] - boxes[..., 1]) >= heads.min_size)
        masked = torch.where(valid, scores, torch.full_like(scores, _MASKED_SCORE))  # [P, C]
        # Class c's boxes are batch c of the NMS: class-specific boxes, NMS within a class.
        selected = _NonMaxSuppression.apply(boxes.transpose(0, 1), masked.t()[:, None, :], heads.detections_per_img, heads.nms_thresh)  # [S, 3]
        flat = selected[:, 2] * num_classes + selected[:, 0]  # [S] index into [P * C]
        kept_scores = masked.reshape(-1).index_select(0, flat)
        k = torch.clamp(_Shape.apply(flat)[0], max=heads.detections_per_img)
        top_scores, top = _TopK.apply(kept_scores, k)
        flat = flat.index_select(0, top)  # [D]
        if heads.score_map is not None:  # a calibrated score map (fasterrcnn calibrate), baked into the graph
            top_scores = calibrated_scores(top_scores, heads.score_map)
        return boxes.reshape(-1, 4).index_select(0, flat), selected[:, 0].index_select(0, top) + 1, top_scores
