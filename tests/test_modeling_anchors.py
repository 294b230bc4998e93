"""Anchors: torchvision's rounded cell anchors, shifted by the stride, location-major order."""

import pytest
import torch

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.anchors import AnchorGenerator, cell_anchors


def test_cell_anchors_of_the_paper_match_torchvision():
    base = cell_anchors((128.0, 256.0, 512.0), (0.5, 1.0, 2.0))
    expected = torch.tensor(
        [
            [-91.0, -45.0, 91.0, 45.0],
            [-181.0, -91.0, 181.0, 91.0],
            [-362.0, -181.0, 362.0, 181.0],
            [-64.0, -64.0, 64.0, 64.0],
            [-128.0, -128.0, 128.0, 128.0],
            [-256.0, -256.0, 256.0, 256.0],
            [-45.0, -91.0, 45.0, 91.0],
            [-91.0, -181.0, 91.0, 181.0],
            [-181.0, -362.0, 181.0, 362.0],
        ]
    )
    assert torch.equal(base, expected)


def test_grid_anchors_exact_coordinates_and_count():
    gen = AnchorGenerator(((32.0,),), ((0.5, 1.0, 2.0),))
    (anchors,) = gen((32, 48), [(2, 3)])  # stride (16, 16)
    assert anchors.shape == (2 * 3 * 3, 4)
    assert torch.equal(anchors[:3], torch.tensor([[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]))
    # location (y=0, x=1), anchor 0: shifted by (16, 0)
    assert torch.equal(anchors[3], torch.tensor([-7.0, -11.0, 39.0, 11.0]))
    # location (y=1, x=2), anchor 1: shifted by (32, 16)
    assert torch.equal(anchors[(1 * 3 + 2) * 3 + 1], torch.tensor([16.0, 0.0, 48.0, 32.0]))


def test_strides_per_axis_and_several_levels():
    gen = AnchorGenerator(((16.0,), (32.0,)), ((1.0,), (1.0,)))
    a0, a1 = gen((64, 96), [(8, 12), (2, 3)])  # strides 8 and 32
    assert gen.num_anchors_per_location() == [1, 1]
    assert a0.shape == (96, 4) and a1.shape == (6, 4)
    assert torch.equal(a0[-1], torch.tensor([80.0, 48.0, 96.0, 64.0]))  # cell (7, 11): shift (88, 56)
    assert torch.equal(a1[4], torch.tensor([16.0, 16.0, 48.0, 48.0]))  # cell (1, 1): shift (32, 32)


def test_anchors_are_cached():
    gen = AnchorGenerator(((32.0,),), ((1.0,),))
    first = gen((32, 32), [(2, 2)])
    assert gen((32, 32), [(2, 2)])[0] is first[0]
    assert gen((64, 32), [(4, 2)])[0] is not first[0]


@pytest.mark.parametrize(
    "sizes, ratios, bad",
    [
        (((32.0,), (64.0,)), (0.5, 1.0), "aspect_ratios"),  # ratios not nested per level
        ((32.0, 64.0, 128.0), (0.5, 1.0, 2.0), "sizes"),  # neither nested: same lengths
        (((32.0,),), ((),), "aspect_ratios"),  # a level without ratios
        (((32.0,),), (("1",),), "aspect_ratios"),  # not a number
        (((-32.0,),), ((1.0,),), "sizes"),  # not positive
        ((), (), "sizes"),  # no level
    ],
)
def test_malformed_sizes_or_ratios_say_what_is_expected(sizes, ratios, bad):
    with pytest.raises(ConfigError, match=f"^anchor {bad} must be one non-empty tuple of positive numbers per feature level"):
        AnchorGenerator(sizes, ratios)


def test_mismatched_levels_name_both_counts():
    with pytest.raises(ConfigError, match=r"one tuple per feature level each, got 2 level\(s\) of sizes .* and 1 of aspect ratios"):
        AnchorGenerator(((32.0,), (64.0,)), ((0.5, 1.0),))
