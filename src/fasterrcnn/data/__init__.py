"""Datasets (VOC, COCO, YOLO, synthetic shapes), conversion between them, augmentation and batching.

Samples are ``(image: Tensor[3, H, W] float32 RGB in [0, 1], target: dict)`` with ``boxes`` float32
[K, 4] continuous ``(x1, y1, x2, y2)`` pixels, ``labels`` int64 [K] in 1..C, ``image_id`` and
``orig_size`` (h, w); VOC adds ``difficult`` [K], COCO ``iscrowd`` [K] and ``crowd_boxes``.
Every dataset has ``classes``, ``ids``, ``skipped``, ``image_size(i)``, ``image_path(i)`` and
``ground_truth()`` (VOC-style, for evaluation).
"""

from __future__ import annotations

from pathlib import Path

from fasterrcnn.data.bad_images import ON_BAD_IMAGE, check_policy
from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.formats import dataset_class, dataset_format, evaluation_split, split_name
from fasterrcnn.data.images import DEFAULT_REDUCE_TO, image_size, load_image
from fasterrcnn.data.loader import GroupedBatchSampler, build_loader, collate
from fasterrcnn.data.protocol import DetectionDataset
from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_big_scene_voc, write_synthetic_voc
from fasterrcnn.data.transforms import Compose, RandomHorizontalFlip
from fasterrcnn.data.voc import VOC_CLASSES, VOCDataset
from fasterrcnn.data.yolo import YOLODataset
from fasterrcnn.errors import DataError


def build_dataset(
    path, *, split: str = "trainval", images_dir=None, classes=None, transforms=None, on_bad_image: str = "error",
    drop_empty: bool = False, reduce_to: tuple[int, int] | None = DEFAULT_REDUCE_TO,
):
    """A ``VOCDataset`` for a folder with ``Annotations/``, a ``COCODataset`` for a ``.json`` file, a
    ``YOLODataset`` for a ``data.yaml`` (or a folder holding one).

    ``split`` applies to VOC (``ImageSets/Main/<split>.txt``) and YOLO (a key of ``data.yaml``),
    ``images_dir`` to COCO, ``drop_empty`` (leave out images without trainable objects) to COCO
    and YOLO. ``classes`` fixes a VOC class list; for COCO and YOLO (whose classes are in the file)
    it is checked against the file's names.
    ``on_bad_image`` ("error" or "skip"): what an unusable image does (``data/bad_images.py``).
    ``reduce_to = (min_size, max_size)``: the model's resize (pass the model config's); an image at
    least twice as large is decoded at 1/2, 1/4 ... of its size with its boxes scaled, to bound memory
    (None: decode every image whole). Detections are scored in the files' pixels either way.
    """
    check_policy(on_bad_image)
    path = Path(path)
    kind = dataset_class(path)
    if kind is VOCDataset:
        return VOCDataset(path, split=split, classes=classes, transforms=transforms, on_bad_image=on_bad_image, reduce_to=reduce_to)
    if kind is COCODataset:
        dataset = COCODataset(
            path, images_dir=images_dir, transforms=transforms, on_bad_image=on_bad_image, drop_empty=drop_empty, reduce_to=reduce_to
        )
        if classes is not None and tuple(classes) != dataset.classes:
            raise DataError(
                path, f"categories {', '.join(dataset.classes)} differ from the expected classes {', '.join(classes)}"
            )
        return dataset
    return YOLODataset(
        path, split=split, classes=classes, transforms=transforms, on_bad_image=on_bad_image, drop_empty=drop_empty,
        reduce_to=reduce_to,
    )  # fmt: skip


__all__ = [
    "COCODataset",
    "DEFAULT_REDUCE_TO",
    "Compose",
    "DetectionDataset",
    "GroupedBatchSampler",
    "ON_BAD_IMAGE",
    "RandomHorizontalFlip",
    "SYNTHETIC_CLASSES",
    "VOCDataset",
    "VOC_CLASSES",
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
