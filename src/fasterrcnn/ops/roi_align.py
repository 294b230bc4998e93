"""RoI feature extraction: RoIAlign (Mask R-CNN), RoIPool (Fast R-CNN), multi-scale RoIAlign (FPN).

Numbers match torchvision's C++ kernels (csrc/ops/cpu/roi_align_kernel.cpp, roi_pool_kernel.cpp)
and ``torchvision.ops.MultiScaleRoIAlign``; the implementation is plain, vectorised torch (no
Python loop over RoIs; a few host synchronisations per call for tensor sizes, none per RoI), so
it runs on any device.

Shape shorthand:
    N  images in the batch            C  channels
    H x W  feature map                K  RoIs
    oh x ow  pooled output (P for either axis)
    G  samples per bin along one axis (``sampling_ratio``, or the largest adaptive grid)
    J  feature rows (or columns) one output bin reads along one axis

RoIs are either ``Tensor[K, 5]`` rows ``(batch_index, x1, y1, x2, y2)`` or a list of per-image
``Tensor[Ki, 4]`` boxes ``(x1, y1, x2, y2)``, in image pixels (multiplied by ``spatial_scale``).
No gradient flows to the RoIs (as in torchvision).

How RoIAlign is computed: bilinear sampling is separable, so every output bin is a weighted sum
``sum_{y, x} wy[k, ph, y] * wx[k, pw, x] * F[b_k, :, y, x]`` whose per-axis weights (the kernel's
sample positions, clamping and validity rules, with ``1 / grid`` folded in) are computed for all
RoIs at once.  The sum over the J_y x J_x feature pixels of a bin is one ``embedding_bag`` over
the channels-last feature table (rows = pixels, columns = channels), whose backward is again an
``embedding_bag`` (over the transposed, sorted pixel list).  RoIPool finds every bin's arg-max
with a 2-D sparse table (range-maximum over power-of-two rectangles, 4 look-ups per bin); its
backward scatters each bin's gradient to that pixel, as the kernel does.
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["roi_align", "roi_pool", "RoIAlign", "RoIPool", "MultiScaleRoIAlign"]

RoIs = Union[Tensor, Sequence[Tensor]]


# ----------------------------------------------------------------------------------------------
# Argument checks and conversions
# ----------------------------------------------------------------------------------------------
def _pair(output_size) -> tuple[int, int]:
    if isinstance(output_size, int):
        size = (output_size, output_size)
    else:
        size = tuple(int(s) for s in output_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"output_size must be a positive int or a pair of positive ints, got {output_size!r}")
    return size


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"input must be a 4-D feature Tensor[N, C, H, W], got {shape}")
    if not input.is_floating_point():
        raise ValueError(f"input must be a floating point tensor, got {input.dtype}")


def convert_boxes_to_roi_format(boxes: Sequence[Tensor]) -> Tensor:
    """List of per-image ``Tensor[Ki, 4]`` boxes -> ``Tensor[sum Ki, 5]`` rows (image index, x1, y1, x2, y2)."""
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"boxes[{i}] must be a Tensor[K, 4] (x1, y1, x2, y2), got {shape}")
    concat = torch.cat(list(boxes), dim=0)
    ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)], dim=0)
    return torch.cat([ids, concat], dim=1)  # [K, 5]


def _as_roi_tensor(rois: RoIs, input: Tensor) -> Tensor:
    """Validated ``Tensor[K, 5]`` on the input's device in its compute dtype (float32 for half inputs), detached."""
    if isinstance(rois, (list, tuple)):
        if len(rois) == 0:
            rois = input.new_zeros((0, 5))
        else:
            rois = convert_boxes_to_roi_format(rois)
    elif not isinstance(rois, Tensor) or rois.dim() != 2 or rois.shape[1] != 5:
        shape = tuple(rois.shape) if isinstance(rois, Tensor) else type(rois).__name__
        raise ValueError(
            f"rois must be a Tensor[K, 5] (batch_index, x1, y1, x2, y2) or a list of Tensor[Ki, 4], got {shape}"
        )
    rois = rois.detach().to(device=input.device, dtype=_compute_dtype(input.dtype))
    if rois.shape[0] > 0:
        low, high = torch.aminmax(rois[:, 0])
        if low < 0 or high >= input.shape[0]:  # one host synchronisation
            raise ValueError(f"roi batch indices must lie in [0, {input.shape[0] - 1}], got {low.item()}..{high.item()}")
    return rois


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half precision is computed in float32 (positions and weights need the precision) and the
    # result cast back; float32 / float64 are computed natively.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ----------------------------------------------------------------------------------------------
