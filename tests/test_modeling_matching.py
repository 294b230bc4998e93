"""Matcher (torchvision's semantics) and the balanced positive/negative sampler."""

import torch

from fasterrcnn.modeling.matching import IGNORE, NEGATIVE, POSITIVE, Matcher, sample_labels


def test_constants():
    assert (IGNORE, NEGATIVE, POSITIVE) == (-1, 0, 1)
    assert (Matcher.BELOW_LOW_THRESHOLD, Matcher.BETWEEN_THRESHOLDS) == (-1, -2)


def test_matcher_thresholds_and_low_quality_matches():
    iou = torch.tensor([[0.9, 0.5, 0.1, 0.2], [0.1, 0.65, 0.2, 0.25]])  # [G=2, M=4]
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, -2, -1, -1]
    # GT 1's best prediction (1, IoU 0.65) becomes a match although it is below 0.7
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 1, -1, -1]


def test_low_quality_matches_keep_ties():
    iou = torch.tensor([[0.4, 0.4, 0.1]])
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou).tolist() == [0, 0, -1]


def test_matcher_batched_with_padded_gt_rows():
    iou = torch.tensor([[[0.9, 0.2, 0.1], [-1.0, -1.0, -1.0]], [[0.1, 0.5, 0.8], [0.2, 0.6, 0.1]]])  # [N=2, Gmax=2, M=3]
    valid = torch.tensor([[True, False], [True, True]])
    out = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou, valid)
    assert out.tolist() == [[0, -1, -1], [-1, 1, 0]]


def test_sample_labels_counts_and_never_ignored():
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0, -1, -1, 1])
    g = torch.Generator().manual_seed(0)
    pos, neg = sample_labels(labels, 4, 0.5, g)
    assert int(pos.sum()) == 2 and int(neg.sum()) == 2
    assert bool((labels[pos] == POSITIVE).all()) and bool((labels[neg] == NEGATIVE).all())
    assert not bool((pos | neg)[labels == IGNORE].any())
    assert not bool((pos & neg).any())


def test_sample_labels_fills_with_negatives_when_few_positives():
    labels = torch.tensor([1, 0, 0, 0, 0, 0, -1])
    pos, neg = sample_labels(labels, 4, 0.5, torch.Generator().manual_seed(1))
    assert pos.tolist() == [True, False, False, False, False, False, False]
    assert int(neg.sum()) == 3 and not bool(neg[6])
    # fewer candidates than the batch: everything that is not ignored is taken
    pos, neg = sample_labels(labels, 256, 0.5, torch.Generator().manual_seed(1))
    assert pos.tolist() == [True] + [False] * 6
    assert neg.tolist() == [False, True, True, True, True, True, False]


def test_sample_labels_deterministic_and_batched():
    labels = torch.randint(-1, 2, (3, 500), generator=torch.Generator().manual_seed(3))
    a = sample_labels(labels, 64, 0.25, torch.Generator().manual_seed(7))
    b = sample_labels(labels, 64, 0.25, torch.Generator().manual_seed(7))
    c = sample_labels(labels, 64, 0.25, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[0].sum(dim=1).tolist() == [16, 16, 16]
    assert a[1].sum(dim=1).tolist() == [48, 48, 48]
    assert bool((labels[a[0]] == POSITIVE).all()) and bool((labels[a[1]] == NEGATIVE).all())
