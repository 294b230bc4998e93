"""What every backbone builder returns: the feature extractor and the box head that goes with it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class BackboneParts:
    """A backbone split the way Faster R-CNN uses it.

    body: ``forward(x: Tensor[N, 3, H, W]) -> OrderedDict[str, Tensor[N, out_channels, Hi, Wi]]``,
        with an ``out_channels`` attribute; feature map names and strides in ``featmap_names`` /
        ``strides`` (same order).
    box_head: ``forward(pooled: Tensor[K, out_channels, P, P]) -> Tensor[K, box_head_out_channels]``
        (VGG fc6/fc7, ResNet res5 + average pool, or the FPN two-MLP head).
    """

    body: nn.Module
    featmap_names: list[str]
    strides: list[int]
    box_head: nn.Module
    box_head_out_channels: int