# RoIAlign
# ----------------------------------------------------------------------------------------------
def _axis_weights(
    start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int, window: bool
) -> tuple[Tensor, Tensor]:
    """Per-axis bilinear weights of every output bin, with the kernel's rules.

    start, bin_size: Tensor[K] (roi start and bin size along this axis, feature coordinates);
    grid: Tensor[K] int64 samples per bin; pooled: P; size: H or W.
    Returns (index Tensor[K, P, J] int64 in [0, size), weight Tensor[K, P, J]) such that the
    interpolated-and-averaged value along this axis is ``sum_j weight * feature[index]``;
    ``1 / grid`` is folded into the weights, out-of-range samples have weight 0.
    window=False: J = 2G, the two neighbours of every sample; window=True: the weights summed per
    pixel over the window of pixels a bin reads (J = its largest length), fewer entries when
    grids are large.  Either way a RoI's entries do not depend on the other RoIs (only the zero
    padding does), so a RoI's result is the same whatever batch it is pooled in.
    """
    K = start.shape[0]
    dtype, device = start.dtype, start.device
    G = max(int(grid.max()), 1)  # host synchronisation: a tensor size
    p = torch.arange(pooled, device=device, dtype=dtype).view(1, pooled, 1)
    i = torch.arange(G, device=device, dtype=dtype).view(1, 1, G)
    g = grid.to(dtype).clamp(min=1).view(K, 1, 1)
    s, b = start.view(K, 1, 1), bin_size.view(K, 1, 1)
    # Same operation order as the kernel: start + p * bin + (i + .5) * bin / grid.
    pos = (s + p * b) + (i + 0.5) * b / g  # [K, P, G]
    valid = (pos >= -1.0) & (pos <= size) & (i < grid.view(K, 1, 1))
    pos = torch.where(valid, pos, torch.zeros_like(pos)).clamp(min=0)
    low = pos.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    pos = torch.where(at_edge, low, pos)
    frac = pos - low  # ly
    scale = valid.to(dtype) / g
    low_i = low.long()
    high_i = torch.where(at_edge, low_i, low_i + 1)
    index = torch.cat([low_i, high_i], dim=2)  # [K, P, 2G]
    weight = torch.cat([(1 - frac) * scale, frac * scale], dim=2)  # [K, P, 2G]

    if not window:
        return index, weight
    dense = torch.zeros(K, pooled, size, dtype=dtype, device=device).scatter_add_(2, index, weight)  # [K, P, size]
    nonzero = dense != 0
    ar = torch.arange(size, device=device)
    first = torch.where(nonzero, ar, size).amin(dim=2)  # [K, P]
    last = torch.where(nonzero, ar, -1).amax(dim=2)
    J = max(int((last - first + 1).clamp(min=1).max()), 1)
    window = first.clamp(max=size - 1).unsqueeze(2) + torch.arange(J, device=device)  # [K, P, J]
    inside = window < size
    window = window.clamp(max=size - 1)
    return window, torch.gather(dense, 2, window) * inside


