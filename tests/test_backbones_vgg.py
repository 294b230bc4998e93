import pytest
import torch
from torch import nn

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones import build_backbone

CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


@pytest.fixture(scope="module")
def vgg16():
    return build_backbone("vgg16")


def frozen_convs(parts):
    return [i for i, m in enumerate(parts.body["features"]) if isinstance(m, nn.Conv2d) and not m.weight.requires_grad]


def test_body_is_conv5_3_with_relu_at_stride_16(vgg16):
    features = vgg16.body["features"]
    assert len(features) == 30 and isinstance(features[29], nn.ReLU)
    assert [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)] == CONV_INDICES
    assert [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)] == [4, 9, 16, 23]
    assert vgg16.featmap_names == ["0"] and vgg16.strides == [16] and vgg16.body.out_channels == 512
    with torch.no_grad():
        out = vgg16.body(torch.rand(1, 3, 64, 96))
    assert list(out) == ["0"] and out["0"].shape == (1, 512, 4, 6)
    assert (out["0"] >= 0).all()  # ends with relu5_3


def test_box_head_fc6_fc7(vgg16):
    head = vgg16.box_head.eval()
    assert head.fc6.weight.shape == (4096, 512 * 7 * 7) and head.fc7.weight.shape == (4096, 4096)
    assert vgg16.box_head_out_channels == 4096
    with torch.no_grad():
        out = head(torch.rand(3, 512, 7, 7))
    assert out.shape == (3, 4096) and (out >= 0).all()
    assert head.dropout.p == 0.5


def test_paper_freezes_conv1_and_conv2(vgg16):
    assert frozen_convs(vgg16) == [0, 2, 5, 7]
    assert all(p.requires_grad for p in vgg16.box_head.parameters())


@pytest.mark.parametrize("trainable, frozen", [(0, CONV_INDICES), (1, CONV_INDICES[:10]), (5, [])])
def test_trainable_layers(trainable, frozen):
    parts = build_backbone("vgg16", trainable_layers=trainable, representation_size=8, pool_size=1)
    assert frozen_convs(parts) == frozen
    assert parts.box_head.fc6.weight.shape == (8, 512) and parts.box_head_out_channels == 8


def test_trainable_layers_out_of_range():
    with pytest.raises(ConfigError, match="vgg16: trainable_layers must be in 0..5, got 6"):
        build_backbone("vgg16", trainable_layers=6, representation_size=8, pool_size=1)
