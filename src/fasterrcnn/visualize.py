"""Draw detections on an image with Pillow: a box, class name and score per detection.

Boxes are ``(x1, y1, x2, y2)`` continuous pixels of the image drawn on; labels are 1..C with
``class_names[label - 1]`` their names. Every class has its own colour (hues spread by the golden
ratio, so neighbouring labels differ clearly).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["class_color", "compare_grid", "draw_detections", "label_positions", "to_pil_image"]

_GOLDEN_RATIO = 0.618033988749895


def class_color(label: int) -> tuple[int, int, int]:
    """A saturated RGB colour for ``label`` (deterministic, distinct for neighbouring labels)."""
    hue = (0.08 + label * _GOLDEN_RATIO) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def to_pil_image(image: torch.Tensor | Image.Image) -> Image.Image:
    """``Tensor[3, H, W]`` float RGB in [0, 1] (or a PIL image) -> an RGB ``PIL.Image``."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image Tensor[3, H, W], got shape {tuple(image.shape)}")
    array = (image.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(array.numpy(), mode="RGB")


def draw_detections(
    image: torch.Tensor | Image.Image,
    boxes: torch.Tensor | Sequence[Sequence[float]],
    labels: torch.Tensor | Sequence[int],
    scores: torch.Tensor | Sequence[float] | None,
    class_names: Sequence[str],
    *,
    score_threshold: float = 0.0,
) -> Image.Image:
    """A copy of ``image`` with each detection drawn: box outline, and ``"name 0.93"`` on a filled tag.

    Args:
        image: ``Tensor[3, H, W]`` float RGB in [0, 1], or a PIL image.
        boxes: [D, 4] ``(x1, y1, x2, y2)`` pixels; labels: [D] in 1..C; scores: [D] or None
            (ground truth: names only).
        class_names: the C foreground class names.
        score_threshold: detections scoring below it are not drawn.

    Returns:
        A new RGB ``PIL.Image``; lower-scoring detections are drawn first, so the best are on top; the tags
        are drawn over the box lines, placed so that none hides another (``label_positions``).
    """
    canvas = to_pil_image(image).copy()
    draw = ImageDraw.Draw(canvas)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).tolist()
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).tolist()
    scores = [None] * len(labels) if scores is None else torch.as_tensor(scores, dtype=torch.float32).reshape(-1).tolist()
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"boxes, labels and scores differ in length: {len(boxes)}, {len(labels)}, {len(scores)}")
    width, height = canvas.size
    line = max(1, round(min(width, height) / 250))
    font = ImageFont.load_default(size=max(10, round(min(width, height) / 40)))
    order = sorted(range(len(labels)), key=lambda i: -1.0 if scores[i] is None else scores[i])
    order = [i for i in order if scores[i] is None or scores[i] >= score_threshold]
    tags = []  # (text, size, colour) in drawing order
    for i in order:
        label = labels[i]
        if not 1 <= label <= len(class_names):
            raise ValueError(f"label {label} outside 1..{len(class_names)}")
        color = class_color(label)
        draw.rectangle(boxes[i], outline=color, width=line)
        text = class_names[label - 1] if scores[i] is None else f"{class_names[label - 1]} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tags.append((text, (right - left + 4, bottom - top + 4), color, (left, top)))
    # the best detection's tag is placed first, so it gets its preferred place; tags go over every box line
    placed = label_positions([boxes[i] for i in reversed(order)], [tag[1] for tag in reversed(tags)], (width, height))[::-1]
    for (text, (text_w, text_h), color, (left, top)), (tag_x, tag_y) in zip(tags, placed):
        draw.rectangle([tag_x, tag_y, tag_x + text_w, tag_y + text_h], fill=color)
        brightness = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((tag_x + 2 - left, tag_y + 2 - top), text, fill=(0, 0, 0) if brightness > 140 else (255, 255, 255), font=font)
    return canvas


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_positions(
    boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]], canvas: tuple[int, int]
) -> list[tuple[float, float]]:
    """Top-left corners of the label tags of ``boxes`` (xyxy pixels; tag ``sizes`` (w, h); ``canvas`` (W, H)),
    placed in the given order (the most important first) where a tag hides no tag placed before it.

    A tag's places, in order of preference: above the box's top-left corner, inside it at the top left,
    below its bottom-left corner, inside at the bottom left, then the same at its right edge; every place is
    kept inside the canvas. When all of those hide a tag, the tag slides down from above the box, one tag
    height at a time, to the first free place; when none is free, it takes its first place.
    """
    width, height = canvas
    placed: list[tuple[float, float, float, float]] = []
    corners = []
    for (x1, y1, x2, y2), (w, h) in zip(boxes, sizes):

        def clamp(x: float, y: float) -> tuple[float, float]:
            return min(max(x, 0.0), max(width - w, 0.0)), min(max(y, 0.0), max(height - h, 0.0))

        candidates = [clamp(x, y) for x in (x1, x2 - w) for y in (y1 - h, y1, y2, y2 - h)]
        candidates += [clamp(x1, y1 - h + k * h) for k in range(2, max(2, int((height - y1) // max(h, 1)) + 2))]
        free = next((c for c in candidates if not any(_overlap((c[0], c[1], c[0] + w, c[1] + h), other) for other in placed)), candidates[0])
        placed.append((free[0], free[1], free[0] + w, free[1] + h))
        corners.append(free)
    return corners


def compare_grid(
    pairs: Sequence[tuple[Image.Image, Image.Image]],
    *,
    titles: tuple[str, str] = ("ground truth", "predictions"),
    columns: int = 2,
    tile_height: int = 256,
) -> Image.Image:
    """One RGB picture of image pairs side by side (e.g. ground truth | predictions), ``columns`` pairs a row.

    Every image is scaled to ``tile_height`` pixels high (aspect kept) under a caption from ``titles``;
    the pairs are laid out row by row on a white background, further apart than the two images of a pair.
    """
    if not pairs:
        raise ValueError("compare_grid needs at least one pair of images")
    gap, caption = 8, max(14, tile_height // 14)
    font = ImageFont.load_default(size=caption - 4)
    scaled = [
        [image.convert("RGB").resize((max(1, round(image.width * tile_height / image.height)), tile_height)) for image in pair]
        for pair in pairs
    ]
    pair_width = max(left.width + gap + right.width for left, right in scaled)
    rows = (len(scaled) + columns - 1) // columns
    cell_w, cell_h = pair_width + 4 * gap, caption + tile_height + 2 * gap
    canvas = Image.new("RGB", (min(columns, len(scaled)) * cell_w - 2 * gap, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (left, right) in enumerate(scaled):
        x, y = (k % columns) * cell_w + gap, (k // columns) * cell_h + gap
        for image, title in ((left, titles[0]), (right, titles[1])):
            draw.text((x, y), title, fill=(0, 0, 0), font=font)
            canvas.paste(image, (x, y + caption))
            x += image.width + gap
    return canvas
