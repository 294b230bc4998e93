"""ops.tiles: the windows of sliced inference cover the image, overlap as asked, and stay inside it."""

import pytest
import torch

from fasterrcnn.ops.tiles import tile_starts, tile_windows


def test_starts_step_by_size_minus_overlap_and_the_last_window_ends_on_the_edge():
    assert tile_starts(12000, 640, 0.2) == [*range(0, 11264 + 1, 512), 11360]
    assert tile_starts(1000, 400, 0.25) == [0, 300, 600]  # 600 + 400 = 1000 exactly: no extra window
    assert tile_starts(1001, 400, 0.25) == [0, 300, 600, 601]  # the edge window shifted inside, not padded


def test_a_side_no_longer_than_a_tile_gets_one_window_of_its_length():
    assert tile_starts(640, 640, 0.2) == [0]
    assert tile_starts(100, 640, 0.2) == [0]
    assert tile_windows(100, 300, 640).tolist() == [[0, 0, 300, 100]]


def test_windows_cover_the_image_row_by_row_with_equal_shapes_inside_it():
    windows = tile_windows(700, 1000, 256, overlap=0.2)
    assert windows.dtype == torch.int64
    assert windows[:5].tolist() == [[0, 0, 256, 256], [205, 0, 461, 256], [410, 0, 666, 256], [615, 0, 871, 256], [744, 0, 1000, 256]]
    assert ((windows[:, 2] - windows[:, 0]) == 256).all() and ((windows[:, 3] - windows[:, 1]) == 256).all()
    assert windows[:, :2].min() == 0 and windows[:, 2].max() == 1000 and windows[:, 3].max() == 700
    covered = torch.zeros(700, 1000, dtype=torch.bool)
    for x1, y1, x2, y2 in windows.tolist():
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    assert len(windows) == 5 * 4  # rows at 0, 205, 410, 444


def test_zero_overlap_tiles_touch_and_bad_arguments_are_refused():
    assert tile_starts(1024, 256, 0.0) == [0, 256, 512, 768]
    for bad in ({"length": 0, "size": 10, "overlap": 0.2}, {"length": 10, "size": 0, "overlap": 0.2}, {"length": 10, "size": 5, "overlap": 1.0}):
        with pytest.raises(ValueError):
            tile_starts(**bad)
