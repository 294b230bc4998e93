"""Anchors: reference boxes of several sizes and aspect ratios at every feature-map cell.

Shape shorthand:
    N   images in the batch
    L   feature levels (1 for VGG16 / C4 / tiny, 5 for FPN)
    Hi x Wi  size of the feature map of level i
    A   anchors per cell (len(sizes[i]) * len(aspect_ratios[i]))

Boxes are float ``(x1, y1, x2, y2)`` in pixels of the padded (batched) input image.
The anchors of level i are ordered location-major (row y, then column x), then anchor
(ratio-major, then size), exactly as torchvision's ``AnchorGenerator``, so that the RPN head's
outputs, flattened as ``[Hi, Wi, A]``, line up with them.
"""

from __future__ import annotations

from numbers import Real

import torch
from torch import Tensor, nn

from fasterrcnn.errors import ConfigError


def cell_anchors(sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], *, dtype=torch.float32, device=None) -> Tensor:
    """The A anchors of one cell centred on (0, 0): Tensor[A, 4], rounded to integers (torchvision).

    aspect ratio = height / width; an anchor of size s and ratio r has area ~ s**2.
    Order: for each ratio, for each size.
    """
    scales = torch.as_tensor(sizes, dtype=dtype, device=device)
    ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)  # [A]
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)  # [A]
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()  # [A, 4]


def grid_anchors(base: Tensor, grid_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Shift the cell anchors ``base`` [A, 4] to every cell of an Hi x Wi grid -> Tensor[Hi*Wi*A, 4].

    The cell (y, x) is shifted by (x * stride_w, y * stride_h), as torchvision (no half-cell offset).
    """
    (grid_h, grid_w), (stride_h, stride_w) = grid_size, stride
    device = base.device
    shifts_x = torch.arange(0, grid_w, dtype=torch.int32, device=device) * stride_w
    shifts_y = torch.arange(0, grid_h, dtype=torch.int32, device=device) * stride_h
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [Hi*Wi, 4]
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)  # [Hi*Wi*A, 4]


def _per_level(name: str, value, example: str) -> tuple[tuple[float, ...], ...]:
    """``value`` as a tuple (one per level) of non-empty tuples of positive numbers, else ConfigError."""
    expected = f"anchor {name} must be one non-empty tuple of positive numbers per feature level, e.g. {example} for 2 levels"
    if not isinstance(value, (tuple, list)) or len(value) == 0:
        raise ConfigError(f"{expected}; got {value!r}")
    for level in value:
        if not isinstance(level, (tuple, list)) or len(level) == 0:
            raise ConfigError(f"{expected}; got {value!r}")
        for v in level:
            if isinstance(v, bool) or not isinstance(v, Real) or not v > 0 or v == float("inf"):
                raise ConfigError(f"{expected}; got {value!r} (bad value {v!r})")
    return tuple(tuple(float(v) for v in level) for level in value)


class AnchorGenerator(nn.Module):
    """Anchors for every feature level: ``sizes[i]`` x ``aspect_ratios[i]`` at level i.

    The stride of level i is ``padded image size // feature size`` per axis (torchvision).
    Results are cached per (padded image size, feature sizes, dtype, device): during training
    and inference the batch size is usually fixed, so anchors are computed once.
    """

    def __init__(self, sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...]):
        super().__init__()
        self.sizes = _per_level("sizes", sizes, "((32.0,), (64.0,))")
        self.aspect_ratios = _per_level("aspect_ratios", aspect_ratios, "((0.5, 1.0, 2.0), (0.5, 1.0, 2.0))")
        if len(self.sizes) != len(self.aspect_ratios):
            raise ConfigError(
                f"anchor sizes and aspect_ratios need one tuple per feature level each, got {len(self.sizes)} "
                f"level(s) of sizes {sizes!r} and {len(self.aspect_ratios)} of aspect ratios {aspect_ratios!r}"
            )
        self._cache: dict = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def forward(self, image_size: tuple[int, int], grid_sizes: list[tuple[int, int]], *, dtype=torch.float32, device=None) -> list[Tensor]:
        """Anchors of each level for a padded image of ``image_size`` (h, w): list of Tensor[Hi*Wi*A, 4].

        The same anchors serve every image of the batch (they are defined on the padded tensor).
        """
        if len(grid_sizes) != len(self.sizes):
            raise ValueError(f"{len(grid_sizes)} feature maps but anchors are defined for {len(self.sizes)} levels")
        key = (tuple(image_size), tuple(tuple(g) for g in grid_sizes), dtype, str(device))
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = []
            for sizes, ratios, grid in zip(self.sizes, self.aspect_ratios, grid_sizes):
                stride = (image_size[0] // grid[0], image_size[1] // grid[1])
                base = cell_anchors(sizes, ratios, dtype=dtype, device=device)
                anchors.append(grid_anchors(base, grid, stride))
            if len(self._cache) > 32:  # many image sizes (e.g. batch size 1, no grouping): keep it bounded
                self._cache.clear()
            self._cache[key] = anchors
        return anchors
