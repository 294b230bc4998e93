"""Training-time augmentation acting on ``(image, target)`` pairs.

image: ``Tensor[3, H, W]``; target: dict with ``boxes`` float [K, 4] continuous xyxy (and, for COCO,
``crowd_boxes`` [Kc, 4]). Transforms return new tensors and a new dict; inputs are never modified.

Randomness: ``RandomHorizontalFlip(generator=None)`` draws from torch's global RNG. The loader
(``data/loader.py``) reseeds that RNG for every sample from ``(seed, epoch, index)``, so the
augmentation is reproducible and independent of worker count and of skipped batches. Pass a
seeded ``torch.Generator`` only when using the transform outside that loader.
"""

from __future__ import annotations

import torch

_BOX_KEYS = ("boxes", "crowd_boxes")
_OBJECT_KEYS = ("labels", "difficult", "iscrowd", "area")  # per-object values, filtered with "boxes"
TILE_MIN_VISIBLE = 0.3  # a box cut by a tile's edge is kept when at least this fraction of its area is inside
TILE_MIN_SIDE = 2.0  # ... and its part inside is at least this many pixels wide and tall


class Compose:
    """Apply ``transforms`` in order: ``(image, target) -> (image, target)``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target):
        for transform in self.transforms:
            image, target = transform(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def hflip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    """Mirror boxes [K, 4] xyxy in an image of ``width`` pixels: x1' = W - x2, x2' = W - x1."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def resize_boxes(boxes: torch.Tensor, size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Boxes [K, 4] xyxy in an image of ``size`` (h, w) -> the same boxes in that image resized to
    ``new_size`` (h', w'): x scaled by w' / w, y by h' / h. Returned unchanged when the sizes are equal."""
    if tuple(size) == tuple(new_size):
        return boxes
    scale_x, scale_y = new_size[1] / size[1], new_size[0] / size[0]
    return boxes * torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=boxes.dtype, device=boxes.device)


class RandomHorizontalFlip:
    """With probability ``p``, mirror the image and its boxes left-right."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None):
        self.p = p
        self.generator = generator

    def __call__(self, image, target):
        if torch.rand((), generator=self.generator).item() >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        for key in _BOX_KEYS:
            if key in target:
                target[key] = hflip_boxes(target[key], width)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def crop_boxes(
    boxes: torch.Tensor, window: tuple[int, int, int, int], min_visible: float = TILE_MIN_VISIBLE, min_side: float = TILE_MIN_SIDE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [K, 4] xyxy of an image -> ``(cropped, keep)``: ``cropped`` [K', 4] the kept boxes in the pixels of
    the crop ``window`` = (x1, y1, x2, y2), ``keep`` [K] bool. Each box is clipped to the window and shifted by
    its corner; it is kept when its clipped part holds at least ``min_visible`` of its area and is at least
    ``min_side`` pixels wide and tall."""
    x1, y1, x2, y2 = window
    low = torch.tensor([x1, y1, x1, y1], dtype=boxes.dtype)
    high = torch.tensor([x2, y2, x2, y2], dtype=boxes.dtype)
    clipped = torch.minimum(torch.maximum(boxes, low), high)
    sides = clipped[:, 2:] - clipped[:, :2]  # [K, 2]
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    keep = (sides.prod(dim=1) >= min_visible * areas) & (sides >= min_side).all(dim=1) & (areas > 0)
    return clipped[keep] - low[:2].repeat(2), keep


class RandomTile:
    """Sliced training: a ``size`` x ``size`` window of the image (a side shorter than ``size``: all of it)
    at a uniformly random position; boxes are clipped to it (``crop_boxes``: a box keeps at least
    ``TILE_MIN_VISIBLE`` of its area and ``TILE_MIN_SIDE`` pixels a side, or is dropped with its label);
    crowd boxes are clipped and kept while any of them is inside. The tile is the sample's image: its
    ``orig_size`` is dropped."""

    def __init__(self, size: int, generator: torch.Generator | None = None):
        self.size = size
        self.generator = generator

    def __call__(self, image, target):
        height, width = image.shape[-2:]
        tile_h, tile_w = min(self.size, height), min(self.size, width)
        y = int(torch.randint(0, height - tile_h + 1, (), generator=self.generator))
        x = int(torch.randint(0, width - tile_w + 1, (), generator=self.generator))
        window = (x, y, x + tile_w, y + tile_h)
        target = {key: value for key, value in target.items() if key != "orig_size"}
        target["boxes"], keep = crop_boxes(target["boxes"], window)
        for key in _OBJECT_KEYS:
            if key in target:
                target[key] = target[key][keep]
        if "crowd_boxes" in target:
            target["crowd_boxes"], _ = crop_boxes(target["crowd_boxes"], window, min_visible=0.0, min_side=1e-6)
        return image[:, y : y + tile_h, x : x + tile_w].clone(), target  # a copy: the whole image can be freed

    def __repr__(self) -> str:
        return f"RandomTile(size={self.size})"


__all__ = ["TILE_MIN_SIDE", "TILE_MIN_VISIBLE", "Compose", "RandomHorizontalFlip", "RandomTile", "crop_boxes", "hflip_boxes", "resize_boxes"]
