import pytest
import torch

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones import build_backbone
from fasterrcnn.modeling.backbones.layers import FrozenBatchNorm2d
from fasterrcnn.modeling.backbones.resnet import Bottleneck


@pytest.fixture(scope="module")
def resnet50():
    return build_backbone("resnet50")


def frozen_prefixes(parts):
    names = [n for n, p in parts.body.named_parameters() if not p.requires_grad]
    names += ["head." + n for n, p in parts.box_head.named_parameters() if not p.requires_grad]
    return sorted({n.split(".")[0] for n in names})


def test_c4_body_stride_16_and_res5_head(resnet50):
    assert list(resnet50.body.keys()) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]
    assert resnet50.featmap_names == ["0"] and resnet50.strides == [16] and resnet50.body.out_channels == 1024
    with torch.no_grad():
        out = resnet50.body(torch.rand(1, 3, 64, 96))
        pooled = torch.rand(2, 1024, 14, 14)
        res5 = resnet50.box_head.layer4(pooled)
        head = resnet50.box_head(pooled)
    assert list(out) == ["0"] and out["0"].shape == (1, 1024, 4, 6)
    assert res5.shape == (2, 2048, 7, 7)  # first res5 block has stride 2
    assert head.shape == (2, 2048) and resnet50.box_head_out_channels == 2048
    assert torch.allclose(head, res5.mean(dim=(2, 3)))  # global average pool


def test_all_batchnorm_is_frozen(resnet50):
    modules = list(resnet50.body.modules()) + list(resnet50.box_head.modules())
    # stem, 4 downsamples, 3 per bottleneck
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in modules) == 1 + 4 + 3 * (3 + 4 + 6 + 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)


def test_bottleneck_strides_on_the_3x3_conv(resnet50):
    block = resnet50.body["layer2"][0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.downsample[0].stride == (2, 2)
    assert resnet50.box_head.layer4[0].conv2.stride == (2, 2)


def test_default_freezes_stem_and_layer1(resnet50):
    assert frozen_prefixes(resnet50) == ["conv1", "layer1"]
    assert all(p.requires_grad for p in resnet50.box_head.parameters())


@pytest.mark.parametrize(
    "trainable, frozen",
    [(0, ["conv1", "head", "layer1", "layer2", "layer3"]), (1, ["conv1", "layer1", "layer2", "layer3"]), (5, [])],
)
def test_trainable_layers(trainable, frozen):
    assert frozen_prefixes(build_backbone("resnet50", trainable_layers=trainable)) == frozen


def test_options_out_of_range():
    with pytest.raises(ConfigError, match="trainable_layers must be in 0..5, got -1"):
        build_backbone("resnet50", trainable_layers=-1)
    with pytest.raises(ConfigError, match="box head width is 2048"):
        build_backbone("resnet50", representation_size=1024)
    assert build_backbone("resnet50", representation_size=2048).box_head_out_channels == 2048


def test_resnet50_fpn_outputs_and_freezing():
    parts = build_backbone("resnet50_fpn")
    assert parts.featmap_names == ["0", "1", "2", "3", "pool"] and parts.strides == [4, 8, 16, 32, 64]
    assert parts.body.out_channels == 256 and parts.box_head_out_channels == 1024
    with torch.no_grad():
        out = parts.body(torch.rand(1, 3, 64, 96))
        head = parts.box_head(torch.rand(2, 256, 7, 7))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "0": (16, 24), "1": (8, 12), "2": (4, 6), "3": (2, 3), "pool": (1, 2)
    }
    assert head.shape == (2, 1024)
    frozen = sorted({n.split(".")[1] for n, p in parts.body.named_parameters() if not p.requires_grad})
    assert frozen == ["conv1", "layer1"]  # torchvision default: 3 trainable stages; FPN trains
    all_trainable = build_backbone("resnet50_fpn", trainable_layers=5, representation_size=32, pool_size=2)
    assert all(p.requires_grad for p in all_trainable.body.parameters())
    assert all_trainable.box_head.fc6.weight.shape == (32, 256 * 2 * 2)
