"""YOLO-format datasets (the ultralytics layout): ``data.yaml``, ``images/`` and ``labels/`` folders.

Shape shorthand: K objects in one image.

``data.yaml`` (read with ``reading.parse_yaml``: PyYAML's safe loader, no aliases)::

    path: .            # optional data root, relative to this file's folder (default: its folder)
    train: images/train        # a folder of images (searched recursively), a .txt list of image
    val: images/val            #   paths (relative ones are relative to the list's folder), one image,
    test: images/test          #   or a list of those; relative to the root. Optional: test.
    names: [cat, dog]          # or {0: cat, 1: dog}; nc (optional) must equal the number of names

Exports whose entries start with ``../`` (some annotation tools write ``../train/images`` for a
``data.yaml`` inside the data folder) are also looked up without it, as ultralytics does.

Labels. The label file of ``.../images/<sub>/x.jpg`` is ``.../labels/<sub>/x.txt`` (the last
``images`` folder of the path becomes ``labels``, the suffix ``.txt``); a missing label file is an
image without objects. One object per line, ``class cx cy w h``: a 0-based class index into
``names`` (label = class + 1) and the box centre and size divided by the image's width and height.
A line with more values is a polygon ``class x1 y1 x2 y2 ...`` (a segmentation label) and gives
its bounding box. Empty lines are ignored.

Coordinates. ``(cx - w/2, cy - h/2, cx + w/2, cy + h/2)`` times ``(W, H, W, H)`` of the image (after
its EXIF orientation) gives the project's continuous ``(x1, y1, x2, y2)`` pixels. Every value must lie in
[0, 1] up to ``TOLERANCE`` (larger ones are pixel coordinates, an error). Boxes reaching outside the
image are clipped to it; boxes that are empty after clipping (zero width or height) are dropped.
Both are counted and logged once per dataset on the ``"fasterrcnn"`` logger, naming the first label
file concerned (as the VOC reader does).

Bad input. A label file that cannot be read, or a line with the wrong number of values, a value
that is not a finite number, a class index that is not one of ``names``, or a coordinate outside
[0, 1], and an image file that is missing, empty, not an image or truncated (``images.check_image``)
make that image bad: ``DataError`` naming the label file and its line (``<file>: line 3: ...``) or
the image, or the image skipped with a warning, as ``on_bad_image`` says (``data/bad_images.py``).
So is an image listed twice, or a second image of one id (``x.jpg`` and ``x.png``). A ``data.yaml`` that does not parse, lacks ``names``, or lacks the
split (or its folder or list) is an error under both policies.

Splits. ``split`` is a key of ``data.yaml`` (``train``, ``val``, ``test``). VOC's ``trainval``
(the command line's default for training) means ``train`` when the file has no ``trainval`` entry.

Image ids are the image paths relative to the split's folder (or to the list file's folder),
without suffix, with ``/`` separators: ``000001``, ``street/000002``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fasterrcnn.data.bad_images import BadImages
from fasterrcnn.data.images import DEFAULT_REDUCE_TO, check_image, load_annotated_image
from fasterrcnn.data.records import RecordDataset
from fasterrcnn.data.transforms import resize_boxes
from fasterrcnn.errors import DataError
from fasterrcnn.reading import ANNOTATION_BYTES, CONFIG_BYTES, LIST_BYTES, parse_yaml, read_text


YAML_NAMES = ("data.yaml", "data.yml")  # the file looked up when ``root`` is a folder
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
TOLERANCE = 0.01  # normalized values in [-TOLERANCE, 1 + TOLERANCE] are clipped to [0, 1], not an error


@dataclass(frozen=True)
class _Record:
    """One image and its parsed label file: K objects, boxes already converted and clipped."""

    image_id: str
    image_path: Path
    label_path: Path
    size: tuple[int, int]  # (height, width)
    boxes: np.ndarray  # [K, 4] float32 continuous xyxy pixels
    classes: np.ndarray  # [K] int64 0-based class indices
    num_clipped: int = 0
    num_dropped: int = 0


def find_data_yaml(path) -> Path | None:
    """``path`` when it is a ``.yaml``/``.yml`` file, ``path/data.yaml`` when ``path`` is a folder holding one, else None."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml"):
        return path
    if path.is_dir():
        return next((path / name for name in YAML_NAMES if (path / name).is_file()), None)
    return None


