import pytest
import torch
from torch import nn

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones import build_backbone
from fasterrcnn.modeling.backbones.layers import FrozenBatchNorm2d
from fasterrcnn.modeling.backbones.mobilenet import InvertedResidual, SqueezeExcitation, make_divisible


@pytest.fixture(scope="module")
def mobilenet():
    return build_backbone("mobilenet_v3_large_fpn")


def frozen_children(parts):
    extractor = parts.body.body
    return [name for name, child in extractor.items() if any(not p.requires_grad for p in child.parameters())]


def test_make_divisible():
    assert [make_divisible(v) for v in (18, 30, 120, 168, 240, 3, 12)] == [24, 32, 120, 168, 240, 8, 16]


def test_features_structure(mobilenet):
    extractor = mobilenet.body.body
    assert list(extractor.keys()) == [str(i) for i in range(17)]
    blocks = [extractor[str(i)] for i in range(1, 16)]
    assert all(isinstance(b, InvertedResidual) for b in blocks)
    assert [i for i in range(1, 16) if extractor[str(i)].is_strided] == [2, 4, 7, 13]
    assert [i for i in range(1, 16) if any(isinstance(m, SqueezeExcitation) for m in extractor[str(i)].block)] == [
        4, 5, 6, 11, 12, 13, 14, 15
    ]
    assert isinstance(extractor["0"][2], nn.Hardswish) and isinstance(extractor["16"][2], nn.Hardswish)
    assert isinstance(extractor["2"].block[0][2], nn.ReLU) and isinstance(extractor["7"].block[0][2], nn.Hardswish)
    assert len(extractor["1"].block) == 2  # no expansion conv when expanded == input channels
    assert extractor["1"].use_res_connect and not extractor["2"].use_res_connect and extractor["3"].use_res_connect
    norms = [m for m in extractor.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 1 + 2 + 3 * 14 + 1 and all(m.eps == 1e-5 for m in norms)
    assert extractor.return_layers == {"13": "0", "16": "1"}


def test_inverted_residual_adds_the_input():
    block = build_backbone("mobilenet_v3_large_fpn").body.body["3"].eval()  # 24 -> 24, stride 1
    x = torch.rand(1, 24, 5, 5)
    with torch.no_grad():
        assert torch.allclose(block(x), block.block(x) + x)


def test_outputs_and_box_head(mobilenet):
    assert mobilenet.featmap_names == ["0", "1", "pool"] and mobilenet.strides == [32, 32, 64]
    assert mobilenet.body.out_channels == 256 and mobilenet.box_head_out_channels == 1024
    with torch.no_grad():
        out = mobilenet.body(torch.rand(2, 3, 64, 96))
        head = mobilenet.box_head(torch.rand(3, 256, 7, 7))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (2, 256, 2, 3), "1": (2, 256, 2, 3), "pool": (2, 256, 1, 2)
    }
    assert head.shape == (3, 1024)


def test_default_freezes_the_first_three_stages(mobilenet):
    assert frozen_children(mobilenet) == [str(i) for i in range(7)]
    assert all(p.requires_grad for p in mobilenet.body.fpn.parameters())


@pytest.mark.parametrize("trainable, frozen", [(0, 17), (1, 16), (5, 2), (6, 0)])
def test_trainable_layers(trainable, frozen):
    parts = build_backbone("mobilenet_v3_large_fpn", trainable_layers=trainable)
    assert frozen_children(parts) == [str(i) for i in range(frozen)]


def test_trainable_layers_out_of_range():
    with pytest.raises(ConfigError, match="must be in 0..6, got 7"):
        build_backbone("mobilenet_v3_large_fpn", trainable_layers=7)