class _WeightedRowSum(torch.autograd.Function):
    """``out[r] = sum_j weight[r, j] * table[index[r, j]]`` (an embedding bag) with a fast backward."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(index, weight)
        ctx.num_rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weight, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        index, weight = ctx.saved_tensors
        J = index.shape[1]
        # Transpose the bags: every table row sums the output rows that read it.
        flat = index.reshape(-1)
        order = torch.argsort(flat)
        src_rows = torch.div(order, J, rounding_mode="floor")  # output row of each entry
        counts = torch.bincount(flat, minlength=ctx.num_rows)
        offsets = torch.cumsum(counts, 0) - counts
        grad_table = F.embedding_bag(
            src_rows,
            grad_out.contiguous(),
            offsets,
            per_sample_weights=weight.reshape(-1)[order],
            mode="sum",
        )
        return grad_table, None, None


def roi_align(
    input: Tensor,
    rois: RoIs,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (He et al., Mask R-CNN) with exactly torchvision's semantics.

    Args:
        input: Tensor[N, C, H, W] feature maps.
        rois: Tensor[K, 5] (batch_index, x1, y1, x2, y2) or list of N Tensor[Ki, 4] boxes, image pixels.
        output_size: oh (= ow) or (oh, ow).
        spatial_scale: feature size / image size (e.g. 1/16).
        sampling_ratio: samples per bin along each axis; <= 0 uses ceil(roi size / output size).
        aligned: shift boxes by -0.5 pixel (pixel-centre model) and allow boxes smaller than 1.
    Returns:
        Tensor[K, C, oh, ow] in the input's dtype and device.
    """
    _check_input(input)
    oh, ow = _pair(output_size)
    rois = _as_roi_tensor(rois, input)
    N, C, H, W = input.shape
    K = rois.shape[0]
    if K == 0 or input.numel() == 0:
        return input.new_zeros((K, C, oh, ow)) + input.reshape(-1)[:0].sum()  # in the graph: zero grads
    dtype = input.dtype
    cdtype = _compute_dtype(dtype)
    r = rois.to(cdtype)
    offset = 0.5 if aligned else 0.0
    start_x = r[:, 1] * spatial_scale - offset
    start_y = r[:, 2] * spatial_scale - offset
    roi_w = r[:, 3] * spatial_scale - offset - start_x
    roi_h = r[:, 4] * spatial_scale - offset - start_y
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_h = roi_h / oh
    bin_w = roi_w / ow
    if sampling_ratio > 0:
        grid_h = torch.full((K,), sampling_ratio, dtype=torch.long, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / oh).nan_to_num(0).clamp(min=0).long()
        grid_w = torch.ceil(roi_w / ow).nan_to_num(0).clamp(min=0).long()
    # Adaptive grids differ between RoIs (up to roi size / output size samples): summing the
    # weights per pixel keeps the entries per bin near (bin size + 2)^2 instead of (2 * G)^2.
    adaptive = sampling_ratio <= 0
    yi, wy = _axis_weights(start_y, bin_h, grid_h, oh, H, adaptive)  # [K, oh, Jy]
    xi, wx = _axis_weights(start_x, bin_w, grid_w, ow, W, adaptive)  # [K, ow, Jx]
    Jy, Jx = yi.shape[2], xi.shape[2]
    batch = r[:, 0].long().view(K, 1, 1, 1, 1)
    pixel = batch * (H * W) + yi.view(K, oh, 1, Jy, 1) * W + xi.view(K, 1, ow, 1, Jx)  # [K, oh, ow, Jy, Jx]
    weight = wy.view(K, oh, 1, Jy, 1) * wx.view(K, 1, ow, 1, Jx)
    table = input.to(cdtype).permute(0, 2, 3, 1).reshape(N * H * W, C).contiguous()  # channels-last rows
    out = _WeightedRowSum.apply(table, pixel.view(K * oh * ow, Jy * Jx), weight.view(K * oh * ow, Jy * Jx))
    return out.view(K, oh, ow, C).permute(0, 3, 1, 2).to(dtype).contiguous()  # [K, C, oh, ow]


