"""Feature Pyramid Network (Lin et al. 2017) and the two-MLP box head, as torchvision builds them.

Names follow torchvision (``ops/feature_pyramid_network.py``, ``models/detection/backbone_utils.py``,
``models/detection/faster_rcnn.py``) so its detection checkpoints load:
``BackboneWithFPN.body`` (the feature extractor), ``.fpn.inner_blocks.i.0`` (1x1 lateral convs),
``.fpn.layer_blocks.i.0`` (3x3 output convs); ``TwoMLPHead.fc6`` / ``.fc7``.

Shape shorthand: N images, Ci channels of input level i, Hi x Wi its size, K RoIs, P pool size.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from fasterrcnn.modeling.backbones.layers import Conv2dNormActivation


class LastLevelMaxPool(nn.Module):
    """Adds map "pool": the last FPN output subsampled by 2 (``max_pool2d(kernel 1, stride 2)``)."""

    def forward(self, results: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return [*results, F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)], [*names, "pool"]


class FeaturePyramidNetwork(nn.Module):
    """Top-down pathway with lateral connections.

    forward(x: OrderedDict[str, Tensor[N, Ci, Hi, Wi]], finest first)
        -> OrderedDict[str, Tensor[N, out_channels, Hi, Wi]]
    with the same keys (plus "pool" with ``LastLevelMaxPool``). Coarser maps are upsampled (nearest) to
    the size of the finer one, so odd sizes work.
    """

    def __init__(self, in_channels_list: list[int], out_channels: int, extra_blocks: nn.Module | None = None):
        super().__init__()
        self.inner_blocks = nn.ModuleList(
            Conv2dNormActivation(c, out_channels, kernel_size=1, padding=0) for c in in_channels_list
        )
        self.layer_blocks = nn.ModuleList(
            Conv2dNormActivation(out_channels, out_channels, kernel_size=3) for _ in in_channels_list
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)
        self.extra_blocks = extra_blocks

    def forward(self, x: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        names = list(x.keys())
        features = list(x.values())
        last_inner = self.inner_blocks[-1](features[-1])  # [N, out, H_last, W_last]
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[idx](features[idx])  # [N, out, Hi, Wi]
            top_down = F.interpolate(last_inner, size=lateral.shape[-2:], mode="nearest")  # [N, out, Hi, Wi]
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, names)
        return OrderedDict(zip(names, results))


class BackboneWithFPN(nn.Module):
    """A feature extractor (``body``) followed by an FPN (``fpn``); torchvision's ``BackboneWithFPN``.

    forward(x: Tensor[N, 3, H, W]) -> OrderedDict[str, Tensor[N, out_channels, Hi, Wi]]
    """

    def __init__(
        self, body: nn.Module, in_channels_list: list[int], out_channels: int, extra_blocks: nn.Module | None = None
    ):
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


class TwoMLPHead(nn.Module):
    """fc6 -> ReLU -> fc7 -> ReLU (torchvision ``TwoMLPHead``).

    forward(pooled: Tensor[K, C, P, P]) -> Tensor[K, representation_size], with in_channels = C * P * P.
    """

    def __init__(self, in_channels: int, representation_size: int):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, pooled: Tensor) -> Tensor:
        x = pooled.flatten(start_dim=1)  # [K, C * P * P]
        x = F.relu(self.fc6(x))
        return F.relu(self.fc7(x))
