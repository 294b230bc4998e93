"""What the data sets that keep one parsed record per image (VOC, YOLO) answer the same way, written once.

A record has ``image_id``, ``image_path``, ``size`` ``(height, width)``, and ``num_clipped`` / ``num_dropped``:
the boxes of its annotation clipped to the image, and those empty after clipping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["RecordDataset"]

logger = logging.getLogger("fasterrcnn")


class RecordDataset(torch.utils.data.Dataset):
    """``ids``, ``__len__``, ``image_size`` and ``image_path`` of a data set of records (``data.DetectionDataset``);
    the subclass reads its format and calls ``_keep_records``."""

    _records: Sequence[Any]
    ids: list[str]

    def _keep_records(self, records: Sequence[Any], source: str, annotation_file: Callable[[Any], Path]) -> None:
        """Keep ``records`` (the images in order), and warn once, naming ``source`` and the first record's
        ``annotation_file``, when boxes were clipped or dropped."""
        self._records = list(records)
        self.ids = [record.image_id for record in self._records]
        self.num_clipped = sum(record.num_clipped for record in self._records)
        self.num_dropped = sum(record.num_dropped for record in self._records)
        if self.num_clipped or self.num_dropped:
            first = next(r for r in self._records if r.num_clipped or r.num_dropped)
            logger.warning(
                "%s: %d boxes clipped to the image, %d empty boxes dropped (the first in %s)",
                source, self.num_clipped, self.num_dropped, annotation_file(first),
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i`` from its record (no decoding)."""
        return self._records[i].size

    def image_path(self, i: int) -> Path:
        """The file of image ``i``."""
        return self._records[i].image_path
