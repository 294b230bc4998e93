"""COCO instances datasets (``instances_*.json``) through pycocotools.

Shape shorthand: K trainable objects, Kc crowd regions in one image.

Labels. Category ids are mapped to labels 1..C in increasing category-id order
(``cat_id_to_label``; ``label_to_category_id`` maps back for writing COCO results); ``classes`` are the
category names in that order.

Boxes. COCO ``[x, y, w, h]`` is converted here to continuous ``(x1, y1, x2, y2)``, clipped to the
image's ``width``/``height``; annotations with ``w <= 0`` or ``h <= 0`` (or empty after clipping)
are dropped, counted, logged once, and also removed from ``.coco`` so that training and
evaluation see the same ground truth.

Crowd regions (``iscrowd=1``) are never trained on: ``boxes``/``labels`` hold the non-crowd
objects only (so ``iscrowd`` is all False, kept for a uniform target layout) and the crowd
regions are in ``crowd_boxes`` [Kc, 4] / ``crowd_labels`` [Kc]. COCO evaluation (``.coco``) keeps
them, where pycocotools ignores detections on them.

Images are looked up in ``images_dir`` when given, else in one of: the JSON's folder; its
``images/`` subfolder; and, for the standard layout ``annotations/instances_val2017.json`` +
``val2017/``, the folder named after the JSON next to ``annotations/``. The place holding the most
of the images' files is used for all (the first of these, if several hold as many), so one odd
``file_name`` cannot send the others astray; every image is checked there at construction
(``images.check_image``: present, not empty, readable header, the JSON's width/height, not
truncated). EXIF-oriented images follow the rule of ``data/voc.py`` (the JSON's width/height play
the part of ``<size>``).

Bad input raises ``DataError`` naming the JSON: it does not parse (or nests too deeply), is not a
COCO instances file (``images`` / ``categories`` lists, annotations with ``image_id``,
``category_id``, ``bbox``), has an annotation ``id`` / ``image_id`` / ``category_id`` that is not an
integer, duplicate category ids or names, a category name that is not a non-empty string,
duplicate annotation ids, or an annotation names an unknown category. Problems of one image (an
``images`` entry without an integer id, a file name string or width / height that are positive
whole numbers, a duplicate image id -- every entry with it --, a ``bbox`` that is not a list of 4
finite numbers, an ``iscrowd`` other than 0 / 1, an ``area`` that is not a number >= 0, a bad image
file) raise ``DataError`` or skip that image with a warning, as ``on_bad_image`` says
(``data/bad_images.py``); the image and its annotations are then also removed from ``.coco``, and
``skipped`` lists ``(file, problem)``.
Annotations without ``id`` / ``iscrowd`` / ``area`` (common in hand-made files) get their
position + 1, 0 and the box area, which pycocotools' evaluation needs. Annotations of
image ids absent from ``images`` are skipped with one counted warning (they cannot be used).
Images without trainable objects are kept (negatives) unless ``drop_empty``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from pathlib import Path

import numpy as np
import torch

from fasterrcnn.data.bad_images import BadImages
from fasterrcnn.data.images import DEFAULT_REDUCE_TO, check_image, load_annotated_image
from fasterrcnn.data.transforms import resize_boxes
from fasterrcnn.errors import DataError
from fasterrcnn.reading import COCO_JSON_BYTES, load_json

logger = logging.getLogger("fasterrcnn")


def _read_json(path: Path) -> dict:
    data = load_json(path, COCO_JSON_BYTES, "COCO annotation file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise DataError(path, "is not a COCO instances file (needs 'images' and 'categories' lists)")
    if not isinstance(data.setdefault("annotations", []), list):
        raise DataError(path, "is not a COCO instances file ('annotations' is not a list)")
    return data


_MAX_SIDE = 2**31 - 1  # pixels: anything larger is not an image size


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_side(value) -> bool:
    """A positive whole number of pixels (``640`` or ``640.0``; not ``true``, ``Infinity``, ``1e400``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return (isinstance(value, int) or value.is_integer()) and 0 < value <= _MAX_SIDE


def _is_number(value) -> bool:
    """A finite JSON number (not a boolean, a string or ``NaN``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class COCODataset(torch.utils.data.Dataset):
    """A COCO instances file as ``(image, target)`` samples.

    image: ``Tensor[3, H, W]`` float32 RGB in [0, 1].
    target: ``boxes`` float32 [K, 4] continuous xyxy in the image's pixels, ``labels`` int64 [K] in 1..C,
    ``iscrowd`` bool [K] (all False), ``crowd_boxes`` float32 [Kc, 4], ``crowd_labels`` int64 [Kc],
    ``image_id`` (int), ``orig_size`` (h, w) of the file.

    ``reduce_to``: as ``VOCDataset``'s (a huge image is decoded reduced, its boxes scaled to it).
    """

    default_metric = "coco"  # data.DetectionDataset
    evaluation_split = None  # an instances JSON is one split

    @staticmethod
    def has_split(path, split: str) -> bool:
        """An instances JSON holds one split, named by the file: never another."""
        return False

    def __init__(
        self, ann_file, images_dir=None, transforms=None, drop_empty: bool = False, on_bad_image: str = "error",
        reduce_to: tuple[int, int] | None = DEFAULT_REDUCE_TO,
    ):  # fmt: skip
        from pycocotools.coco import COCO  # imports matplotlib: keep it off the package import path

        self.ann_file = Path(ann_file)
        self.reduce_to = reduce_to
        self.transforms = transforms
        data = _read_json(self.ann_file)
        path = self.ann_file

        bad = BadImages(on_bad_image)
        self.on_bad_image = on_bad_image
        images, skipped_ids, duplicates = {}, set(), {}
        for image in data["images"]:
            try:
                if not isinstance(image, dict) or not {"id", "file_name", "width", "height"} <= image.keys():
                    raise DataError(path, "an entry of 'images' lacks id, file_name, width or height")
                if not isinstance(image["id"], int) or isinstance(image["id"], bool):
                    raise DataError(path, f"image id {image['id']!r} is not an integer")
                if image["id"] in images or image["id"] in duplicates:
                    # which annotations belong to which entry is unknown: every entry of the id goes
                    duplicates[image["id"]] = duplicates.get(image["id"], 1) + 1
                    raise DataError(path, f"duplicate image id {image['id']}")
                if not (_is_side(image["width"]) and _is_side(image["height"])):
                    skipped_ids.add(image["id"])
                    raise DataError(
                        path,
                        f"image {image['id']} has width/height {image['width']!r}/{image['height']!r}, "
                        "expected positive whole numbers of pixels",
                    )
                name = image["file_name"]
                if not isinstance(name, str) or not name.strip() or "\0" in name:
                    skipped_ids.add(image["id"])
                    raise DataError(path, f"image {image['id']} has file_name {name!r}, expected a file name")
                images[image["id"]] = image
            except DataError as error:
                bad(error)
        for image_id in duplicates:
            if images.pop(image_id, None) is not None:  # the first entry of the id, kept until now
                bad.skipped.append((str(path), f"duplicate image id {image_id}"))
        skipped_ids |= duplicates.keys()
        categories, name_ids = {}, {}
        for category in data["categories"]:
            if not isinstance(category, dict) or not {"id", "name"} <= category.keys():
                raise DataError(path, "an entry of 'categories' lacks id or name")
            if not isinstance(category["id"], int) or isinstance(category["id"], bool):
                raise DataError(path, f"category id {category['id']!r} is not an integer")
            if category["id"] in categories:
                raise DataError(path, f"duplicate category id {category['id']}")
            if not isinstance(category["name"], str) or not category["name"].strip():
                raise DataError(path, f"category {category['id']} has name {category['name']!r}, expected a non-empty string")
            if category["name"] in name_ids:  # two labels of one class name: their detections could not be told apart
                raise DataError(
                    path, f"duplicate category name {category['name']!r} (ids {name_ids[category['name']]} and {category['id']})"
                )
            name_ids[category["name"]] = category["id"]
            categories[category["id"]] = category
        cat_ids = sorted(categories)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(cat_ids, start=1)}
        self.label_to_category_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.classes = tuple(str(categories[cat_id]["name"]) for cat_id in cat_ids)

        kept, orphans, dropped = [], 0, 0
        per_image = {image_id: [] for image_id in images}
        ann_ids = set()
        for number, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or not {"image_id", "category_id", "bbox"} <= ann.keys():
                raise DataError(path, "an annotation lacks image_id, category_id or bbox (not an instances file?)")
            # pycocotools' evaluation needs these; custom files often omit them
            ann = {"id": number + 1, "iscrowd": 0, **ann}
            for key in ("id", "image_id", "category_id"):  # an id in a list would be matched to nothing
                if not _is_id(ann[key]):
                    raise DataError(path, f"annotations[{number}] has {key} {ann[key]!r}, expected an integer")
            if ann["id"] in ann_ids:
                raise DataError(path, f"duplicate annotation id {ann['id']}")
            ann_ids.add(ann["id"])
            if ann["category_id"] not in categories:
                raise DataError(path, f"annotation {ann.get('id')} has unknown category id {ann['category_id']}")
            if ann["image_id"] in skipped_ids:
                continue
            if ann["image_id"] not in images:
                orphans += 1
                continue
            try:
                ann["iscrowd"] = self._check_crowd_and_area(ann)
                box = self._convert_box(ann, images[ann["image_id"]])
            except DataError as error:  # the image's annotations are incomplete without this one
                bad(DataError(path, f"{error.problem} (image {ann['image_id']})"))
                skipped_ids.add(images.pop(ann["image_id"])["id"])
                continue
            if box is None:
                dropped += 1
                continue
            kept.append({"area": (box[2] - box[0]) * (box[3] - box[1]), **ann})
            per_image[ann["image_id"]].append((box, self.cat_id_to_label[ann["category_id"]], ann["iscrowd"] == 1))
        if orphans:
            logger.warning("COCO %s: %d annotations of image ids not in 'images' skipped", path, orphans)
        if dropped:
            logger.warning("COCO %s: %d annotations with empty boxes dropped", path, dropped)

        self._images = images
        self.images_dir = self._find_images_dir(images_dir, sorted(images))
        for image_id in sorted(images):  # the files: present, readable, of the annotated size
            info = images[image_id]
            try:
                check_image(self.images_dir / info["file_name"], (int(info["height"]), int(info["width"])), path)
            except DataError as error:
                bad(error)
                del images[image_id]
        bad.finish(f"COCO {path}", len(data["images"]), path)
        self.skipped = bad.skipped
        data["images"] = [
            image for image in data["images"]
            if isinstance(image, dict) and _is_id(image.get("id")) and images.get(image["id"]) is image
        ]  # fmt: skip
        data["annotations"] = [ann for ann in kept if ann["image_id"] in images]

        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()

        self._targets = {}
        for image_id in images:
            objects = per_image[image_id]
            train = [(b, label) for b, label, crowd in objects if not crowd]
            crowd = [(b, label) for b, label, crowd in objects if crowd]
            self._targets[image_id] = (
                np.array([b for b, _ in train], dtype=np.float32).reshape(-1, 4),
                np.array([label for _, label in train], dtype=np.int64),
                np.array([b for b, _ in crowd], dtype=np.float32).reshape(-1, 4),
                np.array([label for _, label in crowd], dtype=np.int64),
            )
        self.ids = sorted(images)
        if drop_empty:
            self.ids = [image_id for image_id in self.ids if len(self._targets[image_id][1])]

    def _check_crowd_and_area(self, ann: dict) -> int:
        """An annotation's ``iscrowd`` as the int 0 or 1 (a string "0" would be truthy), after
        checking that its ``area``, if given, is a finite number >= 0 (pycocotools' evaluation
        compares it with its area ranges)."""
        iscrowd, area = ann["iscrowd"], ann.get("area", 0)
        if not isinstance(iscrowd, (int, float)) or iscrowd not in (0, 1):  # true / false are 1 / 0
            raise DataError(self.ann_file, f"annotation {ann['id']} has iscrowd {iscrowd!r}, expected 0 or 1")
        if not _is_number(area) or area < 0:
            raise DataError(self.ann_file, f"annotation {ann['id']} has area {area!r}, expected a number >= 0")
        return int(iscrowd)

    def _convert_box(self, ann: dict, image: dict) -> list[float] | None:
        """``[x, y, w, h]`` -> clipped continuous xyxy, or None when empty."""
        bbox = ann["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise DataError(self.ann_file, f"annotation {ann['id']} has bbox {bbox!r}, expected 4 finite numbers")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            return None
        width, height = float(image["width"]), float(image["height"])
        x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            return None
        return [x1, y1, x2, y2]

    def _find_images_dir(self, images_dir, image_ids) -> Path:
        """The candidate folder holding the most of the files of ``image_ids`` (the first of equals).

        A majority, not the first image found: one odd ``file_name`` that happens to exist in
        another candidate (a stray file beside the JSON) must not send every image there."""
        if images_dir is not None:
            candidates = [Path(images_dir)]
        else:
            folder = self.ann_file.parent
            candidates = [folder, folder / "images"]
            stem = self.ann_file.stem
            if stem.startswith("instances_"):  # annotations/instances_val2017.json -> val2017/
                candidates.append(folder.parent / stem[len("instances_") :])
        if not image_ids:
            return candidates[0]
        names = [self._images[image_id]["file_name"] for image_id in image_ids]
        best, most = None, 0
        for candidate in candidates:
            found = sum((candidate / name).is_file() for name in names)
            if found > most:
                best, most = candidate, found
            if 2 * most > len(names):  # a majority: no later candidate can hold more
                break
        if best is not None:
            return best
        places = ", ".join(str(c) for c in candidates)
        first = self._images[image_ids[0]]["file_name"]
        raise DataError(self.ann_file, f"image {first!r} not found in {places} (pass images_dir)")

    def __len__(self) -> int:
        return len(self.ids)

    def image_size(self, i: int) -> tuple[int, int]:
        """``(height, width)`` of image ``i`` from the JSON."""
        image = self._images[self.ids[i]]
        return int(image["height"]), int(image["width"])

    def image_path(self, i: int) -> Path:
        """The file of image ``i``."""
        return self.images_dir / self._images[self.ids[i]]["file_name"]

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        size = self.image_size(i)
        image = load_annotated_image(self.image_path(i), size, self.ann_file, reduce_to=self.reduce_to)
        boxes, labels, crowd_boxes, crowd_labels = self._targets[image_id]
        decoded = image.shape[1:]  # a large image may be decoded reduced: its boxes scale with it
        target = {
            "boxes": resize_boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), size, decoded),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "iscrowd": torch.zeros(len(labels), dtype=torch.bool),
            "crowd_boxes": resize_boxes(torch.tensor(crowd_boxes, dtype=torch.float32).reshape(-1, 4), size, decoded),
            "crowd_labels": torch.tensor(crowd_labels, dtype=torch.int64),
            "image_id": image_id,
            "orig_size": size,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def describe(self) -> dict:
        return {"format": "coco", "path": str(self.ann_file), "images": str(self.images_dir)}

    def ground_truth(self) -> list[dict]:
        """VOC-style ground truth: crowd regions included as ``difficult`` (ignored by VOC AP)."""
        result = []
        for image_id in self.ids:
            boxes, labels, crowd_boxes, crowd_labels = self._targets[image_id]
            result.append(
                {
                    "image_id": image_id,
                    "boxes": torch.tensor(np.concatenate([boxes, crowd_boxes]), dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.tensor(np.concatenate([labels, crowd_labels]), dtype=torch.int64),
                    "difficult": torch.tensor([False] * len(labels) + [True] * len(crowd_labels), dtype=torch.bool),
                }
            )
        return result


__all__ = ["COCODataset"]
