"""Box math on float ``(x1, y1, x2, y2)`` boxes in absolute pixels (continuous coordinates).

Width is ``x2 - x1`` and height ``y2 - y1`` (no legacy ``+ 1``). Every function is pure: it keeps
the input's device and dtype, never modifies its input and is differentiable where the math is.

Shape shorthand: N, M boxes.
"""

import torch
from torch import Tensor

__all__ = ["box_area", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "box_convert"]

_FORMATS = ("xyxy", "xywh", "cxcywh")


def _check_boxes(boxes: Tensor, name: str = "boxes") -> None:
    """Raise ValueError unless ``boxes`` is a floating Tensor[N, 4]."""
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a Tensor[N, 4], got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape [N, 4], got {list(boxes.shape)}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 box math overflows (areas of 1000 px boxes): compute those (and integer
    boxes, for IoU) in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _area_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an area is computed and returned in, as torchvision's ``_upcast``: an area outgrows
    the coordinates' range (a 100 x 100 int8 box, a 300 x 300 float16 one), so float16/bfloat16
    widen to float32 and integer types narrower than int32 (int8, int16, uint8, bool) to int32."""
    if dtype.is_floating_point:
        return dtype if dtype in (torch.float32, torch.float64) else torch.float32
    return dtype if dtype in (torch.int32, torch.int64) else torch.int32


def box_area(boxes: Tensor) -> Tensor:
    """Area of boxes: Tensor[N, 4] xyxy -> Tensor[N] = (x2 - x1) * (y2 - y1).

    The result is float32, float64, int32 or int64: small types widen first (see ``_area_dtype``),
    as in torchvision, so neither the differences nor the product overflow.
    """
    _check_boxes(boxes)
    b = boxes.to(_area_dtype(boxes.dtype))
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _pairwise_iou(b1: Tensor, b2: Tensor) -> Tensor:
    """IoU of broadcastable xyxy boxes ``b1[..., 4]`` and ``b2[..., 4]`` (already in the compute dtype).

    The one formula used by box_iou and nms, op for op, so both give bit-identical values:
    inter = clamp(min(x2) - max(x1), 0) * clamp(min(y2) - max(y1), 0),
    union = (area1 + area2) - inter, iou = inter / union, and 0 where union <= 0.
    """
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    lt = torch.maximum(b1[..., :2], b2[..., :2])
    rb = torch.minimum(b1[..., 2:], b2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1 + area2 - inter
    positive = union > 0
    # Dividing by 1 where union <= 0 keeps both the value and its gradient finite (inter is 0 there).
    safe_union = torch.where(positive, union, torch.ones_like(union))
    return torch.where(positive, inter / safe_union, torch.zeros_like(inter))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise intersection over union of xyxy boxes: Tensor[N, 4], Tensor[M, 4] -> Tensor[N, M].

    Disjoint boxes and zero-area boxes (even two identical ones) have IoU 0, never NaN.
    The result has the inputs' (promoted) floating dtype; float16/bfloat16 are computed in float32
    and cast back; integer boxes give float32.
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    out_dtype = torch.promote_types(boxes1.dtype, boxes2.dtype)
    if not out_dtype.is_floating_point:
        out_dtype = torch.float32
    dtype = _compute_dtype(out_dtype)
    iou = _pairwise_iou(boxes1.to(dtype)[:, None, :], boxes2.to(dtype)[None, :, :])  # [N, M]
    return iou.to(out_dtype)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp xyxy boxes Tensor[..., 4] into an image of ``size = (height, width)``: x to [0, width],
    y to [0, height]. Returns a new Tensor of the same shape."""
    if not isinstance(boxes, Tensor) or boxes.dim() == 0 or boxes.shape[-1] != 4:
        shape = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must have shape [..., 4], got {shape}")
    height, width = size
    x = boxes[..., 0::2].clamp(min=0, max=width)  # [..., 2] (x1, x2)
    y = boxes[..., 1::2].clamp(min=0, max=height)  # [..., 2] (y1, y2)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)  # [..., 2, 2] -> [..., 4] x1 y1 x2 y2


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices (Tensor[K] int64, increasing) of xyxy boxes Tensor[N, 4] whose width and height are
    both >= ``min_size``."""
    _check_boxes(boxes)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    keep = (widths >= min_size) & (heights >= min_size)
    return torch.nonzero(keep).flatten()


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert Tensor[N, 4] boxes between formats:

    - "xyxy": (x1, y1, x2, y2) corners,
    - "xywh": (x1, y1, w, h) top-left corner and size (COCO),
    - "cxcywh": (cx, cy, w, h) centre and size.
    """
    _check_boxes(boxes)
    for fmt in (in_fmt, out_fmt):
        if fmt not in _FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {', '.join(_FORMATS)}")
    if in_fmt == out_fmt:
        return boxes.clone()
    a, b, c, d = boxes.unbind(-1)
    if in_fmt == "xywh":
        a, b, c, d = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        a, b, c, d = a - 0.5 * c, b - 0.5 * d, a + 0.5 * c, b + 0.5 * d
    # now (a, b, c, d) = (x1, y1, x2, y2)
    if out_fmt == "xywh":
        a, b, c, d = a, b, c - a, d - b
    elif out_fmt == "cxcywh":
        a, b, c, d = (a + c) / 2, (b + d) / 2, c - a, d - b
    return torch.stack((a, b, c, d), dim=-1)
