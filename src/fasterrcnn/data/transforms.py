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


__all__ = ["Compose", "RandomHorizontalFlip", "hflip_boxes", "resize_boxes"]