# ----------------------------------------------------------------------------------------------
# RoIPool
# ----------------------------------------------------------------------------------------------
def _c_round(x: Tensor) -> Tensor:
    """C ``round``: half away from zero."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _bins(start: Tensor, end: Tensor, pooled: int, size: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """RoIPool bin limits [lo, hi) along one axis: Tensor[K, P] each, clipped to [0, size].

    start, end: Tensor[K] int64 rounded box limits; bin arithmetic in ``dtype`` like the kernel.
    """
    length = (end - start + 1).clamp(min=1).to(dtype)
    bin_size = (length / pooled).view(-1, 1)
    p = torch.arange(pooled, device=start.device, dtype=dtype).view(1, pooled)
    lo = torch.floor(p * bin_size).long() + start.view(-1, 1)
    hi = torch.ceil((p + 1) * bin_size).long() + start.view(-1, 1)
    return lo.clamp(0, size), hi.clamp(0, size)


class _PackedLevels:
    """Sparse-table levels for float32 (the fast path): one int64 per entry.

    The value's bits, made order-preserving as an int32, go in the high word and 2**32 - 1 -
    pixel in the low word (little-endian words), so the int64 maximum is the largest value and,
    among equal values, the smallest pixel index y*W + x: the kernel's first maximum in
    row-major order.  (-0.0 counts as smaller than +0.0 here, the only difference from the
    float comparison.)  Levels live in 4 reused buffers and results in one buffer (fresh memory
    is costly: page faults).
    """

    def __init__(self, table: Tensor, N: int, H: int, W: int, num_bins: int):
        C = table.shape[1]
        bits = table.view(torch.int32)
        words = torch.empty((N, H, W, C, 2), dtype=torch.int32, device=table.device)
        words[..., 1] = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(N, H, W, C)  # order-preserving int32
        words[..., 0] = ~torch.arange(H * W, dtype=torch.int32, device=table.device).view(1, H, W, 1)
        self.state = words.view(torch.int64).squeeze(-1)  # [N, H, W, C]
        self.buffers = [torch.empty_like(self.state) for _ in range(4)]
        self.best = torch.empty((num_bins, C), dtype=torch.int64, device=table.device)
        self.scratch = torch.empty((num_bins, C), dtype=torch.int64, device=table.device)

    def combine(self, state: Tensor, d: int, dim: int, slot: int) -> Tensor:
        n = state.shape[dim] - d
        out = self.buffers[slot]
        torch.maximum(state.narrow(dim, 0, n), state.narrow(dim, d, n), out=out.narrow(dim, 0, n))
        return out

    def query(self, state: Tensor, rows: list[Tensor], start: int) -> None:
        flat = state.view(-1, state.shape[-1])
        best = self.best.narrow(0, start, rows[0].shape[0])
        other = self.scratch.narrow(0, 0, rows[0].shape[0])
        torch.index_select(flat, 0, rows[0], out=best)
        for r in rows[1:]:
            torch.index_select(flat, 0, r, out=other)
            torch.maximum(best, other, out=best)

    def finish(self) -> tuple[Tensor, Tensor]:
        words = self.best.view(torch.int32).view(self.best.shape[0], -1, 2)
        high = words[..., 1]
        return (high ^ ((high >> 31) & 0x7FFFFFFF)).view(torch.float32), ~words[..., 0]


class _PairLevels:
    """Sparse-table levels for float64: (value, pixel index stored as a float) pairs.

    Within one level combination the first (left / upper) rectangle holds only earlier pixels in
    row-major order, so "take the second only if strictly greater" keeps the kernel's first
    maximum; the 4 overlapping rectangles of a bin are merged with the explicit rule "largest
    value, then smallest pixel".  Every step is a vectorised arithmetic op (torch.where with a
    mask is several times slower on CPU).
    """

    def __init__(self, table: Tensor, N: int, H: int, W: int, num_bins: int):
        C = table.shape[1]
        self.HW = H * W
        pixel = torch.arange(H * W, dtype=table.dtype, device=table.device).view(1, H, W, 1)
        self.state = (table.view(N, H, W, C), pixel.expand(N, H, W, C))
        self.best = (table.new_empty((num_bins, C)), table.new_empty((num_bins, C)))

    def combine(self, state: tuple[Tensor, Tensor], d: int, dim: int, slot: int) -> tuple[Tensor, Tensor]:
        v, i = state
        n = v.shape[dim] - d
        out_v, out_i = torch.empty_like(v), torch.empty_like(v)
        first_v, second_v = v.narrow(dim, 0, n), v.narrow(dim, d, n)
        first_i, second_i = i.narrow(dim, 0, n), i.narrow(dim, d, n)
        take = torch.sign(second_v - first_v).clamp_(min=0)  # 1 where the second is strictly greater
        torch.maximum(first_v, second_v, out=out_v.narrow(dim, 0, n))
        torch.addcmul(first_i, take, second_i - first_i, out=out_i.narrow(dim, 0, n))
        return out_v, out_i

    def query(self, state: tuple[Tensor, Tensor], rows: list[Tensor], start: int) -> None:
        v, i = (t.reshape(-1, t.shape[-1]) for t in state)
        cand = [(v.index_select(0, r), i.index_select(0, r)) for r in rows]
        m = torch.maximum(torch.maximum(cand[0][0], cand[1][0]), torch.maximum(cand[2][0], cand[3][0]))
        key = None
        for cv, ci in cand:
            k = torch.sign(m - cv).mul_(self.HW).add_(ci)  # + H*W unless it holds the maximum
            key = k if key is None else torch.minimum(key, k)
        self.best[0].narrow(0, start, m.shape[0]).copy_(m)
        self.best[1].narrow(0, start, m.shape[0]).copy_(key)

    def finish(self) -> tuple[Tensor, Tensor]:
        return self.best


def _roi_pool_argmax(table: Tensor, N: int, H: int, W: int, rois: Tensor, oh: int, ow: int, spatial_scale: float):
    """Maximum and arg-max pixel of every bin and channel, and which bins are empty.

    table: Tensor[N*H*W, C] channels-last feature rows. Returns (max Tensor[K, oh, ow, C];
    argmax Tensor[K, oh, ow, C] int64, the table row b*H*W + y*W + x of the bin's first maximum
    in row-major order; empty Tensor[K, oh, ow] bool).

    Uses a 2-D sparse table: level (a, c) holds, at (y, x), the max over [y, y + 2^a) x [x, x + 2^c)
    and its first arg-max; a bin is the union of 4 (overlapping) such rectangles.
    """
    K, C = rois.shape[0], table.shape[1]
    dtype = _compute_dtype(rois.dtype)
    coords = _c_round(rois[:, 1:].to(dtype) * spatial_scale).long()
    x1, y1, x2, y2 = coords.unbind(1)
    hs, he = _bins(y1, y2, oh, H, dtype)  # [K, oh]
    ws, we = _bins(x1, x2, ow, W, dtype)  # [K, ow]
    level_h = torch.floor(torch.log2((he - hs).clamp(min=1).double())).long()  # [K, oh]
    level_w = torch.floor(torch.log2((we - ws).clamp(min=1).double())).long()  # [K, ow]
    num_h, num_w = int(level_h.max()) + 1, int(level_w.max()) + 1  # host synchronisation: loop sizes
    b = rois[:, 0].long().view(K, 1, 1)
    top = hs.clamp(max=H - 1).view(K, oh, 1)
    bottom = (he - (1 << level_h)).clamp(min=0, max=H - 1).view(K, oh, 1)
    left = ws.clamp(max=W - 1).view(K, 1, ow)
    right = (we - (1 << level_w)).clamp(min=0, max=W - 1).view(K, 1, ow)
    corners = [(b * (H * W) + y * W + x).reshape(-1) for y in (top, bottom) for x in (left, right)]  # 4 x [K*oh*ow]
    # Bins sorted by level in the order the loop below builds them (x level outer, y level
    # inner): each level's results fill one contiguous slice.
    level = (level_w.view(K, 1, ow) * num_h + level_h.view(K, oh, 1)).reshape(-1)  # [K*oh*ow]
    order = torch.argsort(level)
    corners = [q[order] for q in corners]
    counts = torch.bincount(level, minlength=num_h * num_w).tolist()
    levels = (_PackedLevels if table.dtype == torch.float32 else _PairLevels)(table, N, H, W, K * oh * ow)

    # Level (a, c) is built from (a, c - 1) along x for a = 0, then from (a - 1, c) along y, and
    # queried right after it is built.  Entries whose rectangle would leave the map are never
    # queried (and stay uninitialised).
    row, start = levels.state, 0
    for c in range(num_w):
        if c > 0:
            row = levels.combine(row, 1 << (c - 1), 2, slot=c % 2)
        cur = row
        for a in range(num_h):
            if a > 0:
                cur = levels.combine(cur, 1 << (a - 1), 1, slot=2 + a % 2)
            n = counts[c * num_h + a]
            if n:
                levels.query(cur, [q.narrow(0, start, n) for q in corners], start)
                start += n
    sorted_v, sorted_pixel = levels.finish()
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    value = sorted_v.index_select(0, inverse).view(K, oh, ow, C)
    pixel = sorted_pixel.index_select(0, inverse).view(K, oh, ow, C)
    argmax = pixel.long().clamp_(0, H * W - 1) + (b * (H * W)).view(K, 1, 1, 1)
    empty = (he <= hs).view(K, oh, 1) | (we <= ws).view(K, 1, ow)
    return value, argmax, empty


class _RoIPoolFunction(torch.autograd.Function):
    """Bin maxima of the channels-last ``table``; the gradient of a bin goes to its arg-max pixel."""

    @staticmethod
    def forward(ctx, table: Tensor, rois: Tensor, nhw: tuple[int, int, int], output_size: tuple[int, int], spatial_scale: float):
        (N, H, W), (oh, ow) = nhw, output_size
        value, argmax, empty = _roi_pool_argmax(table, N, H, W, rois, oh, ow, spatial_scale)
        empty = empty.unsqueeze(3)  # [K, oh, ow, 1]: an empty bin outputs 0 and passes no gradient
        ctx.save_for_backward(argmax, empty)
        ctx.num_rows = table.shape[0]
        return value.masked_fill(empty, 0)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        argmax, empty = ctx.saved_tensors
        C = argmax.shape[3]
        grad = grad_out.masked_fill(empty, 0).reshape(-1, C)
        grad_table = grad.new_zeros((ctx.num_rows, C)).scatter_add_(0, argmax.view(-1, C), grad)
        return grad_table, None, None, None, None


def roi_pool(
    input: Tensor,
    rois: RoIs,
    output_size: Union[int, tuple[int, int]],
    spatial_scale: float = 1.0,
) -> Tensor:
    """RoI max pooling (Girshick, Fast R-CNN) with exactly torchvision's semantics.

    Box corners are rounded to feature cells (C ``round``), the (inclusive) box is split into
    ``floor``/``ceil`` bins clipped to the map, an empty bin gives 0 and the gradient of a bin goes
    to its first maximum in row-major order.

    Args:
        input: Tensor[N, C, H, W]; rois: Tensor[K, 5] or list of Tensor[Ki, 4] (image pixels);
        output_size: oh or (oh, ow); spatial_scale: feature size / image size.
    Returns:
        Tensor[K, C, oh, ow] in the input's dtype and device.
    """
    _check_input(input)
    oh, ow = _pair(output_size)
    rois = _as_roi_tensor(rois, input)
    N, C, H, W = input.shape
    K = rois.shape[0]
    if K == 0 or input.numel() == 0:
        return input.new_zeros((K, C, oh, ow)) + input.reshape(-1)[:0].sum()  # in the graph: zero grads
    table = input.to(_compute_dtype(input.dtype)).permute(0, 2, 3, 1).reshape(N * H * W, C).contiguous()
    out = _RoIPoolFunction.apply(table, rois, (N, H, W), (oh, ow), spatial_scale)  # [K, oh, ow, C]
    return out.permute(0, 3, 1, 2).to(input.dtype).contiguous()  # [K, C, oh, ow]


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------
class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`: ``forward(input, rois) -> Tensor[K, C, oh, ow]``."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )


class RoIPool(nn.Module):
    """Module form of :func:`roi_pool`: ``forward(input, rois) -> Tensor[K, C, oh, ow]``."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: RoIs) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


