"""Detection results in the COCO results format: one JSON list of dicts, one dict per box.

Each entry is::

    {"image_id": 42 | "000005",   # COCO: the JSON's int image id; VOC: the image's file stem
     "category_id": 18,           # COCO: the JSON's category id; VOC: 1-based index in the class list
     "category_name": "dog",
     "bbox": [x, y, w, h],        # continuous pixels of the original image, w = x2 - x1, h = y2 - y1
     "score": 0.93,
     "probabilities": [...]}    # only when the detections carry them (predict --probabilities):
                                # the box head's softmax over background + the C classes, in label order

This is the file ``pycocotools`` reads (``COCO.loadRes``); the VOC evaluator reads the same list.
Boxes inside the model are ``(x1, y1, x2, y2)``; they are converted to ``xywh`` only here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from fasterrcnn.errors import DataError
from fasterrcnn.io import atomic_write_text
from fasterrcnn.reading import RESULTS_BYTES, load_json

__all__ = ["detections_to_results", "load_results", "results_to_detections", "save_results"]

REQUIRED_KEYS = ("image_id", "category_id", "bbox", "score")


def detections_to_results(
    image_id: Any,
    detection: Mapping[str, Tensor],
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int] | None = None,
) -> list[dict]:
    """Convert one image's detections into results entries (in the detections' order).

    Args:
        image_id: the image's id as the dataset names it (COCO int id, VOC file stem).
        detection: ``{"boxes": Tensor[D,4] xyxy, "labels": Tensor[D] in 1..C, "scores": Tensor[D]}``, and
            optionally ``"probabilities": Tensor[D, C+1]`` (copied into each entry).
        class_names: the C foreground class names; label ``l`` is ``class_names[l - 1]``.
        label_to_category_id: label -> dataset category id (COCO); ``None`` keeps the label
            as the category id (VOC).

    Returns:
        D dicts with ``image_id``, ``category_id``, ``category_name``, ``bbox`` [x, y, w, h]
        (computed in float64 from the boxes, so ``x + w`` gives back ``x2`` exactly) and ``score``.
    """
    boxes = detection["boxes"].detach().to("cpu", torch.float64)
    labels = detection["labels"].detach().cpu().tolist()
    scores = detection["scores"].detach().cpu().tolist()
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not (len(boxes) == len(labels) == len(scores)):
        raise ValueError(
            f"detection for image {image_id!r}: expected boxes [D,4], labels [D], scores [D], got "
            f"{tuple(boxes.shape)}, {len(labels)}, {len(scores)}"
        )
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    rows = detection["probabilities"].detach().cpu().tolist() if "probabilities" in detection else None
    results = []
    for k, (box, label, score) in enumerate(zip(xywh, labels, scores)):
        label = int(label)
        if not 1 <= label <= len(class_names):
            raise ValueError(f"detection for image {image_id!r}: label {label} outside 1..{len(class_names)}")
        category_id = label if label_to_category_id is None else int(label_to_category_id[label])
        results.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "category_name": class_names[label - 1],
                "bbox": box,
                "score": float(score),
                **({"probabilities": rows[k]} if rows is not None else {}),
            }
        )
    return results


def results_to_detections(
    results: Sequence[Mapping[str, Any]],
    category_id_to_label: Mapping[int, int] | None = None,
) -> dict[Any, dict[str, Tensor]]:
    """Group results entries by image back into detections (the inverse of ``detections_to_results``).

    Args:
        results: results entries (``bbox`` is ``[x, y, w, h]``).
        category_id_to_label: dataset category id -> label (COCO); ``None``: the category id is
            the label (VOC).

    Returns:
        ``{image_id: {"boxes": float32 Tensor[D,4] xyxy, "labels": int64 Tensor[D], "scores": float32 Tensor[D]}}``,
        images in order of first appearance, boxes in the entries' order; with ``"probabilities"`` [D, C+1] too
        when the entries carry them (``predict --probabilities``).
    """
    grouped: dict[Any, tuple[list, list, list]] = {}
    rows: dict[Any, list] = {}
    for entry in results:
        boxes, labels, scores = grouped.setdefault(entry["image_id"], ([], [], []))
        if "probabilities" in entry:
            rows.setdefault(entry["image_id"], []).append(entry["probabilities"])
        x, y, w, h = (float(v) for v in entry["bbox"])
        boxes.append([x, y, x + w, y + h])
        category_id = int(entry["category_id"])
        labels.append(category_id if category_id_to_label is None else int(category_id_to_label[category_id]))
        scores.append(float(entry["score"]))
    return {
        image_id: {
            "boxes": torch.tensor(boxes, dtype=torch.float64).to(torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "scores": torch.tensor(scores, dtype=torch.float32),
            **({"probabilities": torch.tensor(rows[image_id], dtype=torch.float32)} if len(rows.get(image_id, ())) == len(scores) else {}),
        }
        for image_id, (boxes, labels, scores) in grouped.items()
    }


def save_results(path: str | os.PathLike, results: Sequence[Mapping[str, Any]]) -> None:
    """Write ``results`` to ``path`` as a JSON list, atomically (a reader never sees half a file)."""
    atomic_write_text(path, json.dumps(list(results), allow_nan=False) + "\n")


def load_results(path: str | os.PathLike) -> list[dict]:
    """Read and check a results JSON file written by ``save_results`` (or any COCO bbox results file).

    Raises:
        DataError: the file is unreadable, not JSON, not a list, or an entry lacks a key, has a
            ``bbox`` that is not 4 finite numbers with ``w, h >= 0``, a non-numeric ``score``, or a
            non-integer ``category_id`` (message ``"path: entry 12: ..."``, one line).
    """
    results = load_json(path, RESULTS_BYTES, "results file")
    if not isinstance(results, list):
        raise DataError(path, f"expected a JSON list of detections, got {type(results).__name__}")
    for i, entry in enumerate(results):
        problem = _entry_problem(entry)
        if problem is not None:
            raise DataError(path, f"entry {i}: {problem}")
    return results


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _entry_problem(entry: Any) -> str | None:
    """Describe what is wrong with one results entry, or return None when it is well formed."""
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        return f"missing key(s) {', '.join(missing)}"
    if not isinstance(entry["image_id"], (int, str)) or isinstance(entry["image_id"], bool):
        return f"image_id must be an int or a string, got {entry['image_id']!r}"
    if not isinstance(entry["category_id"], int) or isinstance(entry["category_id"], bool):
        return f"category_id must be an integer, got {entry['category_id']!r}"
    if "category_name" in entry and not isinstance(entry["category_name"], str):
        return f"category_name must be a string, got {entry['category_name']!r}"
    bbox = entry["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return f"bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox width and height must be >= 0, got {bbox!r}"
    if not _is_number(entry["score"]):
        return f"score must be a finite number, got {entry['score']!r}"
    return None
