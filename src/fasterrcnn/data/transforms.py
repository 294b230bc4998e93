"""Training-time augmentation acting on ``(image, target)`` pairs, and the per-batch scale jitter.

image: ``Tensor[3, H, W]``; target: dict with ``boxes`` float [K, 4] continuous xyxy (and, for COCO,
``crowd_boxes`` [Kc, 4]). Transforms return new tensors and a new dict; inputs are never modified.

Randomness: ``RandomHorizontalFlip(generator=None)`` draws from torch's global RNG. The loader
(``data/loader.py``) reseeds that RNG for every sample from ``(seed, epoch, index)``, so the
augmentation is reproducible and independent of worker count and of skipped batches. Pass a
seeded ``torch.Generator`` only when using the transform outside that loader.

Scale jitter (multi-scale training) acts on a whole batch: the model's transform resizes every image so
that its short side is ``min_size``; ``jittered_sizes`` draws the batch's ``(min_size, max_size)`` from a
range of factors of the preset's, and the trainer sets them on the model's transform for that batch
(the transform scales the boxes with the pixels). Photometric jitter (``ColorJitter``) changes pixels only.
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


class ColorJitter:
    """Photometric jitter of an RGB image in [0, 1], in pure torch; boxes are unchanged.

    As torchvision's ``ColorJitter``: brightness, contrast and saturation factors are drawn uniformly from
    ``[max(0, 1 - s), 1 + s]`` for strength ``s``, the hue shift from ``[-hue, hue]`` (a fraction of a turn,
    at most 0.5); the four adjustments are applied in a random order; the result is clamped to [0, 1].
    A strength of 0 leaves that property alone.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0, generator: torch.Generator | None = None):
        if min(brightness, contrast, saturation, hue) < 0 or hue > 0.5:
            raise ValueError(f"strengths must be >= 0 and hue <= 0.5, got {(brightness, contrast, saturation, hue)}")
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.generator = generator

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def __call__(self, image, target):
        order = torch.randperm(4, generator=self.generator).tolist()
        for which in order:
            if which == 0 and self.brightness > 0:
                image = image * self._uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
            elif which == 1 and self.contrast > 0:
                factor = self._uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
                mean = _gray(image).mean()
                image = (image - mean) * factor + mean
            elif which == 2 and self.saturation > 0:
                factor = self._uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
                gray = _gray(image)[None]
                image = (image - gray) * factor + gray
            elif which == 3 and self.hue > 0:
                image = shift_hue(image.clamp(0, 1), self._uniform(-self.hue, self.hue))
            image = image.clamp(0, 1)
        return image, target

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, hue={self.hue})"


def _gray(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB -> [H, W] luma (ITU-R 601, as torchvision's rgb_to_grayscale)."""
    r, g, b = image.unbind(0)
    return 0.299 * r + 0.587 * g + 0.114 * b


def shift_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    """[3, H, W] RGB in [0, 1] with its hue turned by ``shift`` (a fraction of a turn), through HSV."""
    r, g, b = image.unbind(0)
    high, _ = image.max(0)
    low, _ = image.min(0)
    chroma = high - low
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(high == r, ((g - b) / safe) % 6, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(chroma > 0, hue / 6, torch.zeros_like(hue))
    hue = (hue + shift) % 1.0
    saturation = torch.where(high > 0, chroma / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(high))
    # HSV -> RGB: channel n takes v - v * s * clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6, n = 5, 3, 1
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + hue * 6) % 6
        channels.append(high - high * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(channels)


def training_transforms(hflip_prob: float, color_jitter: tuple[float, float, float, float] | None = None):
    """The per-sample augmentation of a ``TrainConfig``: flip (``hflip_prob`` > 0), then photometric jitter
    (``color_jitter``: brightness, contrast, saturation, hue); None when both are off."""
    transforms = []
    if hflip_prob > 0:
        transforms.append(RandomHorizontalFlip(hflip_prob))
    if color_jitter is not None and any(color_jitter):
        transforms.append(ColorJitter(*color_jitter))
    if not transforms:
        return None
    return transforms[0] if len(transforms) == 1 else Compose(transforms)


def jittered_sizes(min_size: int, max_size: int, factors: tuple[float, float], generator: torch.Generator) -> tuple[int, int]:
    """A batch's ``(min_size, max_size)``: both multiplied by one factor drawn uniformly from ``factors``
    (low, high), rounded, at least 1."""
    low, high = factors
    factor = low + (high - low) * torch.rand((), generator=generator).item()
    return max(1, round(min_size * factor)), max(1, round(max_size * factor))


__all__ = [
    "TILE_MIN_SIDE", "TILE_MIN_VISIBLE", "ColorJitter", "Compose", "RandomHorizontalFlip", "RandomTile", "crop_boxes", "hflip_boxes",
    "jittered_sizes", "resize_boxes", "shift_hue", "training_transforms",
]  # fmt: skip
