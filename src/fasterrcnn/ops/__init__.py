"""Detection ops on float ``(x1, y1, x2, y2)`` boxes in absolute pixels: box math, the box coder,
non-maximum suppression and RoI pooling, in plain torch."""

from fasterrcnn.ops.box_coder import BoxCoder
from fasterrcnn.ops.boxes import box_area, box_convert, box_iou, clip_boxes_to_image, remove_small_boxes
from fasterrcnn.ops.nms import batched_nms, nms
from fasterrcnn.ops.roi_align import MultiScaleRoIAlign, RoIAlign, RoIPool, roi_align, roi_pool

__all__ = [
    "box_area",
    "box_iou",
    "clip_boxes_to_image",
    "remove_small_boxes",
    "box_convert",
    "BoxCoder",
    "nms",
    "batched_nms",
    "roi_align",
    "roi_pool",
    "RoIAlign",
    "RoIPool",
    "MultiScaleRoIAlign",
]
