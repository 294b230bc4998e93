"""Non-maximum suppression, exact and fast, in plain torch (CPU and CUDA).

Boxes are float ``(x1, y1, x2, y2)`` in absolute pixels. The result is *exactly* the greedy
algorithm: sort by score descending with a stable sort (equal scores keep their input order);
walk that order, keep a box unless its IoU with an already kept box is ``> iou_threshold``.
The IoU of a pair is computed by the same operations as ``box_iou`` (``boxes._pairwise_iou``),
so results match a reference loop over ``box_iou`` bit for bit; the comparison with the
threshold is exact (as real numbers, like torchvision's CPU kernel). float16/bfloat16 boxes
are compared in float32.

How it is fast without a per-box loop (shape shorthand: N boxes, P candidate pairs, E edges):

1. Candidate pairs. IoU(a, b) <= IoU of their x-intervals, so a pair can only pass a threshold
   t >= 0 when, with a the box of smaller x1, ``x1_b - x1_a < (1 - t) * w_a``; likewise
   ``|y1_a - y1_b| < (1 - t) * max(h)``, and IoU <= min(area) / max(area) needs an area ratio
   > t. Each box gets a cell (category, strip of y1 of height (1 - t) * max(h), bucket of
   log(area) of width log(1 / t)); boxes are sorted by (cell, x1). Every pair that could pass
   lies in one of nine short windows of the box of smaller x1 (its own cell after it, and
   x1 in [x1_a, x1_a + (1 - t) * w_a) in each of the 8 neighbouring cells), found with
   ``searchsorted``. The windows are widened by a margin that covers float rounding, so no
   pair whose computed IoU passes is ever missed (extra candidates only cost time).
2. Exact IoU of the P candidates, vectorised; those ``> t`` become suppression edges
   (higher-ranked box -> lower-ranked box), E of them.
3. Greedy resolution by peeling: a box with no remaining incoming edge is kept; the targets
   of a kept box are suppressed; edges out of suppressed boxes are dropped; repeat. Each round
   resolves at least the best-ranked unresolved box; rounds are few in practice.

When the windows would hold too many pairs (heavily clustered boxes, e.g. one box covering
all others), a blocked dense greedy is used instead: blocks of ranks are tested against the
boxes kept so far, then resolved exactly inside the block by a fixed-point iteration.
"""

import math

import torch
from torch import Tensor

from fasterrcnn.ops.boxes import _check_boxes, _compute_dtype, _pairwise_iou

__all__ = ["nms", "batched_nms"]

# Candidate pairs allowed per box (beyond a floor) before switching to the dense blocked greedy.
_PAIRS_PER_BOX = 512
_PAIRS_FLOOR = 1 << 19
_BLOCK = 256
# Candidate pairs per vectorised step: small on CPU (cache-sized, below torch's parallel grain,
# so that no thread pool is woken: robust on busy machines), large on GPUs.
_CHUNK_PAIRS = {"cpu": 1 << 15}
_CHUNK_PAIRS_DEFAULT = 1 << 22
# Relative widening of the candidate windows; covers the float rounding of the IoU (~1e-6).
_MARGIN = 1e-3


