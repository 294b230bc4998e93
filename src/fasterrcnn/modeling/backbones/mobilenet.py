"""MobileNetV3-Large (Howard et al. 2019) with FPN: torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` backbone.

``mobilenet_v3_large_features`` is torchvision's ``mobilenet_v3_large().features`` (children 0..16:
stem conv, 15 inverted-residual blocks ``N.block.i``, last 1x1 conv to 960 channels) with frozen
BatchNorm (eps 1e-5: torchvision passes ``FrozenBatchNorm2d`` as ``norm_layer`` in its detection builder,
replacing the classification default eps 0.001). Torchvision's ImageNet file
(``mobilenet_v3_large-8738ca79.pth``) loads: ``features.N`` -> ``body.body.N``; ``classifier`` is ignored.

The FPN (torchvision ``_mobilenet_extractor`` with ``fpn=True``): the stage starts are children
[0, 2, 4, 7, 13, 16] (stem, the strided blocks C1..C4, last conv); the last two stages are returned:
child 13 (160 channels) as "0" and child 16 (960 channels) as "1", both stride 32, plus LastLevelMaxPool
"pool" (stride 64); 256 FPN channels.

Trainable stages: ``trainable_layers`` in 0..6 counts those 6 stages from the top; children before the
first trained stage start are frozen. The default 3 (torchvision's) trains children 7..16 and freezes 0..6.

Shape shorthand: N images, C channels, H x W map, K RoIs, P pool size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones.base import BackboneParts
from fasterrcnn.modeling.backbones.fpn import BackboneWithFPN, LastLevelMaxPool, TwoMLPHead
from fasterrcnn.modeling.backbones.layers import Conv2dNormActivation, FeatureExtractor, FrozenBatchNorm2d, freeze
from fasterrcnn.modeling.backbones.weights import Route, load_routed_weights

DEFAULT_TRAINABLE_LAYERS = 3


@dataclass(frozen=True)
class BlockConfig:
    """One inverted-residual block: torchvision's ``InvertedResidualConfig`` at width 1.0."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hardswish: bool
    stride: int


