"""What a data set must provide: the contract between ``data/`` and the engine, evaluation and the run layer.

A new format is one module with a class that satisfies ``DetectionDataset`` plus a line in
``build_dataset``'s detection; nothing above ``data/`` asks which format a data set is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["DetectionDataset", "label_statistics"]


@runtime_checkable
class DetectionDataset(Protocol):
    """A detection data set for training (``__getitem__``, ``image_size``), evaluation (``ground_truth``,
    ``coco``, ``default_metric``, ``label_to_category_id``) and the bad-image policy (``skipped``).

    Samples are ``(image: Tensor[3, H, W] float32 RGB in [0, 1], target)`` with ``boxes`` float32 [K, 4]
    xyxy pixels, ``labels`` int64 [K] in 1..C, ``image_id`` and ``orig_size`` (h, w).
    """

    classes: tuple[str, ...]
    """The C foreground class names: label ``l`` is ``classes[l - 1]``."""
    skipped: list[tuple[str, str]]
    """``(file, problem)`` of the images left out under ``on_bad_image="skip"`` (each named in a warning)."""
    default_metric: str
    """The metric its annotations are scored with by default: ``"voc"`` or ``"coco"``."""
    label_to_category_id: Mapping[int, int] | None
    """Label -> the category id of results files (COCO: the JSON's ids); None: the label itself."""
    coco: Any
    """A pycocotools ``COCO`` of the annotations, or None (the COCO metric then builds one from ``ground_truth``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]: ...

    ids: list[Any]
    """The image ids, in index order (``ground_truth``'s and results files' ``image_id``)."""

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of image ``index`` without decoding it (aspect-ratio grouping)."""
        ...

    def image_path(self, index: int) -> Path:
        """The file of image ``index`` (samples, predictions drawn on it)."""
        ...

    def ground_truth(self) -> list[dict[str, Any]]:
        """Per image: ``{"image_id", "boxes", "labels", "difficult"}`` for the VOC metric."""
        ...

    def describe(self) -> dict[str, Any]:
        """Where it comes from, as plain values (``{"format", "path", ...}``), for a run's ``config.json``."""
        ...


def label_statistics(dataset: DetectionDataset) -> tuple[Tensor, Tensor]:
    """``(labels [K] int64 in 1..C, boxes [K, 4] float32 xyxy as fractions of their image's width and height)``
    of every annotated object of ``dataset`` (``ground_truth``, in image order; ``image_size`` without decoding)."""
    import torch

    labels, boxes = [torch.zeros(0, dtype=torch.int64)], [torch.zeros(0, 4)]
    for index, truth in enumerate(dataset.ground_truth()):
        height, width = dataset.image_size(index)
        labels.append(truth["labels"].to(torch.int64))
        boxes.append(truth["boxes"].float() / torch.tensor([width, height, width, height], dtype=torch.float32))
    return torch.cat(labels), torch.cat(boxes)