def _check_inputs(boxes: Tensor, scores: Tensor, idxs: Tensor | None = None) -> None:
    _check_boxes(boxes)
    if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        shape = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must have shape [N] with N = {boxes.shape[0]} (boxes), got {shape}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
            shape = list(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
            raise ValueError(f"idxs must have shape [N] with N = {boxes.shape[0]} (boxes), got {shape}")
        if idxs.is_floating_point() or idxs.is_complex():
            raise ValueError(f"idxs must be an integer tensor, got {idxs.dtype}")


def _threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest value t of ``dtype`` with t <= threshold, so that ``x > t`` <=> ``x > threshold``
    for every x of ``dtype`` (an exact comparison with the real threshold)."""
    t = torch.tensor(threshold, dtype=torch.float64).to(dtype)
    if float(t) > threshold:
        t = torch.nextafter(t, torch.tensor(-math.inf, dtype=dtype))
    return float(t)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Args:
        boxes: Tensor[N, 4] xyxy boxes.
        scores: Tensor[N] scores.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is > this.

    Returns:
        Tensor[K] int64: indices of the kept boxes in decreasing score order (ties: input order).
    """
    _check_inputs(boxes, scores)
    return _nms(boxes, scores, None, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Non-maximum suppression within each category independently.

    Equal to running ``nms`` on the boxes of every value of ``idxs`` separately and merging the kept
    indices by decreasing score (ties: input order). Exact: IoU values are those of ``nms``
    (no coordinate-offset trick, which would round the coordinates).

    Args:
        boxes: Tensor[N, 4] xyxy boxes.
        scores: Tensor[N] scores.
        idxs: Tensor[N] integer category of each box.
        iou_threshold: IoU above which a lower-scored box of the same category is dropped.

    Returns:
        Tensor[K] int64 kept indices in decreasing score order.

    As torchvision's, boxes without elements (e.g. ``torch.empty(0)``) return no indices whatever the other
    arguments are (``None`` included), so code written for it runs unchanged.
    """
    if isinstance(boxes, Tensor) and boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    _check_inputs(boxes, scores, idxs)
    return _nms(boxes, scores, idxs, float(iou_threshold))


def _nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, threshold: float) -> Tensor:
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices  # [N] rank -> input index
    ranked = boxes.detach()[order].to(_compute_dtype(boxes.dtype))  # [N, 4] boxes in rank order
    groups = None if idxs is None else idxs[order].to(torch.int64)  # [N] category in rank order
    if math.isnan(threshold):
        return order
    if threshold < 0:
        # Every IoU (>= 0) exceeds the threshold: the best box of each category suppresses the rest.
        if groups is None:
            return order[:1]
        sorted_groups, by_group = torch.sort(groups, stable=True)  # stable: best rank first per group
        first_of_group = torch.ones(n, dtype=torch.bool, device=device)
        first_of_group[1:] = sorted_groups[1:] != sorted_groups[:-1]
        first = torch.zeros(n, dtype=torch.bool, device=device)
        first[by_group[first_of_group]] = True
        return order[first]
    t_cmp = _threshold_below(threshold, ranked.dtype)
    keep = _greedy_sparse(ranked, groups, threshold, t_cmp)
    if keep is None:
        keep = _greedy_dense(ranked, groups, t_cmp)
    return order[keep]


def _expand_windows(starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """Windows [starts[w], ends[w]) of positions -> (owner window, position) of every member, [P] each."""
    lengths = (ends - starts).clamp(min=0)  # [W]
    total = int(lengths.sum())
    owner = torch.repeat_interleave(torch.arange(starts.shape[0], device=starts.device), lengths, output_size=total)
    shift = starts - (torch.cumsum(lengths, 0) - lengths)  # [W] window start minus its offset in the flat list
    position = torch.arange(total, device=starts.device) + shift.index_select(0, owner)  # [P]
    return owner, position


def _greedy_sparse(ranked: Tensor, groups: Tensor | None, threshold: float, t_cmp: float) -> Tensor | None:
    """Kept mask (Tensor[N] bool, rank order) by candidate windows + peeling; None if too many pairs."""
    n = ranked.shape[0]
    device = ranked.device
    b = ranked.to(torch.float64)  # window arithmetic in float64, widened by a margin below
    if not bool(torch.isfinite(b).all()):
        return None
    widths = b[:, 2] - b[:, 0]  # [N]
    heights = b[:, 3] - b[:, 1]
    areas = widths * heights
    # Boxes of zero area (or inverted) have IoU 0 with everything: no candidate windows for them.
    usable = (widths > 0) & (heights > 0)  # [N]
    reach = 1.0 - threshold + _MARGIN  # a pair passing the threshold has x1 gap < reach * width
    if reach <= 0.0 or not bool(usable.any()):
        return torch.ones(n, dtype=torch.bool, device=device)  # no pair can exceed the threshold
    x_lo = float(b[:, 0].min())
    x_span = float(b[:, 2].max()) - x_lo
    y_lo = float(b[:, 1].min())
    max_h = float(heights.max())
    slack = 1e-6 * (x_span + abs(x_lo)) + 1e-30
    # Cell of a box: (group, strip of y1 of height reach * max_h, bucket of log(area)). A passing
    # pair has |y1 gap| < reach * max(h) and area ratio > threshold, so lies in neighbouring cells.
    strip_h = reach * max_h * (1 + 1e-6) + 1e-6 * (max_h + abs(y_lo)) + 1e-30
    strip = torch.floor((b[:, 1] - y_lo) / strip_h)  # [N]
    if threshold > 1e-3:
        bucket_w = -math.log(threshold) * (1 + _MARGIN) + 1e-9
        bucket = torch.floor(torch.log(torch.where(usable, areas, torch.ones_like(areas))) / bucket_w)
        bucket = bucket - bucket.min()
    else:
        bucket = torch.zeros_like(strip)
    num_buckets = float(bucket.max()) + 3  # + gaps so that cells of different strips/groups never touch
    num_strips = float(strip.max()) + 3
    cell = strip * num_buckets + bucket  # [N]
    if groups is not None:
        dense_groups = torch.unique(groups, return_inverse=True)[1]  # [N] in 0..G-1
        cell = dense_groups.to(torch.float64) * (num_strips * num_buckets) + cell
    row_span = 2.0 ** math.ceil(math.log2(x_span * 1.01 + 4 * slack + 1.0))
    key = cell * row_span + (b[:, 0] - x_lo)  # [N] sort key (cell, x1)
    key_sorted, perm = torch.sort(key, stable=True)  # perm: sorted position -> rank
    slack += 2.0 ** -46 * float(key_sorted[-1].abs())  # + the rounding of the float64 keys
    reach_x = reach * widths.index_select(0, perm) + slack  # [N]
    usable_sorted = usable.index_select(0, perm)
    # Windows per box at sorted position p: its own cell after p, and the 8 neighbouring cells
    # with x1 in [x1_p - slack, x1_p + reach_x); the box of smaller x1 finds every pair.
    neighbours = [ds * num_buckets + db for ds in (-1.0, 0.0, 1.0) for db in (-1.0, 0.0, 1.0) if (ds, db) != (0, 0)]
    shifts = torch.tensor(neighbours, dtype=torch.float64, device=device)[:, None] * row_span  # [8, 1]
    queries = torch.cat((
        (key_sorted + reach_x)[None],  # [1, N] end of the own-cell window
        key_sorted + shifts - slack,  # [8, N] starts in the neighbouring cells
        key_sorted + shifts + reach_x,  # [8, N] ends in the neighbouring cells
    ))
    found = torch.searchsorted(key_sorted, queries.flatten()).view(17, n)  # one call: [17, N]
    starts = torch.cat((torch.arange(1, n + 1, device=device), found[1:9].flatten()))  # [9N]
    ends = torch.cat((found[0], found[9:].flatten()))  # [9N]
    ends = torch.where(usable_sorted.repeat(len(neighbours) + 1), ends, starts)  # [9N]
    lengths = (ends - starts).clamp(min=0)  # [9N]
    total = int(lengths.sum())
    if total > _PAIRS_FLOOR + _PAIRS_PER_BOX * n:
        return None
    x1, y1, x2, y2 = ranked.index_select(0, perm).t().contiguous()  # [N] each, in sorted order
    areas_sorted = (x2 - x1) * (y2 - y1)
    # Expand the windows in chunks of about `chunk` pairs (bounded memory).
    chunk = _CHUNK_PAIRS.get(device.type, _CHUNK_PAIRS_DEFAULT)
    cum = torch.cumsum(lengths, 0)
    marks = torch.arange(1, max(-(-total // chunk), 1), device=device) * chunk
    bounds = [0] + torch.searchsorted(cum, marks).tolist() + [lengths.shape[0]]
    window_box = torch.arange(n, device=device).repeat(len(neighbours) + 1)  # [9N] sorted position of its box
    sources, targets = [], []
    for w0, w1 in zip(bounds[:-1], bounds[1:]):
        owner, pos_b = _expand_windows(starts[w0:w1], ends[w0:w1])  # [P] each: window index, sorted position
        pos_a = window_box[w0:w1].index_select(0, owner)  # [P] sorted position of the window's box

        def pair(values: Tensor) -> tuple[Tensor, Tensor]:
            return values.index_select(0, pos_a), values.index_select(0, pos_b)

        # IoU > threshold, op for op the formula of boxes._pairwise_iou (so equal to box_iou's values)
        (x1a, x1b), (y1a, y1b), (x2a, x2b), (y2a, y2b) = pair(x1), pair(y1), pair(x2), pair(y2)
        w = (torch.minimum(x2a, x2b) - torch.maximum(x1a, x1b)).clamp(min=0)
        h = (torch.minimum(y2a, y2b) - torch.maximum(y1a, y1b)).clamp(min=0)
        inter = w * h
        area_a, area_b = pair(areas_sorted)
        union = area_a + area_b - inter
        hit = (union > 0) & (inter / union > t_cmp)  # where union <= 0 the IoU is 0
        rank_a = perm[pos_a[hit]]  # [E]
        rank_b = perm[pos_b[hit]]
        sources.append(torch.minimum(rank_a, rank_b))  # suppressor (better rank)
        targets.append(torch.maximum(rank_a, rank_b))  # suppressed if the suppressor is kept
    return _resolve_edges(n, torch.cat(sources), torch.cat(targets))


def _resolve_edges(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Greedy outcome of suppression edges src -> dst (src ranked better): Tensor[N] bool kept."""
    device = src.device
    KEPT, UNKNOWN, SUPPRESSED = 1, 0, -1
    state = torch.zeros(n, dtype=torch.int8, device=device)
    while src.numel() > 0:
        has_incoming = torch.zeros(n, dtype=torch.bool, device=device)
        has_incoming[dst] = True
        state[(state == UNKNOWN) & ~has_incoming] = KEPT
        state[dst[state[src] == KEPT]] = SUPPRESSED
        live = (state[src] != SUPPRESSED) & (state[dst] == UNKNOWN)
        src, dst = src[live], dst[live]
    return state != SUPPRESSED


def _greedy_dense(ranked: Tensor, groups: Tensor | None, t_cmp: float) -> Tensor:
    """Kept mask (Tensor[N] bool, rank order) by blocks of ranks against the boxes kept so far."""
    n = ranked.shape[0]
    device = ranked.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    kept_boxes = ranked[:0]  # [Kk, 4]
    kept_groups = None if groups is None else groups[:0]
    for start in range(0, n, _BLOCK):
        block = ranked[start:start + _BLOCK]  # [B, 4]
        block_groups = None if groups is None else groups[start:start + _BLOCK]
        over = _pairwise_iou(block[:, None, :], kept_boxes[None, :, :]) > t_cmp  # [B, Kk]
        if block_groups is not None:
            over &= block_groups[:, None] == kept_groups[None, :]
        alive = ~over.any(dim=1)  # [B] not suppressed by earlier blocks
        within = _pairwise_iou(block[:, None, :], block[None, :, :]) > t_cmp  # [B, B]
        if block_groups is not None:
            within &= block_groups[:, None] == block_groups[None, :]
        within = torch.triu(within, diagonal=1)  # i suppresses j only for i < j
        # Fixed point of x[j] = alive[j] and not any_i<j (x[i] and within[i, j]): unique (the
        # matrix is strictly upper triangular), reached when x stops changing = greedy result.
        x = alive
        while True:
            x_next = alive & ~(within & x[:, None]).any(dim=0)
            if torch.equal(x_next, x):
                break
            x = x_next
        keep[start:start + block.shape[0]] = x
        kept_boxes = torch.cat((kept_boxes, block[x]))
        if groups is not None:
            kept_groups = torch.cat((kept_groups, block_groups[x]))
    return keep
