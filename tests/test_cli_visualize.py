"""Drawing detections: boxes in the class colour, score threshold, input checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fasterrcnn.visualize import class_color, draw_detections, label_positions, to_pil_image


def test_class_colors_are_distinct():
    colors = [class_color(label) for label in range(1, 21)]
    assert len(set(colors)) == 20
    assert class_color(3) == class_color(3)


def test_boxes_are_drawn_in_the_class_color():
    image = torch.zeros(3, 60, 80)
    picture = draw_detections(image, [[10.0, 30.0, 50.0, 55.0], [60.0, 5.0, 75.0, 20.0]], [2, 1], [0.9, 0.1], ["a", "b"], score_threshold=0.5)
    assert isinstance(picture, Image.Image) and picture.size == (80, 60) and picture.mode == "RGB"
    assert picture.getpixel((30, 55)) == class_color(2)  # bottom edge of the first box
    assert picture.getpixel((10, 45)) == class_color(2)  # left edge
    assert picture.getpixel((67, 20)) == (0, 0, 0)  # second box is below the threshold: not drawn
    assert to_pil_image(image).getpixel((30, 55)) == (0, 0, 0)  # the input is not modified


def test_ground_truth_without_scores_and_pil_input():
    picture = draw_detections(Image.new("RGB", (40, 40)), torch.tensor([[5.0, 20.0, 35.0, 39.0]]), torch.tensor([1]), None, ["thing"])
    assert picture.getpixel((20, 39)) == class_color(1)


def test_bad_inputs():
    with pytest.raises(ValueError, match="label 3 outside 1..2"):
        draw_detections(torch.zeros(3, 10, 10), [[0, 0, 5, 5]], [3], [0.9], ["a", "b"])
    with pytest.raises(ValueError, match="differ in length"):
        draw_detections(torch.zeros(3, 10, 10), [[0, 0, 5, 5]], [1, 1], [0.9], ["a"])
    with pytest.raises(ValueError, match=r"Tensor\[3, H, W\]"):
        to_pil_image(torch.zeros(10, 10))


def test_labels_of_overlapping_boxes_do_not_cover_each_other():
    boxes, sizes = [[10.0, 30.0, 70.0, 60.0], [14.0, 32.0, 74.0, 62.0]], [(30, 12), (30, 12)]
    corners = label_positions(boxes, sizes, (100, 80))
    assert corners == [(10.0, 18.0), (14.0, 32.0)]  # the first above its box, the second inside its own
    (ax, ay), (bx, by) = corners
    assert not (ax < bx + 30 and bx < ax + 30 and ay < by + 12 and by < ay + 12)
    # at the canvas' edges: kept inside; a third tag where the first two are slides down to a free place
    assert label_positions([[0.0, 0.0, 20.0, 20.0]], [(30, 12)], (25, 40)) == [(0.0, 0.0)]
    third = label_positions([*boxes, [10.0, 30.0, 70.0, 60.0]], [*sizes, (30, 12)], (100, 80))[2]
    assert third == (10.0, 60.0)  # above and inside the box are taken: below it

    # drawn: the lower-scoring detection's tag is visible too (its colour at its tag's place)
    picture = draw_detections(torch.zeros(3, 80, 100), boxes, [1, 2], [0.9, 0.8], ["a", "b"])
    tag_b = [picture.getpixel((x, y)) for x in range(15, 44) for y in range(33, 44)]
    assert tag_b.count(class_color(2)) > 100
