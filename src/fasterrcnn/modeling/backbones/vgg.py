"""VGG16 as in the paper (Ren et al. 2015, Simonyan & Zisserman 2014): conv1_1 .. conv5_3 + ReLU, stride 16.

Body: torchvision's ``vgg16().features`` without its last max-pool (children 0..29, ``features.N``);
the four max-pools before it make the stride 16 and conv5_3 gives 512 channels.
Box head: fc6 (512 * P * P -> 4096) -> ReLU -> Dropout(0.5) -> fc7 (4096 -> 4096) -> ReLU -> Dropout(0.5)
on RoI-pooled conv5_3 features (P = pool_size, 7 in the paper).

Torchvision's ImageNet file (``vgg16-397923af.pth``: ``features.N.weight/bias``, ``classifier.0/3/6``) loads
with ``features.*`` -> body, ``classifier.0`` -> fc6, ``classifier.3`` -> fc7; ``classifier.6`` (ImageNet
fc8, 1000 classes) is ignored. That needs pool_size 7 and representation_size 4096.

Trainable stages: ``trainable_layers`` (0..5) counts conv stages from the top (conv5, conv4, ...);
the default 3 trains conv3_1 and above and freezes conv1 and conv2, as in the paper. fc6/fc7 always train.

Shape shorthand: N images, K RoIs, P pool size.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.backbones.base import BackboneParts
from fasterrcnn.modeling.backbones.layers import FeatureExtractor, freeze
from fasterrcnn.modeling.backbones.weights import Route, load_routed_weights

# Output channels of each conv layer, "M" for a 2x2 max-pool: conv1_x .. conv5_x (torchvision cfg "D"
# without the final pool).
_VGG16_CONV5_3 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
DEFAULT_TRAINABLE_LAYERS = 3
NUM_STAGES = 5


def vgg16_features() -> tuple[nn.Sequential, list[int]]:
    """conv1_1 .. relu5_3 as ``nn.Sequential`` (torchvision indices 0..29) and the conv stage (1..5) of each child."""
    layers: list[nn.Module] = []
    stages: list[int] = []
    in_channels, stage = 3, 1
    for v in _VGG16_CONV5_3:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            stages.append(stage)
            stage += 1
            continue
        conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        stages += [stage, stage]
        in_channels = v
    return nn.Sequential(*layers), stages


class VGG16BoxHead(nn.Module):
    """fc6 -> ReLU -> Dropout -> fc7 -> ReLU -> Dropout.

    forward(pooled: Tensor[K, 512, P, P]) -> Tensor[K, representation_size]
    """

    def __init__(self, in_channels: int, pool_size: int, representation_size: int = 4096, dropout: float = 0.5):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pool_size * pool_size, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        for fc in (self.fc6, self.fc7):
            nn.init.normal_(fc.weight, 0.0, 0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled.flatten(start_dim=1)  # [K, 512 * P * P]
        x = self.dropout(self.relu(self.fc6(x)))
        return self.dropout(self.relu(self.fc7(x)))  # [K, representation_size]


def build_vgg16(
    *,
    weights_path=None,
    trainable_layers: int | None = None,
    representation_size: int | None = None,
    pool_size: int = 7,
) -> BackboneParts:
    """The paper's VGG16 backbone: body (conv5_3, stride 16, 512 channels, map "0") and fc6/fc7 box head."""
    if trainable_layers is None:
        trainable_layers = DEFAULT_TRAINABLE_LAYERS
    if not 0 <= trainable_layers <= NUM_STAGES:
        raise ConfigError(f"vgg16: trainable_layers must be in 0..{NUM_STAGES}, got {trainable_layers}")
    representation_size = 4096 if representation_size is None else representation_size

    features, stages = vgg16_features()
    body = FeatureExtractor(OrderedDict(features=features), {"features": "0"}, out_channels=512)
    box_head = VGG16BoxHead(512, pool_size, representation_size)
    if weights_path is not None:
        load_routed_weights(
            weights_path,
            [
                Route("features.", body, "features."),
                Route("classifier.0.", box_head, "fc6."),
                Route("classifier.3.", box_head, "fc7."),
            ],
            ignored=("classifier.6.",),
            layout="torchvision vgg16",
        )
    for child, stage in zip(features, stages):
        if stage <= NUM_STAGES - trainable_layers:
            freeze(child)
    return BackboneParts(
        body=body, featmap_names=["0"], strides=[16], box_head=box_head, box_head_out_channels=representation_size
    )
