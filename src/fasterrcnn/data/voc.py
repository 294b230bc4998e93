"""PASCAL VOC datasets: ``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``, ``JPEGImages/``.

Shape shorthand: K objects in one image.

Coordinates. VOC XML stores 1-based, inclusive pixel indices (``xmin=1, xmax=10`` is the first ten
pixel columns). They are converted here, once, to the project's continuous ``(x1, y1, x2, y2)``:
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (width = x2 - x1 = 10 pixels).
Boxes reaching outside the image are clipped to it; boxes that are empty after clipping
(x2 <= x1 or y2 <= y1, e.g. a box entirely outside the image) are dropped. Both are counted and
logged once per dataset on the ``"fasterrcnn"`` logger, naming the first annotation file concerned.

Class list (labels are 1..C in this order, 0 is background):
1. the ``classes`` argument when given (an object of another class is an error);
2. else ``VOC_CLASSES`` (the 20 classes of VOC2007/2012, standard order) when every object name of
   the split is one of them;
3. else the sorted set of object names found in the split's XML files. A test split may lack a
   class, so evaluate with ``classes=`` the training classes (the checkpoint's ``class_names``).

Values are checked: the root element must be ``<annotation>``; coordinates finite numbers (not
``nan`` / ``inf``); ``<size>`` whole numbers of pixels; ``<difficult>`` a finite number (0 is
false). A split file that lists no image is an error naming it.

EXIF orientation (``images.load_annotated_image``): boxes are read on the image as a viewer shows
it (orientation applied), unless the XML's ``<size>`` is that of the stored pixel grid with height
and width swapped (a 90-degree orientation of a non-square image), when they are read on the stored
grid. For orientations 2-4, and 5-8 of a square image, the size fits both grids: the boxes are read
as shown and ``check_image`` warns once per such file, since boxes drawn on the stored pixels (tools
that ignore EXIF) would be silently wrong there.

All XML files of the split are parsed, and every image file is checked (``images.check_image``:
present, not empty, readable header, the annotated size, not truncated), at construction, so bad
files are reported before training starts and ``image_size(i)`` costs nothing. An image whose
annotation or file is bad, or whose id the split file lists twice, raises ``DataError`` or is
skipped with a warning, as ``on_bad_image`` says (``data/bad_images.py``); ``ids`` are the
images kept and ``skipped`` lists ``(file, problem)`` of the others.

``keep_difficult=False`` removes difficult objects from the training samples only;
``ground_truth()`` always has them, flagged, because VOC evaluation ignores detections matched to
difficult objects.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fasterrcnn.data.bad_images import BadImages
from fasterrcnn.data.images import DEFAULT_REDUCE_TO, check_image, load_annotated_image
from fasterrcnn.data.records import RecordDataset
from fasterrcnn.data.transforms import resize_boxes
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.reading import ANNOTATION_BYTES, LIST_BYTES, read_bytes, read_text


VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class _Record:
    """One parsed annotation file: K objects, boxes already converted and clipped."""

    image_id: str
    image_path: Path
    size: tuple[int, int]  # (height, width)
    names: tuple[str, ...]  # [K]
    boxes: np.ndarray  # [K, 4] float32 continuous xyxy
    difficult: np.ndarray  # [K] bool
    num_clipped: int = 0  # boxes of the file clipped to the image
    num_dropped: int = 0  # boxes of the file empty after clipping


def _text(element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None:
        return None
    return child.text.strip()


def _number(text: str | None) -> float | None:
    """``text`` as a finite float, or None (absent, not a number, nan, inf, too large)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _flag(element, tag: str, xml_path: Path) -> bool:
    value = _text(element, tag)
    if value in (None, ""):
        return False
    number = _number(value)
    if number is None:
        raise DataError(xml_path, f"<{tag}> is {value!r}, expected 0 or 1")
    return number != 0


def _side(size, tag: str, xml_path: Path) -> int:
    """``<size>``'s ``<width>`` / ``<height>`` in pixels; 0 when absent (read from the image then)."""
    value = _text(size, tag)
    if value in (None, ""):
        return 0
    number = _number(value)
    if number is None or number != int(number):
        raise DataError(xml_path, f"<size> <{tag}> is {value!r}, expected a whole number of pixels")
    return int(number)