# MobileNetV3-Large, Table 1 of the paper (torchvision ``_mobilenet_v3_conf``, no reduced tail, no dilation).
LARGE_BLOCKS = (
    BlockConfig(16, 3, 16, 16, False, False, 1),
    BlockConfig(16, 3, 64, 24, False, False, 2),  # C1
    BlockConfig(24, 3, 72, 24, False, False, 1),
    BlockConfig(24, 5, 72, 40, True, False, 2),  # C2
    BlockConfig(40, 5, 120, 40, True, False, 1),
    BlockConfig(40, 5, 120, 40, True, False, 1),
    BlockConfig(40, 3, 240, 80, False, True, 2),  # C3
    BlockConfig(80, 3, 200, 80, False, True, 1),
    BlockConfig(80, 3, 184, 80, False, True, 1),
    BlockConfig(80, 3, 184, 80, False, True, 1),
    BlockConfig(80, 3, 480, 112, True, True, 1),
    BlockConfig(112, 3, 672, 112, True, True, 1),
    BlockConfig(112, 5, 672, 160, True, True, 2),  # C4
    BlockConfig(160, 5, 960, 160, True, True, 1),
    BlockConfig(160, 5, 960, 160, True, True, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going below 90 % of it (torchvision ``_make_divisible``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class SqueezeExcitation(nn.Module):
    """Channel attention: x * hardsigmoid(fc2(relu(fc1(avgpool(x))))) (torchvision ``SqueezeExcitation``).

    forward(x: Tensor[N, C, H, W]) -> Tensor[N, C, H, W]
    """

    def __init__(self, input_channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)  # [N, C, 1, 1]
        scale = F.hardsigmoid(self.fc2(F.relu(self.fc1(scale))))
        return scale * x


class InvertedResidual(nn.Module):
    """[expand 1x1] -> depthwise kxk (stride) -> [SE] -> project 1x1 (no activation), residual when shapes allow.

    forward(x: Tensor[N, in, H, W]) -> Tensor[N, out, H / stride, W / stride]
    """

    def __init__(self, cnf: BlockConfig, norm_layer):
        super().__init__()
        activation = nn.Hardswish if cnf.use_hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(
                Conv2dNormActivation(
                    cnf.input_channels, cnf.expanded_channels, 1, norm_layer=norm_layer, activation_layer=activation
                )
            )
        layers.append(
            Conv2dNormActivation(
                cnf.expanded_channels,
                cnf.expanded_channels,
                cnf.kernel,
                stride=cnf.stride,
                groups=cnf.expanded_channels,
                norm_layer=norm_layer,
                activation_layer=activation,
            )
        )
        if cnf.use_se:
            layers.append(SqueezeExcitation(cnf.expanded_channels, make_divisible(cnf.expanded_channels // 4)))
        layers.append(Conv2dNormActivation(cnf.expanded_channels, cnf.out_channels, 1, norm_layer=norm_layer))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        self.out_channels = cnf.out_channels
        self.is_strided = cnf.stride > 1  # starts a new stage (torchvision ``_is_cn``)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


def mobilenet_v3_large_features(norm_layer=FrozenBatchNorm2d) -> nn.Sequential:
    """torchvision's ``mobilenet_v3_large().features``: 17 children, output Tensor[N, 960, H/32, W/32]."""
    first, last = LARGE_BLOCKS[0].input_channels, LARGE_BLOCKS[-1].out_channels
    layers: list[nn.Module] = [
        Conv2dNormActivation(3, first, 3, stride=2, norm_layer=norm_layer, activation_layer=nn.Hardswish)
    ]
    layers += [InvertedResidual(cnf, norm_layer) for cnf in LARGE_BLOCKS]
    layers.append(Conv2dNormActivation(last, 6 * last, 1, norm_layer=norm_layer, activation_layer=nn.Hardswish))
    features = nn.Sequential(*layers)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return features


def build_mobilenet_v3_large_fpn(
    *,
    weights_path=None,
    trainable_layers: int | None = None,
    representation_size: int | None = None,
    pool_size: int = 7,
) -> BackboneParts:
    """torchvision's ``fasterrcnn_mobilenet_v3_large_fpn`` backbone (maps "0", "1", "pool"; strides 32, 32, 64;
    256 channels) and ``TwoMLPHead`` box head (fc6: 256 * P * P -> representation_size (default 1024), fc7)."""
    representation_size = 1024 if representation_size is None else representation_size
    features = mobilenet_v3_large_features()
    stage_starts = [0] + [i for i, b in enumerate(features) if getattr(b, "is_strided", False)] + [len(features) - 1]
    num_stages = len(stage_starts)  # 6
    trainable_layers = DEFAULT_TRAINABLE_LAYERS if trainable_layers is None else trainable_layers
    if not 0 <= trainable_layers <= num_stages:
        raise ConfigError(
            f"mobilenet_v3_large_fpn: trainable_layers must be in 0..{num_stages}, got {trainable_layers}"
        )

    returned = [stage_starts[num_stages - 2], stage_starts[num_stages - 1]]  # children 13 and 16
    extractor = FeatureExtractor(
        {str(i): m for i, m in enumerate(features)},
        {str(i): str(k) for k, i in enumerate(returned)},
        out_channels=features[-1].out_channels,
    )
    if weights_path is not None:
        load_routed_weights(
            weights_path,
            [Route("features.", extractor)],
            ignored=("classifier.",),
            layout="torchvision mobilenet_v3_large",
        )
    freeze_before = len(features) if trainable_layers == 0 else stage_starts[num_stages - trainable_layers]
    for child in features[:freeze_before]:
        freeze(child)

    body = BackboneWithFPN(
        extractor, [features[i].out_channels for i in returned], out_channels=256, extra_blocks=LastLevelMaxPool()
    )
    box_head = TwoMLPHead(256 * pool_size * pool_size, representation_size)
    return BackboneParts(
        body=body,
        featmap_names=["0", "1", "pool"],
        strides=[32, 32, 64],
        box_head=box_head,
        box_head_out_channels=representation_size,
    )
