"""How well the anchors fit a data set's boxes, and anchors chosen from them (as YOLOv5's autoanchor).

Shape shorthand:
    K   training boxes;  A   anchor shapes (every level's sizes x ratios together)

A box "matches" when some anchor's shape has IoU >= the RPN's positive threshold (``rpn_fg_iou_thresh``)
with it, both centred on the same point (``shape_iou``): the best any grid position can do, as YOLOv5 measures
it. Boxes are taken as the model's transform resizes them (short side ``min_size``, long side at most
``max_size``). A poorly matched box still gets its best anchor as a positive (the paper's rule), but with an
IoU far below the threshold its regression targets are large and few anchors learn it.

``fit_anchors`` keeps the model's layout (the number of sizes per level and of ratios, so the RPN head is
unchanged): k-means of the boxes' log sizes (sqrt(w h)) gives all sizes, sorted and handed out to the levels
in order (small ones on the fine levels); k-means of their log aspect ratios (h / w) gives the ratios, the
same for every level; then a seeded evolution (random multiplicative mutations, kept when they raise the
fitness: the matched share, then the mean best IoU) refines both.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fasterrcnn.config import ModelConfig
from fasterrcnn.modeling.anchors import cell_anchors

__all__ = ["POOR_FIT", "anchor_shapes", "box_shapes", "check_anchors", "fit_anchors", "kmeans_1d", "shape_iou", "unmatched_share"]

# A larger share of training boxes matching no anchor is reported before training. Octave-spaced sizes leave about
# half of evenly spread box sizes below IoU 0.7 by construction (the demo's shapes: 51 %, trained to mAP 0.94), and
# each such box still gets its best anchor as a positive: only a share well above that says the anchors miss the data.
POOR_FIT = 0.60
MAX_FIT_BOXES = 10000  # fit_anchors fits a random subset of this many boxes


def box_shapes(dataset, min_size: int, max_size: int) -> Tensor:
    """Widths and heights [K, 2] of the training boxes of ``dataset`` (``ground_truth`` and ``image_size``,
    no image decoded) as resized by the model's transform; empty boxes left out."""
    shapes = []
    for index, truth in enumerate(dataset.ground_truth()):
        boxes = truth["boxes"].reshape(-1, 4).float()
        if len(boxes) == 0:
            continue
        height, width = dataset.image_size(index)
        scale = min(min_size / min(height, width), max_size / max(height, width))
        wh = (boxes[:, 2:] - boxes[:, :2]) * scale  # [K, 2]
        shapes.append(wh[(wh > 0).all(dim=1)])
    return torch.cat(shapes) if shapes else torch.zeros((0, 2))


def anchor_shapes(sizes: tuple[tuple[float, ...], ...], aspect_ratios: tuple[tuple[float, ...], ...]) -> Tensor:
    """Widths and heights [A, 2] of every level's anchors (as ``cell_anchors`` rounds them)."""
    cells = torch.cat([cell_anchors(s, r) for s, r in zip(sizes, aspect_ratios)])  # [A, 4]
    return cells[:, 2:] - cells[:, :2]


def shape_iou(boxes: Tensor, anchors: Tensor) -> Tensor:
    """IoU [K, A] of shapes ``boxes`` [K, 2] and ``anchors`` [A, 2] (w, h), both centred on one point."""
    inter = torch.minimum(boxes[:, None, 0], anchors[None, :, 0]) * torch.minimum(boxes[:, None, 1], anchors[None, :, 1])
    union = boxes.prod(dim=1)[:, None] + anchors.prod(dim=1)[None, :] - inter
    return inter / union


def unmatched_share(boxes: Tensor, sizes, aspect_ratios, threshold: float) -> float:
    """The share of ``boxes`` [K, 2] whose best anchor (``sizes`` x ``aspect_ratios``) has shape IoU < ``threshold``."""
    if len(boxes) == 0:
        return 0.0
    best = shape_iou(boxes, anchor_shapes(sizes, aspect_ratios)).max(dim=1).values
    return float((best < threshold).float().mean())


