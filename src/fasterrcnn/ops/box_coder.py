"""Box-delta encoding of the R-CNN papers: (dx, dy, dw, dh) of a target box relative to a reference box.

Boxes are float ``(x1, y1, x2, y2)`` in absolute pixels, width = x2 - x1. The math is torchvision's
``BoxCoder`` (``torchvision/models/detection/_utils.py``) operation for operation, so decoded boxes
are bit-close to torchvision's:

    w = x2 - x1,  ctr_x = x1 + 0.5 * w                  (same for y / h)
    encode:  dx = wx * (target_ctr_x - ref_ctr_x) / ref_w,   dw = ww * log(target_w / ref_w)
    decode:  dw = min(dw / ww, bbox_xform_clip),  ctr = dx / wx * w + ctr_x,  w' = exp(dw) * w,
             x1' = ctr - 0.5 * w',  x2' = ctr + 0.5 * w'

Shape shorthand: N boxes, K boxes per reference (class-specific deltas).
"""

import math

import torch
from torch import Tensor

from fasterrcnn.ops.boxes import _check_boxes

__all__ = ["BoxCoder"]


class BoxCoder:
    """Encode target boxes as deltas w.r.t. reference boxes (anchors or proposals) and decode back.

    Args:
        weights: (wx, wy, ww, wh) multipliers of the deltas; (1, 1, 1, 1) for the RPN, (10, 10, 5, 5)
            for the detection head.
        bbox_xform_clip: upper clamp of the decoded dw, dh before ``exp`` (default log(1000 / 16)).
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
                 bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 values (wx, wy, ww, wh), got {len(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip})"

    def encode(self, reference: Tensor, target: Tensor) -> Tensor:
        """Deltas of ``target`` w.r.t. ``reference``: Tensor[N, 4], Tensor[N, 4] xyxy -> Tensor[N, 4]
        (dx, dy, dw, dh), in the reference's dtype."""
        _check_boxes(reference, "reference")
        _check_boxes(target, "target")
        if reference.shape[0] != target.shape[0]:
            raise ValueError(f"reference and target must have the same number of boxes, "
                             f"got {reference.shape[0]} and {target.shape[0]}")
        target = target.to(reference.dtype)
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=reference.dtype, device=reference.device)

        ref_x1, ref_y1, ref_x2, ref_y2 = reference[:, 0:1], reference[:, 1:2], reference[:, 2:3], reference[:, 3:4]
        tgt_x1, tgt_y1, tgt_x2, tgt_y2 = target[:, 0:1], target[:, 1:2], target[:, 2:3], target[:, 3:4]

        ref_widths = ref_x2 - ref_x1  # [N, 1]
        ref_heights = ref_y2 - ref_y1
        ref_ctr_x = ref_x1 + 0.5 * ref_widths
        ref_ctr_y = ref_y1 + 0.5 * ref_heights

        tgt_widths = tgt_x2 - tgt_x1
        tgt_heights = tgt_y2 - tgt_y1
        tgt_ctr_x = tgt_x1 + 0.5 * tgt_widths
        tgt_ctr_y = tgt_y1 + 0.5 * tgt_heights

        dx = wx * (tgt_ctr_x - ref_ctr_x) / ref_widths
        dy = wy * (tgt_ctr_y - ref_ctr_y) / ref_heights
        dw = ww * torch.log(tgt_widths / ref_widths)
        dh = wh * torch.log(tgt_heights / ref_heights)
        return torch.cat((dx, dy, dw, dh), dim=1)  # [N, 4]

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """Boxes from deltas: Tensor[N, 4*K] (dx, dy, dw, dh per box), reference Tensor[N, 4] xyxy
        -> Tensor[N, 4*K] xyxy, computed in the deltas' dtype."""
        if not isinstance(deltas, Tensor) or deltas.dim() != 2 or deltas.shape[1] % 4 != 0:
            shape = list(deltas.shape) if isinstance(deltas, Tensor) else type(deltas).__name__
            raise ValueError(f"deltas must have shape [N, 4*K], got {shape}")
        _check_boxes(reference, "reference")
        if deltas.shape[0] != reference.shape[0]:
            raise ValueError(f"deltas and reference must have the same number of rows, "
                             f"got {deltas.shape[0]} and {reference.shape[0]}")
        reference = reference.to(deltas.dtype)

        widths = reference[:, 2] - reference[:, 0]  # [N]
        heights = reference[:, 3] - reference[:, 1]
        ctr_x = reference[:, 0] + 0.5 * widths
        ctr_y = reference[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0::4] / wx  # [N, K]
        dy = deltas[:, 1::4] / wy
        dw = deltas[:, 2::4] / ww
        dh = deltas[:, 3::4] / wh
        # Keep exp() finite for wild predictions.
        dw = torch.clamp(dw, max=self.bbox_xform_clip)
        dh = torch.clamp(dh, max=self.bbox_xform_clip)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]

        half = torch.tensor(0.5, dtype=deltas.dtype, device=deltas.device)
        x1 = pred_ctr_x - half * pred_w
        y1 = pred_ctr_y - half * pred_h
        x2 = pred_ctr_x + half * pred_w
        y2 = pred_ctr_y + half * pred_h
        return torch.stack((x1, y1, x2, y2), dim=2).flatten(1)  # [N, K, 4] -> [N, 4*K]
