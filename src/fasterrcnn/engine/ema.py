"""Exponential moving average (EMA) of a model's weights, as YOLOv5's ``ModelEMA`` and timm's ``ModelEmaV2``.

After each optimizer step ``u`` (1, 2, ...; skipped steps do not count)::

    d(u)   = min(decay, (1 + u) / (10 + u))     # warm-up of the decay: early averages follow the weights closely
    ema    = d(u) * ema + (1 - d(u)) * weights  # every floating-point parameter and buffer (BatchNorm statistics too)

Integer buffers (``num_batches_tracked``) are copied. The average is a second copy of the model, kept in
eval mode and never given gradients; the trainer validates it and writes it as the checkpoint's ``model``
(so ``eval``, ``predict`` and ``export`` use it), and the weights being trained beside it for resuming
(``engine/checkpoint.py``). Its state (``updates`` and the averaged tensors) makes resuming exact.
"""

from __future__ import annotations

import copy

import torch

__all__ = ["ModelEMA", "ema_decay"]


def ema_decay(decay: float, updates: int) -> float:
    """The decay used at optimizer step ``updates`` (1-based): ``min(decay, (1 + updates) / (10 + updates))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class ModelEMA:
    """The moving average of ``model``'s weights (``module``: a copy of ``model``, eval mode, no gradients)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One optimizer step of ``model`` (the same architecture) into the average."""
        self.updates += 1
        d = ema_decay(self.decay, self.updates)
        current = model.state_dict()
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.is_floating_point():
                average.mul_(d).add_(value.to(average.dtype), alpha=1.0 - d)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (a ``state_dict`` of the model)."""
        return self.module.state_dict()

    def load(self, weights: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average of a checkpoint: its weights and the number of steps averaged."""
        self.module.load_state_dict(weights)
        self.updates = int(updates)
