"""Backbones: the feature extractor (``body``) and the box head that goes with it, as ``BackboneParts``.

=========================  ==================================  ===================  ==========================
name                       body maps (stride)                  out_channels         box head -> width
=========================  ==================================  ===================  ==========================
"vgg16" (the paper)        "0" (16): conv5_3                   512                  fc6/fc7 -> 4096
"resnet50", "resnet101"    "0" (16): C4 (layer3)               1024                 res5 + avg pool -> 2048
"resnet50_fpn"             "0".."3", "pool" (4, 8, .. 64)      256                  TwoMLPHead -> 1024
"mobilenet_v3_large_fpn"   "0", "1", "pool" (32, 32, 64)       256                  TwoMLPHead -> 1024
"tiny"                     see ``tiny.py`` (a small CPU backbone)
=========================  ==================================  ===================  ==========================

Module names follow torchvision, so its ImageNet classification files load as ``weights_path``
(``weights.py``; the classifier layers are ignored, except VGG's fc6/fc7 which become the box head)
and its detection checkpoints load into a model built from these parts. Nothing is downloaded here:
``weights_path`` is a file (registered names are resolved by ``fasterrcnn.pretrained``).

``trainable_layers`` counts trainable stages from the top (None: the backbone's default, which does not
depend on whether weights are given): vgg16 0..5 (default 3: conv1, conv2 frozen, as in the paper),
resnet 0..5 (default 3: stem and layer1 frozen), mobilenet_v3_large_fpn 0..6 (default 3). The ResNet
and MobileNet backbones use frozen BatchNorm throughout. Box heads and FPNs always train.
``representation_size``: width of the fully connected box head (vgg16 default 4096, FPN heads 1024; the
ResNet C4 head is 2048 wide and only accepts None or 2048). ``pool_size``: side of the pooled RoIs the box
head receives (fc6 input = out_channels * pool_size ** 2; unused by the ResNet C4 head).
"""

from __future__ import annotations

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones.base import BackboneParts

__all__ = ["BACKBONE_NAMES", "BackboneParts", "build_backbone"]

BACKBONE_NAMES = ("vgg16", "resnet50", "resnet101", "resnet50_fpn", "mobilenet_v3_large_fpn", "tiny")


def build_backbone(
    name: str,
    *,
    weights_path: str | None = None,
    trainable_layers: int | None = None,
    representation_size: int | None = None,
    pool_size: int = 7,
) -> BackboneParts:
    """Build backbone ``name`` (see the table above), optionally loading a torchvision ImageNet file.

    Raises ConfigError for an unknown name or out-of-range option, DataError for a bad weights file.
    """
    kwargs = dict(
        weights_path=weights_path,
        trainable_layers=trainable_layers,
        representation_size=representation_size,
        pool_size=pool_size,
    )
    if name == "vgg16":
        from fasterrcnn.modeling.backbones.vgg import build_vgg16

        return build_vgg16(**kwargs)
    if name in ("resnet50", "resnet101"):
        from fasterrcnn.modeling.backbones.resnet import build_resnet_c4

        return build_resnet_c4(int(name[len("resnet") :]), **kwargs)
    if name == "resnet50_fpn":
        from fasterrcnn.modeling.backbones.resnet import build_resnet50_fpn

        return build_resnet50_fpn(**kwargs)
    if name == "mobilenet_v3_large_fpn":
        from fasterrcnn.modeling.backbones.mobilenet import build_mobilenet_v3_large_fpn

        return build_mobilenet_v3_large_fpn(**kwargs)
    if name == "tiny":
        from fasterrcnn.modeling.backbones.tiny import build_tiny

        return build_tiny(**kwargs)
    raise ConfigError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONE_NAMES)}")