class VOCDataset(RecordDataset):
    """A PASCAL VOC split as ``(image, target)`` samples.

    image: ``Tensor[3, H, W]`` float32 RGB in [0, 1].
    target: ``boxes`` float32 [K, 4] continuous xyxy in the image's pixels, ``labels`` int64 [K] in 1..C,
    ``difficult`` bool [K], ``image_id`` (file stem, str), ``orig_size`` (h, w) of the file.
    ``transforms(image, target) -> (image, target)`` is applied last.

    ``reduce_to = (min_size, max_size)`` of the model's resize (default ``DEFAULT_REDUCE_TO``): an
    image at least twice as large is decoded at 1/2, 1/4 ... of ``orig_size`` with its boxes scaled
    to it (``images.load_annotated_image``), so one huge file does not set the memory peak; None
    decodes every image whole. ``ground_truth()`` stays in the files' pixels.
    """

    # data.DetectionDataset: VOC AP by default; result category ids are the labels; no pycocotools ground truth
    default_metric = "voc"
    label_to_category_id = None
    coco = None
    evaluation_split = "test"  # what a run validates and eval scores on unless told otherwise

    @staticmethod
    def has_split(root, split: str) -> bool:
        """Whether the VOC root ``root`` has the split ``split`` (``ImageSets/Main/<split>.txt``)."""
        return (Path(root) / "ImageSets" / "Main" / f"{split}.txt").is_file()

    def __init__(
        self, root, split: str = "trainval", classes=None, transforms=None, keep_difficult: bool = True,
        on_bad_image: str = "error", reduce_to: tuple[int, int] | None = DEFAULT_REDUCE_TO,
    ):  # fmt: skip
        self.root = Path(root)
        self.reduce_to = reduce_to
        self.split = split
        self.transforms = transforms
        self.keep_difficult = keep_difficult
        if not self.root.is_dir():
            raise DataError(self.root, "VOC root folder not found")
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DataError(split_file, f"split file of split {split!r} not found")
        try:
            lines = read_text(split_file, LIST_BYTES, "split file").splitlines()
        except OSError as exc:
            raise DataError(split_file, f"cannot read split file ({exc.strerror or exc})") from None
        # VOC's per-class split files have "<id> <flag>"; the image id is the first field.
        listed = [line.split()[0] for line in lines if line.strip()]
        if not listed:  # else training stops at once and evaluation scores 0 images
            raise DataError(split_file, f"split file of split {split!r} lists no images")

        bad = BadImages(on_bad_image)
        self.on_bad_image = on_bad_image
        self._records = []
        seen = set()
        for image_id in listed:
            try:
                if image_id in seen:
                    raise DataError(split_file, f"image id {image_id!r} is listed more than once")
                seen.add(image_id)
                self._records.append(self._parse(image_id))
            except DataError as error:
                bad(error)
        bad.finish(f"VOC {self.root} ({split})", len(listed), split_file)
        self.skipped = bad.skipped
        self._keep_records(self._records, f"VOC {self.root} ({split})", lambda record: self.root / "Annotations" / f"{record.image_id}.xml")

        names = {name for record in self._records for name in record.names}
        if classes is not None:
            self.classes = tuple(classes)
            known = set(self.classes)
            if len(known) != len(self.classes) or not all(isinstance(c, str) and c for c in self.classes):
                raise ConfigError(f"classes must be distinct non-empty names, got {list(self.classes)}")
            for record in self._records:
                unknown = [name for name in record.names if name not in known]
                if unknown:
                    xml_path = self.root / "Annotations" / f"{record.image_id}.xml"
                    raise DataError(xml_path, f"object of unknown class {unknown[0]!r} (classes: {', '.join(self.classes)})")
        elif names <= set(VOC_CLASSES):
            self.classes = VOC_CLASSES
        else:
            self.classes = tuple(sorted(names))
        index = {name: label for label, name in enumerate(self.classes, start=1)}
        self._labels = [np.array([index[n] for n in r.names], dtype=np.int64) for r in self._records]

    def _parse(self, image_id: str) -> _Record:
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        try:
            annotation = ET.fromstring(read_bytes(xml_path, ANNOTATION_BYTES, "annotation file"))
        except FileNotFoundError:
            raise DataError(xml_path, "annotation file not found") from None
        except ET.ParseError as exc:
            raise DataError(xml_path, f"XML does not parse ({exc})") from None
        except OSError as exc:
            raise DataError(xml_path, f"cannot read annotation file ({exc.strerror or exc})") from None
        if annotation.tag != "annotation":
            raise DataError(xml_path, f"root element is <{annotation.tag}>, expected <annotation> (not a VOC annotation)")

        image_path = self._find_image(image_id, _text(annotation, "filename"))
        size = annotation.find("size")
        height = width = 0
        if size is not None:
            height, width = _side(size, "height", xml_path), _side(size, "width", xml_path)
        if height <= 0 or width <= 0:  # absent or zero in some VOC-style exports: read the header
            height, width = check_image(image_path)
        else:
            check_image(image_path, (height, width), xml_path)

        names, boxes, difficult = [], [], []
        num_clipped = num_dropped = 0
        for obj in annotation.iter("object"):
            name = _text(obj, "name")
            if not name:
                raise DataError(xml_path, "<object> without <name>")
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise DataError(xml_path, f"<object> {name!r} has no <bndbox>")
            coords = []
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                value = _text(bndbox, tag)
                number = _number(value)
                if number is None:
                    raise DataError(xml_path, f"<object> {name!r}: <{tag}> is {value!r}, expected a finite number")
                coords.append(number)
            xmin, ymin, xmax, ymax = coords
            box = [xmin - 1.0, ymin - 1.0, xmax, ymax]  # 1-based inclusive -> continuous
            clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]  # fmt: skip
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                num_dropped += 1
                continue
            if clipped != box:
                num_clipped += 1
            names.append(name)
            boxes.append(clipped)
            difficult.append(_flag(obj, "difficult", xml_path))
        return _Record(
            image_id=image_id,
            image_path=image_path,
            size=(height, width),
            names=tuple(names),
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            difficult=np.array(difficult, dtype=bool),
            num_clipped=num_clipped,
            num_dropped=num_dropped,
        )

    def _find_image(self, image_id: str, filename: str | None) -> Path:
        folder = self.root / "JPEGImages"
        candidates = [folder / filename] if filename else []
        candidates += [folder / f"{image_id}{suffix}" for suffix in _IMAGE_SUFFIXES]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise DataError(folder / (filename or f"{image_id}.jpg"), "image file not found")

    def __getitem__(self, i: int):
        record = self._records[i]
        xml_path = self.root / "Annotations" / f"{record.image_id}.xml"
        image = load_annotated_image(record.image_path, record.size, xml_path, reduce_to=self.reduce_to)
        keep = slice(None) if self.keep_difficult else ~record.difficult
        boxes = torch.tensor(record.boxes[keep], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": resize_boxes(boxes, record.size, image.shape[1:]),  # a large image may be decoded reduced
            "labels": torch.tensor(self._labels[i][keep], dtype=torch.int64),
            "difficult": torch.tensor(record.difficult[keep], dtype=torch.bool),
            "image_id": record.image_id,
            "orig_size": record.size,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def describe(self) -> dict:
        return {"format": "voc", "path": str(self.root), "split": self.split}

    def ground_truth(self) -> list[dict]:
        """Per image ``{"image_id", "boxes" [K,4] continuous xyxy, "labels" [K], "difficult" [K]}``.

        Difficult objects are always included (flagged), whatever ``keep_difficult`` is.
        """
        return [
            {
                "image_id": record.image_id,
                "boxes": torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "difficult": torch.tensor(record.difficult, dtype=torch.bool),
            }
            for record, labels in zip(self._records, self._labels)
        ]


__all__ = ["VOC_CLASSES", "VOCDataset"]
