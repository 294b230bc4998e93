"""Datasets (VOC, COCO, YOLO, synthetic shapes), conversion between them, augmentation and batching.

Samples are ``(image: Tensor[3, H, W] float32 RGB in [0, 1], target: dict)`` with ``boxes`` float32
[K, 4] continuous ``(x1, y1, x2, y2)`` pixels, ``labels`` int64 [K] in 1..C, ``image_id`` and
``orig_size`` (h, w); VOC adds ``difficult`` [K], COCO ``iscrowd`` [K] and ``crowd_boxes``.
Every dataset has ``classes``, ``ids``, ``skipped``, ``image_size(i)``, ``image_path(i)`` and
``ground_truth()`` (VOC-style, for evaluation).
"""

from __future__ import annotations

from fasterrcnn.data.bad_images import ON_BAD_IMAGE
from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.formats import build_dataset, dataset_class, dataset_format, evaluation_split, split_name
from fasterrcnn.data.images import DEFAULT_REDUCE_TO, image_size, load_image
from fasterrcnn.data.loader import GroupedBatchSampler, build_loader, collate
from fasterrcnn.data.protocol import DetectionDataset
from fasterrcnn.data.specs import TrainingData, ValidationData
from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_big_scene_voc, write_synthetic_voc
from fasterrcnn.data.transforms import Compose, RandomHorizontalFlip
from fasterrcnn.data.voc import VOC_CLASSES, VOCDataset
from fasterrcnn.data.yolo import YOLODataset


__all__ = [
    "COCODataset",
    "DEFAULT_REDUCE_TO",
    "Compose",
    "DetectionDataset",
    "GroupedBatchSampler",
    "ON_BAD_IMAGE",
    "RandomHorizontalFlip",
    "SYNTHETIC_CLASSES",
    "TrainingData",
    "VOCDataset",
    "VOC_CLASSES",
    "ValidationData",
    "YOLODataset",
    "build_dataset",
    "build_loader",
    "collate",
    "dataset_class",
    "dataset_format",
    "evaluation_split",
    "image_size",
    "load_image",
    "split_name",
    "write_big_scene_voc",
    "write_synthetic_voc",
]
