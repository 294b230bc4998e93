"""Building blocks shared by the backbones, named like torchvision's so that its files load.

- ``FrozenBatchNorm2d``: BatchNorm with fixed statistics and affine parameters (all buffers).
- ``Conv2dNormActivation``: conv -> optional norm -> optional activation as an ``nn.Sequential``
  (torchvision ``ops/misc.py``; a conv without norm has a bias, giving the key ``<name>.0.bias``).
- ``FeatureExtractor``: torchvision's ``IntermediateLayerGetter``: runs its children in order and
  returns the outputs of the chosen ones as an ``OrderedDict``.
- ``freeze``: ``requires_grad_(False)`` on a module's parameters.

Shape shorthand: N images, C channels, H x W feature map.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters never change (torchvision ``FrozenBatchNorm2d``).

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers, so they are saved and loaded
    but never trained. ``forward(x: Tensor[N, C, H, W]) -> Tensor[N, C, H, W]`` computes
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``: the same as ``nn.BatchNorm2d`` in
    eval mode. Loading accepts and drops ``num_batches_tracked`` entries (files written from a regular
    BatchNorm, e.g. ImageNet classification files or untrained torchvision detection models).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # load_state_dict hands each module a copy of the caller's dict, so removing the key is safe.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # [C]
        shift = self.bias - self.running_mean * scale  # [C]
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class Conv2dNormActivation(nn.Sequential):
    """``Conv2d`` (padding ``(kernel_size - 1) // 2 * dilation``) -> ``norm_layer`` -> ``activation_layer``.

    Children are numbered 0, 1, 2 as in torchvision; the conv has a bias only when there is no norm.
    ``out_channels`` is kept as an attribute (the mobilenet extractor reads it).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        norm_layer=None,
        activation_layer=None,
        dilation: int = 1,
    ):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=groups,
                bias=norm_layer is None,
            )
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class FeatureExtractor(nn.ModuleDict):
    """Runs ``layers`` in order and returns the outputs named in ``return_layers`` (torchvision's
    ``IntermediateLayerGetter``; layers after the last returned one are not kept).

    forward(x: Tensor[N, 3, H, W]) -> OrderedDict[str, Tensor[N, Ci, Hi, Wi]] keyed by the values of
    ``return_layers`` (child name -> output name), in the order the children run.
    ``out_channels`` is the channel count of the last returned map.
    """

    def __init__(self, layers: OrderedDict[str, nn.Module], return_layers: dict[str, str], out_channels: int):
        missing = set(return_layers) - set(layers)
        if missing:
            raise ValueError(f"return_layers {sorted(missing)} are not among the layers {list(layers)}")
        kept: OrderedDict[str, nn.Module] = OrderedDict()
        remaining = set(return_layers)
        for name, module in layers.items():
            kept[name] = module
            remaining.discard(name)
            if not remaining:
                break
        super().__init__(kept)
        self.return_layers = dict(return_layers)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


def freeze(module: nn.Module) -> None:
    """Stop training ``module``'s parameters (``requires_grad = False``)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
