import pytest

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.modeling.backbones import BackboneParts, build_backbone


def test_unknown_backbone_lists_the_names():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet18'; choose one of: vgg16, resnet50, resnet101"):
        build_backbone("resnet18")


def test_returns_backbone_parts():
    parts = build_backbone("mobilenet_v3_large_fpn", representation_size=64, pool_size=3)
    assert isinstance(parts, BackboneParts)
    assert parts.box_head.fc6.in_features == 256 * 3 * 3 and parts.box_head_out_channels == 64
    assert len(parts.featmap_names) == len(parts.strides)


def test_missing_weights_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="weights file not found"):
        build_backbone("resnet50", weights_path=str(tmp_path / "nope.pth"))
