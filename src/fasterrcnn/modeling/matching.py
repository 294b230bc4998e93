"""Matching predictions (anchors, proposals) to ground-truth boxes, and sampling them for the losses.

Shape shorthand:
    G   ground-truth boxes of an image
    M   predictions (anchors or proposals) of an image
    N   images (``sample_labels`` also accepts a batch ``[N, M]``)

Two kinds of labels live here:
- the Matcher's result per prediction: the index of its matched GT box, or
  ``BELOW_LOW_THRESHOLD`` (-1) / ``BETWEEN_THRESHOLDS`` (-2);
- sampling labels: ``IGNORE`` (-1), ``NEGATIVE`` (0), ``POSITIVE`` (1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IGNORE = -1
NEGATIVE = 0
POSITIVE = 1


class Matcher:
    """Assign to every prediction the GT box of highest IoU (torchvision's ``Matcher``).

    A prediction whose best IoU is < ``low_threshold`` gets ``BELOW_LOW_THRESHOLD``, one in
    ``[low_threshold, high_threshold)`` gets ``BETWEEN_THRESHOLDS``. With
    ``allow_low_quality_matches`` every GT box also keeps the prediction(s) of highest IoU with
    it (ties included) matched, whatever their IoU (the paper's "anchor with the highest IoU").
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} > high_threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: Tensor, valid_gt: Tensor | None = None) -> Tensor:
        """IoU matrix Tensor[G, M] (or a batch Tensor[N, G, M]) -> matched GT index Tensor[M] (or [N, M]) int64.

        ``valid_gt`` (bool Tensor[G] / [N, G]) marks real GT rows in a padded batch; padded rows
        must hold IoU values below every real one (e.g. -1) and never match.
        G must be >= 1 (images without GT are handled by the caller).
        """
        matched_vals, matches = match_quality_matrix.max(dim=-2)  # [.., M]
        all_matches = matches.clone() if self.allow_low_quality_matches else None
        below = matched_vals < self.low_threshold
        between = (matched_vals >= self.low_threshold) & (matched_vals < self.high_threshold)
        matches[below] = self.BELOW_LOW_THRESHOLD
        matches[between] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            highest_per_gt = match_quality_matrix.max(dim=-1, keepdim=True).values  # [.., G, 1]
            is_best = match_quality_matrix == highest_per_gt  # [.., G, M]
            if valid_gt is not None:
                is_best &= valid_gt[..., :, None]
            update = is_best.any(dim=-2)  # [.., M]
            matches = torch.where(update, all_matches, matches)
        return matches


def sample_labels(labels: Tensor, batch_size_per_image: int, positive_fraction: float, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> tuple[Tensor, Tensor]:
    """Sample at most ``batch_size_per_image`` labels per image, at most ``positive_fraction`` positive.

    labels: Tensor[M] or Tensor[N, M] with IGNORE / NEGATIVE / POSITIVE. Returns (pos_mask, neg_mask),
    bool tensors of the same shape. As torchvision's sampler: ``num_pos = min(int(batch * fraction),
    #positives)``, ``num_neg = min(batch - num_pos, #negatives)``, each drawn uniformly without
    replacement (a random key per element, the smallest keys win). IGNORE is never sampled.
    Deterministic for a seeded ``generator``: one generator for the batch (the keys of all rows drawn
    in one call), or a sequence of N generators, one per row, so that an image's sample does not
    depend on the other images of the batch (CPU generators draw the same first M keys whatever the
    padded width, so a row's sample does not depend on the padding either).
    """
    pos = labels == POSITIVE
    neg = labels == NEGATIVE
    max_pos = int(batch_size_per_image * positive_fraction)
    num_pos = pos.sum(dim=-1, keepdim=True).clamp(max=max_pos)  # [.., 1]
    num_neg = torch.minimum(neg.sum(dim=-1, keepdim=True), batch_size_per_image - num_pos)  # [.., 1]
    if isinstance(generator, Sequence):
        if labels.dim() != 2 or len(generator) != labels.shape[0]:
            raise ValueError(f"{len(generator)} generators for labels of shape {list(labels.shape)} (one per row of [N, M])")
        rows = [torch.rand(labels.shape[1], generator=g, device=g.device).to(labels.device) for g in generator]
        keys = torch.stack(rows) if rows else torch.zeros(labels.shape, device=labels.device)  # [N, M]
    else:
        gen_device = generator.device if generator is not None else labels.device
        keys = torch.rand(labels.shape, generator=generator, device=gen_device).to(labels.device)  # [.., M]
    return _take_smallest(keys, pos, num_pos, max_pos), _take_smallest(keys, neg, num_neg, batch_size_per_image)


def _take_smallest(keys: Tensor, candidates: Tensor, count: Tensor, max_count: int) -> Tensor:
    # Mask of the ``count`` candidates of smallest key (per row); non-candidates get key 2 > any key.
    mask = torch.zeros_like(candidates)
    k = min(max_count, keys.shape[-1])
    if k == 0:
        return mask
    masked = torch.where(candidates, keys, torch.full_like(keys, 2.0))
    order = masked.topk(k, dim=-1, largest=False, sorted=True).indices  # [.., k] smallest keys first
    chosen = torch.arange(k, device=keys.device) < count  # [.., k]
    return mask.scatter_(-1, order, chosen)