def _entry_path(root: Path, item: str) -> Path:
    """Where a split entry of ``data.yaml`` points (``../x`` relative to the root also read as ``x`` when only that exists)."""
    path = root / item
    if not path.exists() and item.startswith("../") and (root / item[3:]).exists():
        path = root / item[3:]
    return path


def split_folders(data, split: str) -> list[Path]:
    """The folders that the ``split`` of the YOLO set ``data`` reads its images from, recursively ([] for a set
    of another format, or one whose data.yaml does not read: building the data set says what is wrong); a
    command's outputs must not land there, where the next run would read them as images."""
    yaml_path = find_data_yaml(data)
    if yaml_path is None:
        return []
    try:
        entries = read_data_yaml(yaml_path)
    except DataError:
        return []
    if split not in entries and split == "trainval":
        split = "train"
    entry, path = entries.get(split), entries.get("path")
    root = yaml_path.parent if path in (None, "") else yaml_path.parent / str(path)
    items = entry if isinstance(entry, list) else [entry]
    return [folder for item in items if isinstance(item, str) and (folder := _entry_path(root, item)).is_dir()]


def label_path(image_path) -> Path:
    """The label file of an image: the last ``images`` folder of its path becomes ``labels``, suffix ``.txt``."""
    parts = list(Path(image_path).with_suffix(".txt").parts)
    for i in range(len(parts) - 2, -1, -1):  # folders only, the last one first
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts)


def read_data_yaml(yaml_path) -> dict:
    """The parsed ``data.yaml``: a mapping with ``names`` as a tuple of class names in index order."""
    yaml_path = Path(yaml_path)
    try:
        text = read_text(yaml_path, CONFIG_BYTES, "data.yaml")
    except FileNotFoundError:
        raise DataError(yaml_path, "data.yaml not found") from None
    except OSError as exc:
        raise DataError(yaml_path, f"cannot read file ({exc.strerror or exc})") from None
    data = parse_yaml(text, yaml_path)
    if not isinstance(data, dict):
        raise DataError(yaml_path, "is not a YOLO data.yaml (expected a mapping with train, val and names)")
    names = data.get("names")
    if isinstance(names, dict):
        if not all(_is_index(key) for key in names) or sorted(names) != list(range(len(names))):
            keys = sorted(names, key=str)
            shown = ", ".join(map(repr, keys[:10])) + (", ..." if len(keys) > 10 else "")
            raise DataError(yaml_path, f"'names' keys must be the class indices 0..{len(names) - 1}, got [{shown}]")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(yaml_path, "needs 'names': the class names, a list or a mapping {index: name}")
    if not all(isinstance(n, (str, int, float)) and not isinstance(n, bool) and str(n) for n in names):
        raise DataError(yaml_path, f"'names' must be non-empty names, got {names}")
    names = tuple(str(n) for n in names)
    if len(set(names)) != len(names):
        raise DataError(yaml_path, f"'names' lists a class twice: {list(names)}")
    if "nc" in data and data["nc"] != len(names):
        raise DataError(yaml_path, f"nc is {data['nc']!r} but 'names' has {len(names)} classes")
    return {**data, "names": names}


def _is_index(key) -> bool:
    return isinstance(key, int) and not isinstance(key, bool)