def kmeans_1d(values: Tensor, k: int, iterations: int = 50) -> Tensor:
    """``k`` sorted cluster centres of ``values`` [K] (Lloyd's algorithm from the quantiles; deterministic)."""
    values = values.double()
    centres = torch.quantile(values, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    for _ in range(iterations):
        assign = (values[:, None] - centres[None, :]).abs().argmin(dim=1)
        new = torch.stack([values[assign == j].mean() if (assign == j).any() else centres[j] for j in range(k)])
        if torch.equal(new, centres):
            break
        centres = new
    return centres.sort().values


def _fitness(boxes: Tensor, sizes, ratios, threshold: float) -> tuple[float, float]:
    best = shape_iou(boxes, anchor_shapes(sizes, ratios)).max(dim=1).values
    return float((best >= threshold).float().mean()), float(best.mean())


def fit_anchors(
    boxes: Tensor,
    sizes: tuple[tuple[float, ...], ...],
    aspect_ratios: tuple[tuple[float, ...], ...],
    threshold: float,
    *,
    generations: int = 300,
    seed: int = 0,
) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Anchor ``(sizes, aspect_ratios)`` for ``boxes`` [K, 2] with the layout of the given ones (sizes per level,
    ``len(aspect_ratios[0])`` ratios on every level). Sizes rounded to 0.1 pixel, ratios to 0.001.

    Fewer boxes than anchors to place: the given anchors are returned unchanged. More than ``MAX_FIT_BOXES``:
    a seeded random subset of that many is fitted (a data set of any size fits in seconds).
    """
    per_level = [len(level) for level in sizes]
    n_sizes, n_ratios = sum(per_level), len(aspect_ratios[0])
    if len(boxes) < max(n_sizes, n_ratios):
        return sizes, aspect_ratios
    generator = torch.Generator().manual_seed(seed)
    if len(boxes) > MAX_FIT_BOXES:
        boxes = boxes[torch.randperm(len(boxes), generator=generator)[:MAX_FIT_BOXES]]
    boxes = boxes.double()
    log_size = 0.5 * boxes.log().sum(dim=1)  # log sqrt(w h)
    log_ratio = (boxes[:, 1] / boxes[:, 0]).log()
    all_sizes = kmeans_1d(log_size, n_sizes).exp()
    ratios = kmeans_1d(log_ratio, n_ratios).exp()

    def layout(flat_sizes: Tensor, flat_ratios: Tensor):
        flat = sorted(round(float(s), 1) for s in flat_sizes.clamp(min=1.0))
        chunks, start = [], 0
        for count in per_level:
            chunks.append(tuple(flat[start : start + count]))
            start += count
        level_ratios = tuple(sorted(round(float(r), 3) for r in flat_ratios.clamp(min=1e-3)))
        return tuple(chunks), (level_ratios,) * len(per_level)

    best = layout(all_sizes, ratios)
    best_fit = _fitness(boxes, *best, threshold)
    for _ in range(generations):  # YOLOv5's evolution: mutate all shapes a little, keep what fits better
        noise = torch.randn(n_sizes + n_ratios, generator=generator, dtype=torch.float64) * 0.1
        keep = torch.rand(n_sizes + n_ratios, generator=generator) < 0.9
        factors = torch.where(keep, torch.ones_like(noise), noise.exp())
        candidate_sizes = torch.tensor([s for level in best[0] for s in level], dtype=torch.float64) * factors[:n_sizes]
        candidate_ratios = torch.tensor(best[1][0], dtype=torch.float64) * factors[n_sizes:]
        candidate = layout(candidate_sizes, candidate_ratios)
        fit = _fitness(boxes, *candidate, threshold)
        if fit > best_fit:
            best, best_fit = candidate, fit
    if _fitness(boxes, sizes, aspect_ratios, threshold) >= best_fit:  # never worse than the given anchors
        return sizes, aspect_ratios
    return best


def check_anchors(dataset, config: ModelConfig, *, fit: bool) -> tuple[ModelConfig, str | None]:
    """``config`` (with anchors fitted to ``dataset``'s boxes when ``fit``) and a line to print, or None.

    Without ``fit`` the line is a warning when more than ``POOR_FIT`` of the boxes match no anchor; with it,
    the fitted anchors and the share before and after.
    """
    boxes = box_shapes(dataset, config.min_size, config.max_size)
    threshold = config.rpn_fg_iou_thresh
    share = unmatched_share(boxes, config.anchor_sizes, config.aspect_ratios, threshold)
    what = f"of {len(boxes)} training boxes match no anchor at IoU {threshold:g}"
    if not fit:
        if share <= POOR_FIT:
            return config, None
        return config, f"warning: {100 * share:.3g} % {what} (the preset's anchors); --fit-anchors chooses anchors from the boxes"
    sizes, ratios = fit_anchors(boxes, config.anchor_sizes, config.aspect_ratios, threshold, seed=0)
    fitted = dataclasses.replace(config, anchor_sizes=sizes, aspect_ratios=ratios)
    after = unmatched_share(boxes, sizes, ratios, threshold)
    return fitted, (
        f"anchors fitted to the training boxes: sizes {_plain(sizes)}, ratios {_plain(ratios[0])}; "
        f"{100 * share:.3g} % -> {100 * after:.3g} % {what}"
    )


def _plain(values) -> str:
    """Nested tuples of floats without trailing zeros: ((16.0, 32.5),) -> (16, 32.5)."""
    if isinstance(values, tuple):
        inner = ", ".join(_plain(v) for v in values)
        return f"({inner})" if len(values) != 1 or not isinstance(values[0], tuple) else inner
    return f"{values:g}"