def infer_scale(feature_size: Sequence[int], image_size: Sequence[int]) -> float:
    """Scale 2 ** round(log2(feature / image)) of a feature map, as torchvision's ``_infer_scale``.

    feature_size, image_size: (height, width). Raises ValueError when the two axes disagree.
    """
    scales = []
    for f, i in zip(feature_size, image_size):
        approx = float(f) / float(i)
        scales.append(2 ** float(torch.tensor(approx).log2().round()))
    if scales[0] != scales[1]:
        raise ValueError(f"feature map {tuple(feature_size)} is not a power-of-two scale of image {tuple(image_size)}")
    return scales[0]


def map_levels(
    boxes: Sequence[Tensor], k_min: int, k_max: int, canonical_scale: float = 224, canonical_level: int = 4, eps: float = 1e-6
) -> Tensor:
    """FPN level index (0 = level ``k_min``) of every box (eq. 1 of the FPN paper): Tensor[sum Ki] int64.

    k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + eps), clamped to [k_min, k_max].
    """
    b = torch.cat(list(boxes), dim=0)
    s = torch.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    k = torch.floor(canonical_level + torch.log2(s / canonical_scale) + torch.tensor(eps, dtype=s.dtype))
    k = torch.clamp(k, min=k_min, max=k_max)
    return k.to(torch.int64) - k_min


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign over several feature maps (FPN), each RoI pooled from the level its size selects.

    Same semantics as ``torchvision.ops.MultiScaleRoIAlign``: the feature maps named in
    ``featmap_names`` are used in the order of the input dict; each level's scale is
    2 ** round(log2(feature size / largest image size of the batch)); RoIs go to level
    k = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6) clamped to the levels
    present; pooling is ``roi_align(..., aligned=False)``.

    forward(x: dict[str, Tensor[N, C, Hl, Wl]], boxes: list[Tensor[Ki, 4]] (image pixels),
    image_shapes: list[(h, w)]) -> Tensor[sum Ki, C, oh, ow], RoIs in the order of ``boxes``.
    """

    def __init__(self, featmap_names: Sequence[str], output_size, sampling_ratio: int, *, canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        self.featmap_names = list(featmap_names)
        self.output_size = _pair(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [v for k, v in x.items() if k in self.featmap_names]
        if not features:
            raise ValueError(f"none of the feature maps {self.featmap_names} is in the input (keys {list(x)})")
        if len(image_shapes) == 0:
            raise ValueError("image_shapes must list the (height, width) of every image")
        for f in features:
            _check_input(f)
        max_size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [infer_scale(f.shape[-2:], max_size) for f in features]
        rois = _as_roi_tensor(list(boxes), features[0])
        if len(features) == 1:
            return roi_align(features[0], rois, self.output_size, scales[0], self.sampling_ratio)
        k_min = int(-math.log2(scales[0]))
        k_max = int(-math.log2(scales[-1]))
        levels = map_levels(boxes, k_min, k_max, self.canonical_scale, self.canonical_level)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1]) + self.output_size)
        for level, (feature, scale) in enumerate(zip(features, scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            pooled = roi_align(feature, rois[idx], self.output_size, scale, self.sampling_ratio)
            result = result.index_copy(0, idx, pooled.to(result.dtype))
        return result
