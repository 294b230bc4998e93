"""Tile geometry for sliced inference and sliced training: which windows of an image to look at.

``tile_windows(height, width, size, overlap)`` covers an image with square windows of ``size``
pixels that overlap by about ``overlap * size`` pixels, left to right, top to bottom:

- along a side longer than ``size``, windows start every ``step = size - round(overlap * size)``
  pixels (at least 1), and the last window is shifted inside the image so that it ends on the
  image's edge (it then overlaps its neighbour more than the others do): no window reaches out of
  the image, so no tile is padded and every tile of an image has the same shape;
- along a side of at most ``size`` pixels, one window spans the whole side (tiles are then
  smaller than ``size``, never padded).

A 12000-pixel side with ``size=640, overlap=0.2`` (step 512) gets windows at 0, 512, ..., 11264 and
a last one at 11360. Windows are integer ``(x1, y1, x2, y2)`` pixel edges (continuous coordinates,
``x2 - x1`` the width), so a box ``(bx1, by1, bx2, by2)`` found in a tile is
``(bx1 + x1, by1 + y1, bx2 + x1, by2 + y1)`` in the image.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tile_starts", "tile_windows"]


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start offsets of the windows of ``size`` along a side of ``length`` pixels (see the module docstring)."""
    if length < 1:
        raise ValueError(f"the side must be >= 1 pixel, got {length}")
    if size < 1:
        raise ValueError(f"the tile size must be >= 1 pixel, got {size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if length <= size:
        return [0]
    step = max(1, size - round(overlap * size))
    starts = list(range(0, length - size, step))
    return [*starts, length - size]  # the last window ends on the edge


def tile_windows(height: int, width: int, size: int, overlap: float = 0.2) -> Tensor:
    """``Tensor[T, 4]`` int64: the ``(x1, y1, x2, y2)`` windows covering an image of ``height`` x ``width``,
    row by row (see the module docstring); each is ``min(size, width)`` wide and ``min(size, height)`` tall."""
    xs = tile_starts(width, size, overlap)
    ys = tile_starts(height, size, overlap)
    tile_w, tile_h = min(size, width), min(size, height)
    windows = [(x, y, x + tile_w, y + tile_h) for y in ys for x in xs]
    return torch.tensor(windows, dtype=torch.int64).reshape(-1, 4)
