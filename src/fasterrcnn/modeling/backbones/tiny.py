"""A tiny CNN backbone that trains from scratch on a CPU in minutes (the synthetic-shapes demo).

Body: four stages of 3x3 conv + BatchNorm + ReLU (16, 32, 64, 128 channels); the first three
halve the resolution, so the single feature map "0" has stride 8 and 128 channels; the last
stage is dilated (2) to widen the receptive field (~100 px) without losing resolution.
Box head: flatten -> fc6 -> ReLU -> fc7 -> ReLU (torchvision's TwoMLPHead names).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fasterrcnn.modeling.backbones.base import BackboneParts
from fasterrcnn.modeling.backbones.fpn import TwoMLPHead

STAGE_CHANNELS = (16, 32, 64, 128)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBody(nn.Module):
    """forward(x: [N, 3, H, W]) -> OrderedDict("0": [N, 128, ceil(H/8), ceil(W/8)])."""

    def __init__(self):
        super().__init__()
        c1, c2, c3, c4 = STAGE_CHANNELS
        self.stage1 = _conv_bn_relu(3, c1, stride=2)
        self.stage2 = nn.Sequential(_conv_bn_relu(c1, c2, stride=2), _conv_bn_relu(c2, c2))
        self.stage3 = nn.Sequential(_conv_bn_relu(c2, c3, stride=2), _conv_bn_relu(c3, c3))
        self.stage4 = nn.Sequential(_conv_bn_relu(c3, c4, dilation=2), _conv_bn_relu(c4, c4, dilation=2))
        self.out_channels = c4
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return OrderedDict([("0", x)])


def build_tiny(*, weights_path: str | None = None, trainable_layers: int | None = None, representation_size: int | None = None, pool_size: int = 7) -> BackboneParts:
    """The tiny backbone and its box head.

    weights_path: optional state dict of the body (a file saved from ``TinyBody().state_dict()``).
    trainable_layers: how many of the 4 stages, counted from the last, are trained (None: all).
    representation_size: box head width (default 256); pool_size: RoI output size S.
    """
    body = TinyBody()
    if weights_path is not None:
        # weights.py: read with weights_only=True (a pickle that would run code is refused), strict
        # keys and shapes, one-line DataError naming the file.
        from fasterrcnn.modeling.backbones.weights import Route, load_routed_weights

        load_routed_weights(weights_path, [Route("", body)], layout="tiny backbone (TinyBody().state_dict())")
    if trainable_layers is not None:
        if not 0 <= trainable_layers <= 4:
            raise ValueError(f"trainable_layers must be in 0..4 for the tiny backbone, got {trainable_layers}")
        for stage in (body.stage1, body.stage2, body.stage3, body.stage4)[: 4 - trainable_layers]:
            stage.requires_grad_(False)
    size = representation_size or 256
    box_head = TwoMLPHead(body.out_channels * pool_size * pool_size, size)
    return BackboneParts(body=body, featmap_names=["0"], strides=[8], box_head=box_head, box_head_out_channels=size)
