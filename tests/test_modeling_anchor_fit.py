"""Anchor fit: the share of boxes no anchor matches, and anchors chosen by k-means on constructed boxes."""

from __future__ import annotations

import pytest
import torch

from fasterrcnn.config import check_config, get_preset
from fasterrcnn.modeling.anchor_fit import POOR_FIT, anchor_shapes, box_shapes, check_anchors, fit_anchors, kmeans_1d, shape_iou, unmatched_share

TINY = get_preset("tiny").model  # sizes 16, 32, 64, 128; ratios 0.5, 1, 2; positive IoU 0.7


class Boxes:
    """A data set reduced to what the fit reads: boxes per image and image sizes."""

    def __init__(self, boxes: list[list[list[float]]], sizes: list[tuple[int, int]]):
        self.boxes, self.sizes = boxes, sizes

    def ground_truth(self):
        return [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4)} for b in self.boxes]

    def image_size(self, index):
        return self.sizes[index]


def test_shape_iou_and_the_unmatched_share_exact_values():
    assert torch.allclose(shape_iou(torch.tensor([[10.0, 20.0]]), torch.tensor([[20.0, 10.0], [10.0, 20.0]])), torch.tensor([[1 / 3, 1.0]]))
    assert anchor_shapes(((16.0,),), ((1.0,),)).tolist() == [[16.0, 16.0]]
    # 32 x 32 (size 32, ratio 1) and 45 x 23 (size 32, ratio 0.5) match; 100 x 20 (too long) and 4 x 4 (too small) do not
    boxes = torch.tensor([[32.0, 32.0], [45.0, 23.0], [100.0, 20.0], [4.0, 4.0]])
    assert unmatched_share(boxes, TINY.anchor_sizes, TINY.aspect_ratios, 0.7) == 0.5
    assert unmatched_share(torch.zeros((0, 2)), TINY.anchor_sizes, TINY.aspect_ratios, 0.7) == 0.0


def test_boxes_are_taken_at_the_transforms_size():
    data = Boxes([[[0, 0, 10, 20]], [[5, 5, 15, 10], [0, 0, 0, 4]], []], [(100, 200), (50, 50), (10, 10)])
    # image 1: short side 100 -> 256 (x2.56, long 512 > 384 -> x1.92); image 2: 50 -> 256 (x5.12, long fits)
    assert torch.allclose(box_shapes(data, 256, 384), torch.tensor([[19.2, 38.4], [51.2, 25.6]]))  # the empty box left out


def test_kmeans_finds_the_clusters():
    values = torch.tensor([1.0, 1.1, 0.9, 5.0, 5.2, 4.8])
    assert torch.allclose(kmeans_1d(values, 2), torch.tensor([1.0, 5.0], dtype=torch.float64))


def test_fit_matches_boxes_the_preset_misses_and_keeps_the_layout():
    g = torch.Generator().manual_seed(0)
    wide = torch.tensor([[100.0, 20.0]]) * (1 + 0.05 * torch.randn(200, 2, generator=g))
    small = torch.tensor([[10.0, 10.0]]) * (1 + 0.05 * torch.randn(200, 2, generator=g))
    boxes = torch.cat([wide, small])
    assert unmatched_share(boxes, TINY.anchor_sizes, TINY.aspect_ratios, 0.7) == 1.0
    sizes, ratios = fit_anchors(boxes, TINY.anchor_sizes, TINY.aspect_ratios, 0.7)
    assert [len(level) for level in sizes] == [4] and [len(level) for level in ratios] == [3]
    assert unmatched_share(boxes, sizes, ratios, 0.7) == 0.0
    assert fit_anchors(boxes, TINY.anchor_sizes, TINY.aspect_ratios, 0.7) == (sizes, ratios)  # deterministic
    fpn = get_preset("resnet50_fpn").model  # one size per level on 5 levels, 3 ratios: kept, sizes increasing
    sizes, ratios = fit_anchors(boxes, fpn.anchor_sizes, fpn.aspect_ratios, 0.7)
    assert [len(level) for level in sizes] == [1] * 5 and len(ratios) == 5 and len(set(ratios)) == 1
    assert [level[0] for level in sizes] == sorted(level[0] for level in sizes)
    check_config(fpn.__class__(**{**fpn.__dict__, "anchor_sizes": sizes, "aspect_ratios": ratios}))
    assert fit_anchors(boxes[:2], TINY.anchor_sizes, TINY.aspect_ratios, 0.7) == (TINY.anchor_sizes, TINY.aspect_ratios)  # too few boxes


def test_check_anchors_warns_on_a_poor_fit_and_fits_when_asked():
    boxes = [[[0, 0, 100, 20]], [[0, 0, 10, 10]]] * 10  # on 256 x 256 images: the transform keeps their size
    data = Boxes(boxes, [(256, 256)] * len(boxes))
    same, line = check_anchors(data, TINY, fit=False)
    assert same is TINY and line == (
        "warning: 100 % of 20 training boxes match no anchor at IoU 0.7 (the preset's anchors); --fit-anchors chooses anchors from the boxes"
    )
    fitted, line = check_anchors(data, TINY, fit=True)
    assert line.startswith("anchors fitted to the training boxes: sizes (") and line.endswith("100 % -> 0 % of 20 training boxes match no anchor at IoU 0.7")
    assert fitted.anchor_sizes != TINY.anchor_sizes and fitted.backbone == TINY.backbone
    good = Boxes([[[0, 0, 32, 32]]] * 10, [(256, 256)] * 10)
    assert check_anchors(good, TINY, fit=False) == (TINY, None) and POOR_FIT == 0.6


def test_the_cli_flag_sets_the_field():
    from fasterrcnn.cli import build_parser
    from fasterrcnn.cli.train import overrides_of

    args = build_parser().parse_args(["train", "--data", "x", "--output", "y", "--fit-anchors"])
    assert overrides_of(args)["train"]["fit_anchors"] is True
