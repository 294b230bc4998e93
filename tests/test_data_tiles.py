"""Sliced training (data.transforms.RandomTile, crop_boxes) and the big-scene synthetic set."""

import numpy as np
import pytest
import torch

from fasterrcnn.data.synthetic import BIG_SCENE_LARGE, BIG_SCENE_SMALL, render_big_scene
from fasterrcnn.data.transforms import RandomTile, crop_boxes


def test_crop_boxes_clips_shifts_and_drops_small_remnants():
    boxes = torch.tensor(
        [
            [110.0, 120.0, 130.0, 140.0],  # inside the window (100, 100, 200, 200)
            [90.0, 120.0, 110.0, 140.0],  # half inside: kept, clipped
            [80.0, 120.0, 105.0, 140.0],  # 20 % inside: dropped (< 30 %)
            [150.0, 199.0, 400.0, 400.0],  # 1 px tall inside: dropped
            [300.0, 300.0, 310.0, 310.0],  # outside
        ]
    )
    cropped, keep = crop_boxes(boxes, (100, 100, 200, 200))
    assert keep.tolist() == [True, True, False, False, False]
    assert cropped.tolist() == [[10, 20, 30, 40], [0, 20, 10, 40]]


def test_random_tile_boxes_are_consistent_with_the_tile_pixels():
    # each object a block of its own value: after the tile, each kept box holds exactly its block's pixels
    image = torch.zeros(3, 300, 400)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [200.0, 100.0, 260.0, 180.0], [330.0, 240.0, 390.0, 290.0]])
    for value, (x1, y1, x2, y2) in enumerate(boxes.int().tolist(), start=1):
        image[:, y1:y2, x1:x2] = value / 10
    target = {"boxes": boxes, "labels": torch.tensor([1, 2, 3]), "difficult": torch.zeros(3, dtype=torch.bool), "image_id": "a", "orig_size": (300, 400)}
    generator = torch.Generator().manual_seed(0)
    kept_any = 0
    for _ in range(20):
        tile, tiled = RandomTile(128, generator=generator)(image, target)
        assert tile.shape == (3, 128, 128) and "orig_size" not in tiled and tiled["image_id"] == "a"
        assert len(tiled["boxes"]) == len(tiled["labels"]) == len(tiled["difficult"])
        for (x1, y1, x2, y2), label in zip(tiled["boxes"].round().int().tolist(), tiled["labels"].tolist()):
            kept_any += 1
            inside = tile[0, y1:y2, x1:x2]
            assert (inside == label / 10).all()  # the box covers its object's pixels only ...
            assert (tile[0] == label / 10).sum() == inside.numel()  # ... and all of them in the tile
    assert kept_any > 0
    assert RandomTile(512)(image, target)[0].shape == (3, 300, 400)  # a tile larger than the image: the image


def test_big_scene_has_small_objects_and_a_few_large_ones_deterministically():
    # smaller than the set's 2000-4000 px (the rule is the same at any size), for a fast test
    pixels, objects = render_big_scene(np.random.default_rng([0, 0]), (1200, 1300))
    assert pixels.shape == (1200, 1300, 3) and pixels.dtype == np.uint8
    sides = [((x2 - x1) * (y2 - y1)) ** 0.5 for _, (x1, y1, x2, y2) in objects]
    small = [s for s in sides if s <= BIG_SCENE_SMALL[1] * 1.2]
    large = [s for s in sides if s >= BIG_SCENE_LARGE[0] * 0.7]
    assert 20 <= len(small) <= 50 and 1 <= len(large) <= 3 and len(small) + len(large) == len(objects)
    assert all(0 <= x1 < x2 <= 1300 and 0 <= y1 < y2 <= 1200 for _, (x1, y1, x2, y2) in objects)
    again, same = render_big_scene(np.random.default_rng([0, 0]), (1200, 1300))
    assert same == objects and np.array_equal(again, pixels)


def test_train_refuses_a_tile_smaller_than_32_pixels(tmp_path):
    from fasterrcnn.errors import ConfigError
    from fasterrcnn.runs import TrainingData, train

    with pytest.raises(ConfigError, match="slice must be a tile size of at least 32 pixels, got 8"):
        train(TrainingData(tmp_path / "data", slice=8), tmp_path / "run", preset="tiny")
    assert not (tmp_path / "run").exists()
