"""ResNet-50/101 backbones with frozen BatchNorm: C4 (He et al. 2016, detectron2 "R50-C4") and FPN.

Modules and names are torchvision's (``conv1``, ``bn1``, ``layer1`` .. ``layer4``, Bottleneck ``conv1..3``,
``bn1..3``, ``downsample.0/1``; the stride sits on the 3x3 conv, "ResNet v1.5"), so torchvision's
ImageNet files (``resnet50-0676ba61.pth``, ``resnet101-63fe2227.pth``) load; their ``fc`` is ignored.
Every BatchNorm is a ``FrozenBatchNorm2d`` (eps 1e-5), as in torchvision's detection models.

C4 ("resnet50", "resnet101"):
  body = conv1, bn1, relu, maxpool, layer1..layer3 -> map "0": 1024 channels, stride 16.
  box_head = layer4 (res5; its first block has stride 2, so 14x14 pooled RoIs become 7x7) + global
  average pool -> Tensor[K, 2048].
FPN ("resnet50_fpn", torchvision ``fasterrcnn_resnet50_fpn``): see ``build_resnet50_fpn``.

Trainable stages (torchvision's rule): ``trainable_layers`` in 0..5 counts stages from the top:
layer4, layer3, layer2, layer1, conv1. The default 3 trains layer2..layer4 and freezes the stem and
layer1. BatchNorm is frozen whatever the value.

Shape shorthand: N images, K RoIs, P pool size, H x W input.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones.base import BackboneParts
from fasterrcnn.modeling.backbones.fpn import BackboneWithFPN, LastLevelMaxPool, TwoMLPHead
from fasterrcnn.modeling.backbones.layers import FeatureExtractor, FrozenBatchNorm2d
from fasterrcnn.modeling.backbones.weights import Route, load_routed_weights

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGES_TOP_DOWN = ("layer4", "layer3", "layer2", "layer1", "conv1")
DEFAULT_TRAINABLE_LAYERS = 3


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 (x4 channels) with identity or projection shortcut.

    forward(x: Tensor[N, inplanes, H, W]) -> Tensor[N, 4 * planes, H / stride, W / stride]
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = FrozenBatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One ResNet stage (torchvision ``_make_layer``): ``blocks`` Bottlenecks, the first strided/projected."""
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
            FrozenBatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def resnet_stages(depth: int) -> OrderedDict[str, nn.Module]:
    """conv1, bn1, relu, maxpool, layer1 .. layer4 of torchvision's ResNet-``depth`` (frozen BatchNorm).

    Strides of the layer outputs: layer1 4, layer2 8, layer3 16, layer4 32; channels 256, 512, 1024, 2048.
    """
    if depth not in BLOCKS:
        raise ConfigError(f"resnet depth must be one of {sorted(BLOCKS)}, got {depth}")
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    stages["conv1"] = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    stages["bn1"] = FrozenBatchNorm2d(64)
    stages["relu"] = nn.ReLU(inplace=True)
    stages["maxpool"] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = 64
    for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), BLOCKS[depth])):
        stages[f"layer{i + 1}"] = make_layer(inplanes, planes, blocks, stride=1 if i == 0 else 2)
        inplanes = planes * Bottleneck.expansion
    for module in stages.values():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return stages


def freeze_stages(modules: list[nn.Module], trainable_layers: int) -> None:
    """Freeze every parameter whose name does not start with one of the top ``trainable_layers`` stages."""
    if not 0 <= trainable_layers <= len(STAGES_TOP_DOWN):
        raise ConfigError(f"resnet: trainable_layers must be in 0..{len(STAGES_TOP_DOWN)}, got {trainable_layers}")
    trained = STAGES_TOP_DOWN[:trainable_layers]
    for module in modules:
        for name, parameter in module.named_parameters():
            if not name.startswith(trained):
                parameter.requires_grad_(False)


class ResNetC4BoxHead(nn.Module):
    """res5 (``layer4``) on pooled RoIs, then global average pooling.

    forward(pooled: Tensor[K, 1024, P, P]) -> Tensor[K, 2048]   (layer4 maps P x P to ceil(P/2) x ceil(P/2))
    """

    def __init__(self, layer4: nn.Module):
        super().__init__()
        self.layer4 = layer4

    def forward(self, pooled: Tensor) -> Tensor:
        return self.layer4(pooled).mean(dim=(2, 3))  # [K, 2048]


def build_resnet_c4(
    depth: int,
    *,
    weights_path=None,
    trainable_layers: int | None = None,
    representation_size: int | None = None,
    pool_size: int = 14,
) -> BackboneParts:
    """ResNet-``depth`` C4: body up to layer3 (map "0", stride 16, 1024 channels), box head layer4 + avg pool.

    ``pool_size`` is not used by this head (any RoI size works; 14 as in detectron2 gives 7x7 res5 maps);
    ``representation_size`` must be None or 2048 (the width of res5).
    """
    if representation_size not in (None, 2048):
        raise ConfigError(
            f"resnet{depth} C4: the box head width is 2048 (res5); got representation_size={representation_size}"
        )
    stages = resnet_stages(depth)
    layer4 = stages.pop("layer4")
    body = FeatureExtractor(stages, {"layer3": "0"}, out_channels=1024)
    box_head = ResNetC4BoxHead(layer4)
    if weights_path is not None:
        routes = [Route(f"{name}.", body, f"{name}.") for name in stages] + [Route("layer4.", box_head, "layer4.")]
        load_routed_weights(weights_path, routes, ignored=("fc.",), layout=f"torchvision resnet{depth}")
    freeze_stages([body, box_head], DEFAULT_TRAINABLE_LAYERS if trainable_layers is None else trainable_layers)
    return BackboneParts(body=body, featmap_names=["0"], strides=[16], box_head=box_head, box_head_out_channels=2048)


def build_resnet50_fpn(
    *,
    weights_path=None,
    trainable_layers: int | None = None,
    representation_size: int | None = None,
    pool_size: int = 7,
) -> BackboneParts:
    """torchvision's ``fasterrcnn_resnet50_fpn`` backbone and box head.

    body: ``BackboneWithFPN`` (``body`` = conv1 .. layer4, ``fpn`` with 4 levels + LastLevelMaxPool), maps
    "0", "1", "2", "3", "pool" with strides 4, 8, 16, 32, 64 and 256 channels.
    box_head: ``TwoMLPHead`` (fc6: 256 * P * P -> representation_size (default 1024), fc7).
    ``weights_path``: a torchvision resnet50 ImageNet file, loaded into ``body.body`` (fc ignored); the FPN
    and the head keep their initialisation.
    """
    representation_size = 1024 if representation_size is None else representation_size
    stages = resnet_stages(50)
    return_layers = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}
    extractor = FeatureExtractor(stages, return_layers, out_channels=2048)
    if weights_path is not None:
        load_routed_weights(weights_path, [Route("", extractor)], ignored=("fc.",), layout="torchvision resnet50")
    freeze_stages([extractor], DEFAULT_TRAINABLE_LAYERS if trainable_layers is None else trainable_layers)
    body = BackboneWithFPN(extractor, [256, 512, 1024, 2048], out_channels=256, extra_blocks=LastLevelMaxPool())
    box_head = TwoMLPHead(256 * pool_size * pool_size, representation_size)
    return BackboneParts(
        body=body,
        featmap_names=["0", "1", "2", "3", "pool"],
        strides=[4, 8, 16, 32, 64],
        box_head=box_head,
        box_head_out_channels=representation_size,
    )