def _number(text: str, label_file: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(label_file, f"line {line}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(label_file, f"line {line}: {text!r} is not a finite number")
    return value


def parse_label_line(fields: list[str], num_classes: int, label_file: Path, line: int) -> tuple[int, list[float]]:
    """``(class index, [x1, y1, x2, y2] normalized, not clipped)`` of one label line's values."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise DataError(
            label_file,
            f"line {line}: {len(fields)} values, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...)",
        )
    values = [_number(text, label_file, line) for text in fields]
    cls = values[0]
    if not cls.is_integer() or not 0 <= cls < num_classes:
        raise DataError(label_file, f"line {line}: class {fields[0]} is not one of the {num_classes} classes of 'names' (0..{num_classes - 1})")
    coords = values[1:]
    outside = next((v for v in coords if not -TOLERANCE <= v <= 1 + TOLERANCE), None)
    if outside is not None:
        raise DataError(label_file, f"line {line}: coordinate {outside:g} is outside [0, 1] (YOLO labels are divided by the image size)")
    if len(coords) == 4:
        cx, cy, w, h = coords
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:
        xs, ys = coords[0::2], coords[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
    return int(cls), box


class YOLODataset(RecordDataset):
    """One split of a YOLO data set as ``(image, target)`` samples.

    image: ``Tensor[3, H, W]`` float32 RGB in [0, 1].
    target: ``boxes`` float32 [K, 4] continuous xyxy, ``labels`` int64 [K] in 1..C (class index + 1),
    ``image_id`` (str, see the module docstring), ``orig_size`` (h, w).
    ``transforms(image, target) -> (image, target)`` is applied last.
    ``classes`` (optional) must equal the file's ``names``. ``drop_empty`` leaves out images without objects.
    """

    # data.DetectionDataset: VOC AP by default; result category ids are the labels; no pycocotools ground truth
    default_metric = "voc"
    evaluation_split = "val"  # ultralytics' convention: validate and evaluate on val unless told otherwise

    @staticmethod
    def has_split(path, split: str) -> bool:
        """Whether the data.yaml at ``path`` (or in the folder) names images for ``split``."""
        yaml_path = find_data_yaml(path)
        return yaml_path is not None and read_data_yaml(yaml_path).get(split) not in (None, "", [])
    label_to_category_id = None
    coco = None

    def __init__(
        self, root, split: str = "train", classes=None, transforms=None, on_bad_image: str = "error", drop_empty: bool = False,
        reduce_to: tuple[int, int] | None = DEFAULT_REDUCE_TO,
    ):  # fmt: skip
        self.reduce_to = reduce_to
        yaml_path = find_data_yaml(root)
        if yaml_path is None:
            raise DataError(root, f"no YOLO data.yaml (a .yaml file, or a folder holding {' or '.join(YAML_NAMES)})")
        self.yaml_path = yaml_path
        self.transforms = transforms
        data = read_data_yaml(yaml_path)
        self.classes = data["names"]
        if classes is not None and tuple(classes) != self.classes:
            raise DataError(yaml_path, f"names {', '.join(self.classes)} differ from the expected classes {', '.join(classes)}")
        if split not in data and split == "trainval" and "train" in data:
            split = "train"
        if data.get(split) in (None, "", []):
            present = [key for key in ("train", "val", "test") if data.get(key) not in (None, "", [])]
            raise DataError(yaml_path, f"has no {split!r} split (it has: {', '.join(present) or 'none'})")
        self.split = split
        self.root = self._root(data.get("path"))

        bad = BadImages(on_bad_image)
        self.on_bad_image = on_bad_image
        listed = self._image_files(data[split])
        self._records, seen, seen_ids = [], set(), set()
        for image_path, image_id in listed:
            try:
                if image_path in seen:
                    raise DataError(image_path, "image is listed more than once")
                seen.add(image_path)
                if image_id in seen_ids:  # x.jpg and x.png: one id, one label file
                    raise DataError(image_path, f"has the id {image_id!r} of another image (the same path with another suffix)")
                seen_ids.add(image_id)
                self._records.append(self._parse(image_path, image_id))
            except DataError as error:
                bad(error)
        bad.finish(f"YOLO {yaml_path} ({split})", len(listed), yaml_path)
        self.skipped = bad.skipped
        if drop_empty:
            self._records = [record for record in self._records if len(record.classes)]
        self._keep_records(self._records, f"YOLO {yaml_path} ({split})", lambda record: record.label_path)

    def _root(self, path) -> Path:
        folder = self.yaml_path.parent
        if path in (None, ""):
            return folder
        root = folder / str(path)  # an absolute path stays as it is
        if not root.is_dir():
            raise DataError(self.yaml_path, f"data root 'path: {path}' is not a folder ({root})")
        return root

    def _image_files(self, entry) -> list[tuple[Path, str]]:
        """``(image path, image id)`` of every image a split entry names, in a fixed order."""
        entries = entry if isinstance(entry, list) else [entry]
        found = []
        for item in entries:
            if not isinstance(item, str):
                raise DataError(self.yaml_path, f"{self.split}: {item!r} is not a folder, list file or image path")
            path = _entry_path(self.root, item)
            if path.is_dir():
                images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                if not images:
                    raise DataError(path, f"folder of split {self.split!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
                found += [(p, p.relative_to(path).with_suffix("").as_posix()) for p in images]
            elif path.is_file() and path.suffix.lower() == ".txt":
                found += self._listed(path)
            elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                found.append((path, path.stem))
            else:
                raise DataError(self.yaml_path, f"{self.split}: {item} not found ({path})")
        return found

    def _listed(self, list_file: Path) -> list[tuple[Path, str]]:
        try:
            lines = read_text(list_file, LIST_BYTES, "image list").splitlines()
        except OSError as exc:
            raise DataError(list_file, f"cannot read image list ({exc.strerror or exc})") from None
        found = []
        for line in lines:
            if line.strip():
                path = list_file.parent / line.strip()
                relative = os.path.relpath(path, list_file.parent)
                found.append((Path(os.path.normpath(path)), Path(relative).with_suffix("").as_posix()))
        if not found:
            raise DataError(list_file, f"image list of split {self.split!r} is empty")
        return found

    def _parse(self, image_path: Path, image_id: str) -> _Record:
        height, width = check_image(image_path)
        labels = label_path(image_path)
        try:
            text = read_text(labels, ANNOTATION_BYTES, "label file")
        except FileNotFoundError:
            text = ""  # an image without objects
        except OSError as exc:
            raise DataError(labels, f"cannot read label file ({exc.strerror or exc})") from None
        boxes, classes = [], []
        num_clipped = num_dropped = 0
        for line, content in enumerate(text.splitlines(), start=1):
            fields = content.split()
            if not fields:
                continue
            cls, (x1, y1, x2, y2) = parse_label_line(fields, len(self.classes), labels, line)
            box = [x1 * width, y1 * height, x2 * width, y2 * height]
            clipped = [min(max(box[0], 0.0), width), min(max(box[1], 0.0), height),
                       min(max(box[2], 0.0), width), min(max(box[3], 0.0), height)]  # fmt: skip
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                num_dropped += 1
                continue
            num_clipped += clipped != box
            boxes.append(clipped)
            classes.append(cls)
        return _Record(
            image_id=image_id,
            image_path=image_path,
            label_path=labels,
            size=(height, width),
            boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
            classes=np.array(classes, dtype=np.int64),
            num_clipped=num_clipped,
            num_dropped=num_dropped,
        )

    def __getitem__(self, i: int):
        record = self._records[i]
        image = load_annotated_image(record.image_path, record.size, record.label_path, reduce_to=self.reduce_to)
        boxes = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": resize_boxes(boxes, record.size, image.shape[1:]),  # a large image may be decoded reduced
            "labels": torch.tensor(record.classes + 1, dtype=torch.int64),
            "image_id": record.image_id,
            "orig_size": record.size,
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def describe(self) -> dict:
        return {"format": "yolo", "path": str(self.yaml_path), "split": self.split}

    def ground_truth(self) -> list[dict]:
        """Per image ``{"image_id", "boxes" [K,4] continuous xyxy, "labels" [K], "difficult" [K] (all False)}``."""
        return [
            {
                "image_id": record.image_id,
                "boxes": torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(record.classes + 1, dtype=torch.int64),
                "difficult": torch.zeros(len(record.classes), dtype=torch.bool),
            }
            for record in self._records
        ]


__all__ = ["YOLODataset", "find_data_yaml", "label_path", "parse_label_line", "read_data_yaml"]
