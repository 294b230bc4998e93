"""Fold inference-time BatchNorm into the convolution before it (for inference and export only).

A frozen BatchNorm (``FrozenBatchNorm2d``, or ``nn.BatchNorm2d`` in eval mode, which uses its running
statistics) after a convolution is an affine map per output channel:
``bn(conv(x)) = conv(x) * s + (b - m * s)`` with ``s = gamma / sqrt(var + eps)``. Folded, the conv's
weights become ``W * s`` (per output channel) and its bias ``(bias - m) * s + b``; the BatchNorm
becomes ``nn.Identity``. The outputs are equal up to float rounding, one pass over the activations
is saved per BatchNorm.

The folded model has a different ``state_dict`` (no ``bn*`` buffers, new conv biases): never fold a
model that is trained or saved; ``Detector`` folds its own copy for inference (``fuse=False`` keeps
the checkpoint's layout, e.g. for ``compress``).
"""

from __future__ import annotations

import torch
from torch import nn

from fasterrcnn.modeling.backbones.layers import FrozenBatchNorm2d

__all__ = ["fuse_batchnorm"]


def _is_frozen_norm(module: nn.Module) -> bool:
    return isinstance(module, FrozenBatchNorm2d) or (isinstance(module, nn.BatchNorm2d) and not module.training and module.track_running_stats)


def _folded_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new Conv2d computing ``norm(conv(x))``."""
    with torch.no_grad():
        var, mean = norm.running_var.double(), norm.running_mean.double()
        gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(var)
        beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(var)
        scale = gamma * torch.rsqrt(var + norm.eps)  # [Cout]
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        fused = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
        fused.bias.copy_((bias - mean) * scale + beta)
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every frozen BatchNorm into the Conv2d registered right before it in the same parent, in place.

    Registration order is the data flow in every backbone here (``conv1, bn1``, ``Sequential(conv, bn,
    act)``, ``downsample = Sequential(conv, bn)``), which is what the pairing relies on; a model in
    training mode is refused (its BatchNorm statistics may still change). Returns ``model``.
    """
    if model.training:
        raise ValueError("fuse_batchnorm is for inference: call model.eval() first (a trained model must keep its BatchNorm)")
    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if type(conv) is nn.Conv2d and _is_frozen_norm(norm) and norm.running_mean.shape[0] == conv.out_channels:
                setattr(parent, conv_name, _folded_conv(conv, norm))
                setattr(parent, norm_name, nn.Identity())
    return model
