"""Drawing detections: boxes in the class colour, score threshold, input checks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from fasterrcnn.visualize import class_color, draw_detections, to_pil_image


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
