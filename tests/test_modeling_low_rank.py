"""Truncated SVD of the box head (modeling/low_rank.py): exact at full rank, optimal at lower rank, saved and loaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from fasterrcnn.modeling.low_rank import LowRankLinear, compress_box_head, low_rank_box_head


def linear(in_features=40, out_features=24, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    nn.init.normal_(layer.bias)
    return layer


def test_full_rank_is_the_same_layer():
    layer = linear()
    low_rank = LowRankLinear.from_linear(layer, 24)
    x = torch.randn(7, 40)
    torch.testing.assert_close(low_rank(x), layer(x), rtol=0, atol=1e-5)
    assert low_rank.reduce.bias is None and torch.equal(low_rank.expand.bias, layer.bias)


@pytest.mark.parametrize("rank", [1, 5, 12])
def test_truncation_error_is_the_dropped_singular_values(rank):
    # Eckart-Young: the rank-r truncated SVD is the closest rank-r matrix; its Frobenius error is
    # the norm of the singular values it drops.
    layer = linear()
    low_rank = LowRankLinear.from_linear(layer, rank)
    assert low_rank.reduce.weight.shape == (rank, 40) and low_rank.expand.weight.shape == (24, rank)
    approx = (low_rank.expand.weight @ low_rank.reduce.weight).detach()
    singular = torch.linalg.svdvals(layer.weight.detach().double())
    expected = singular[rank:].square().sum().sqrt()
    assert float((approx.double() - layer.weight.detach().double()).norm()) == pytest.approx(float(expected), rel=1e-5)
    assert torch.linalg.matrix_rank(approx.double(), rtol=1e-6) == rank


@pytest.mark.parametrize("rank", [0, 25])
def test_rank_must_fit_the_layer(rank):
    with pytest.raises(ValueError, match=r"rank must be in \[1, 24\]"):
        LowRankLinear.from_linear(linear(), rank)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return FasterRCNN.from_preset("tiny", num_classes=3, min_size=96, max_size=128, **overrides).eval()


def test_compressed_model_at_full_rank_detects_the_same():
    model = tiny_model()
    images = [torch.rand(3, 90, 120, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        before = model(images)[0]
        compress_box_head(model, (256, 256))  # the tiny head is 6272 -> 256 -> 256: nothing dropped
        after = model(images)[0]
    assert model.config.box_head_ranks == (256, 256)
    assert torch.equal(before["labels"], after["labels"])
    torch.testing.assert_close(after["scores"], before["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(after["boxes"], before["boxes"], rtol=0, atol=1e-3)


def test_compressed_state_dict_loads_into_a_model_built_from_its_config():
    model = compress_box_head(tiny_model(), (16, 8))
    state = model.state_dict()
    assert {k for k in state if "box_head" in k} == {
        "roi_heads.box_head.fc6.reduce.weight",
        "roi_heads.box_head.fc6.expand.weight",
        "roi_heads.box_head.fc6.expand.bias",
        "roi_heads.box_head.fc7.reduce.weight",
        "roi_heads.box_head.fc7.expand.weight",
        "roi_heads.box_head.fc7.expand.bias",
    }
    rebuilt = FasterRCNN.from_config(model.config).eval()
    rebuilt.load_state_dict(state)  # strict: same keys and shapes
    images = [torch.rand(3, 100, 80, generator=torch.Generator().manual_seed(2))]
    with torch.no_grad():
        a, b = model(images)[0], rebuilt(images)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_compressing_twice_or_a_head_without_fc6_fc7_is_refused():
    model = compress_box_head(tiny_model(), (16, 8))
    with pytest.raises(ConfigError, match="already compressed"):
        compress_box_head(model, (8, 4))
    with pytest.raises(ConfigError, match="fully connected fc6 and fc7"):
        low_rank_box_head(nn.Sequential(nn.Conv2d(4, 4, 1)), (2, 2), keep_weights=False)
    with pytest.raises(ConfigError, match=r"box_head_ranks = \(16,\): must be a tuple of 2 integers"):
        tiny_model(box_head_ranks=(16,))
    with pytest.raises(ConfigError, match=r"fc7 is 256 -> 256, so its rank must be in \[1, 256\], got 300"):
        tiny_model(box_head_ranks=(16, 300))
