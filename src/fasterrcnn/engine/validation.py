"""Validation losses: a detector's training losses on held-out data, computed without changing the detector.

The model computes its losses only in training mode (anchor targets, RoI sampling, losses), but
training mode also changes what some layers do: BatchNorm normalises with the batch's statistics
and updates its running statistics, Dropout zeroes activations at random. ``validation_losses``
therefore runs the model in *loss mode* (``loss_mode``): every module in training mode except
those layers, which stay in eval mode. The network computes what it computes at test time and the
detection logic samples and scores as in training (with the ``*_train`` proposal limits), so the
validation losses are comparable to the training losses.

Nothing of the model or of the training run changes: no gradient is computed, every module's
mode is restored afterwards, the sampling uses a generator of its own (seeded with ``seed``, so
every evaluation of a run draws the same random numbers), and torch's global RNG is restored
(``torch.random.fork_rng``). Exact resume is unaffected.

The results are named after the training losses with a ``val_`` prefix: ``val_loss`` (their
sum) and ``val_loss_objectness``, ``val_loss_rpn_box_reg``, ``val_loss_classifier``,
``val_loss_box_reg``; each is the mean over the images (the mean of the per-batch losses, each
batch weighted by its number of images).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["MODE_DEPENDENT_LAYERS", "loss_mode", "validation_losses"]

# Layers whose output or state depends on train / eval mode: BatchNorm and InstanceNorm with running
# statistics (their common base class), and every Dropout variant. (FrozenBatchNorm2d does not depend on it.)
MODE_DEPENDENT_LAYERS = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)


@contextlib.contextmanager
def loss_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: ``model`` in training mode but its ``MODE_DEPENDENT_LAYERS`` in eval mode; afterwards
    every module has the mode it had before."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, MODE_DEPENDENT_LAYERS):
                module.eval()
        yield model
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def validation_losses(
    model: nn.Module,
    dataset,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """The mean training losses of ``model`` on ``dataset`` as ``{"val_loss": sum, "val_<loss name>": mean}``.

    ``model(images, targets)`` must return a dict of scalar losses in training mode; a
    ``generator`` attribute, when the model has one, is replaced by a generator seeded with
    ``seed`` for the call and put back afterwards. Returns ``{}`` for an empty dataset.
    """
    from tqdm import tqdm

    from fasterrcnn.data.loader import build_loader
    from fasterrcnn.engine.trainer import _to_device

    if len(dataset) == 0:
        return {}
    loader = build_loader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, seed=seed, group_by_aspect_ratio=False)
    loader.batch_sampler.set_epoch(0)
    device = torch.device(device)
    sums: dict[str, float] = {}
    count = 0
    has_generator = hasattr(model, "generator")
    training_generator = getattr(model, "generator", None)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), loss_mode(model):
        if has_generator:
            model.generator = torch.Generator().manual_seed(seed)  # on the CPU, as the trainer's: the same samples on any device
        try:
            for images, targets in tqdm(loader, desc="validation losses", unit="batch", disable=not progress or None, leave=False):
                images = [image.to(device) for image in images]
                for name, value in model(images, _to_device(targets, device)).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(images)
                count += len(images)
        finally:
            if has_generator:
                model.generator = training_generator
    means = {name: total / count for name, total in sums.items()}
    return {"val_loss": sum(means.values()), **{f"val_{name}": value for name, value in means.items()}}
