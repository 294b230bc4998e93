"""Convert a data set between the VOC, COCO and YOLO layouts.

The source is read by the dataset classes (``build_dataset``: the format is detected, bad images
follow ``on_bad_image``), so a converted set holds exactly the boxes training would see of the
source: continuous ``(x1, y1, x2, y2)`` pixels, clipped to the image. Each writer applies the
inverse of its reader's conversion, so converting back gives the same boxes (up to the rounding
below):

- VOC: ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2`` (1-based inclusive pixel indices),
  written with up to 4 decimals (integers stay integers); ``Annotations/<id>.xml``,
  ``JPEGImages/<file>``, ``ImageSets/Main/<split>.txt``.
- COCO: ``bbox = [x1, y1, x2 - x1, y2 - y1]`` rounded to 4 decimals; ``annotations/instances_<split>.json``
  with the images in ``<split>/`` (where ``COCODataset`` finds them); image ids 1..N in the
  source's order, category ids the labels 1..C.
- YOLO: ``class cx cy w h`` divided by the image size, 6 decimals (1/1000 of a pixel in a
  1000 px image); ``data.yaml`` (``names``, ``nc``, one entry per split), ``images/<split>/``,
  ``labels/<split>/`` (an empty label file for an image without objects).

Flags. VOC ``difficult`` objects and COCO crowd regions (``iscrowd``) are the same thing to this
project (objects that evaluation ignores): VOC <-> COCO keeps them as each other. YOLO has no such
flag, so they are left out of YOLO labels (as ultralytics' own VOC and COCO converters do) and
counted in the summary.

Images are copied (never linked: a link would let an edit of one set change the other), under
their file name; two images of one destination folder with the same file name are an error. The
destination must be a new or empty folder: nothing is overwritten. The set is written into a
hidden folder next to it and renamed at the end, so a failed conversion leaves nothing behind.
"""

from __future__ import annotations

import json
import secrets
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.io import atomic_save, atomic_write_text

__all__ = ["FORMATS", "convert", "source_splits"]

FORMATS = ("voc", "coco", "yolo")
_DEFAULT_SPLITS = ("train", "val", "test")


def _decimal(value: float, places: int) -> str:
    """``value`` rounded to ``places`` decimals, without trailing zeros (``3``, ``4.5``, ``0.123457``)."""
    text = f"{round(value, places) + 0.0:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def source_splits(source) -> list[str]:
    """The splits ``convert`` reads by default: VOC's train/val/test split files that exist (else
    trainval), YOLO's train/val/test entries, and for a COCO JSON one split named after the file
    (``instances_val2017.json`` -> ``val2017``)."""
    from fasterrcnn.data.formats import COCODataset, VOCDataset, dataset_class
    from fasterrcnn.data.yolo import find_data_yaml, read_data_yaml

    source = Path(source)
    kind = dataset_class(source)  # DataError for a missing path or one of no format
    if kind is VOCDataset:
        folder = source / "ImageSets" / "Main"
        found = [s for s in _DEFAULT_SPLITS if (folder / f"{s}.txt").is_file()]
        if not found and (folder / "trainval.txt").is_file():
            found = ["trainval"]
        if not found:
            raise DataError(folder, "no train.txt, val.txt, test.txt or trainval.txt split file")
        return found
    if kind is COCODataset:
        stem = source.stem
        return [stem[len("instances_") :] if stem.startswith("instances_") and len(stem) > 10 else stem]
    data = read_data_yaml(find_data_yaml(source))
    return [s for s in _DEFAULT_SPLITS if data.get(s) not in (None, "", [])]


def _split_map(splits, source) -> dict[str, str]:
    """{source split: destination split} from None (the defaults), names, or ``"SRC=DEST"`` / a mapping."""
    if splits is None:
        splits = source_splits(source)
    if isinstance(splits, dict):
        mapping = {str(k): str(v) for k, v in splits.items()}
    else:
        mapping = {}
        for item in splits:
            src, sep, dst = str(item).partition("=")
            mapping[src.strip()] = dst.strip() if sep else src.strip()
    if not mapping:
        raise DataError(source, "has none of the splits train, val, test (name the splits to convert)")
    names = list(mapping.values())
    bad = next((n for n in [*mapping, *names] if not n or "/" in n or "\\" in n or n in (".", "..")), None)
    if bad is not None:
        raise ConfigError(f"split name {bad!r}: expected a plain name such as train, val or test")
    if len(set(names)) != len(names):
        raise ConfigError(f"two splits would be written as one: {', '.join(f'{k}={v}' for k, v in mapping.items())}")
    return mapping


class _Files:
    """The files of a conversion in the folder ``root``, each reserved for the source image it belongs to."""

    def __init__(self, root: Path):
        self.root = root
        self.owners: dict[str, Path] = {}  # relative path -> source image

    def claim(self, relative: str, source: Path) -> Path | None:
        """``root / relative`` for the image ``source``; None when it was already written for it (an image
        of two splits); DataError when another image has it (two images with one file name)."""
        previous = self.owners.get(relative)
        if previous is None:
            self.owners[relative] = source
            (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
            return self.root / relative
        if previous != source:
            raise DataError(source, f"would be {relative} of the converted set, as {previous} is (two images with one file name)")
        return None

    def copy(self, relative: str, source: Path) -> None:
        """Copy the image ``source`` to ``root / relative`` (once)."""
        path = self.claim(relative, source)
        if path is not None:
            with open(source, "rb") as src:
                atomic_save(path, lambda f: shutil.copyfileobj(src, f))


def _voc_xml(filename: str, size: tuple[int, int], objects) -> str:
    """One VOC annotation: ``objects`` are ``(name, [x1, y1, x2, y2] continuous, difficult)``."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size_element = ET.SubElement(root, "size")
    for tag, value in (("width", size[1]), ("height", size[0]), ("depth", 3)):
        ET.SubElement(size_element, tag).text = str(value)
    for name, (x1, y1, x2, y2), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bndbox = ET.SubElement(obj, "bndbox")
        # continuous (x1, y1, x2, y2) -> VOC 1-based inclusive pixel indices (inverse of voc.py)
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = _decimal(value, 4)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return ET.tostring(root, encoding="unicode") + "\n"


def _images_of(dataset, classes):
    """Per image: (source file, (h, w), [(label in ``classes``, [x1, y1, x2, y2], flagged)]) from its ground truth."""
    index = {name: label for label, name in enumerate(classes, start=1)}
    seen = {}
    for i, truth in enumerate(dataset.ground_truth()):
        path = Path(dataset.image_path(i))
        if seen.setdefault(path, truth["image_id"]) != truth["image_id"]:
            raise DataError(path, f"is the image of two entries of the split (ids {seen[path]} and {truth['image_id']})")
        labels = [index[dataset.classes[label - 1]] for label in truth["labels"].tolist()]
        objects = list(zip(labels, truth["boxes"].tolist(), truth["difficult"].tolist()))
        yield path, dataset.image_size(i), objects


def convert(
    source, dest, *, to: str, splits=None, images_dir=None, classes=None, on_bad_image: str = "error"
) -> dict:
    """Write the data set at ``source`` (VOC root, COCO JSON, YOLO data.yaml or its folder) to the new
    folder ``dest`` in the format ``to`` ("voc", "coco" or "yolo").

    ``splits``: the source splits to convert (default: ``source_splits``), as names, ``"SRC=DEST"``
    strings or a mapping {source split: destination split} (e.g. ``{"val2017": "val"}``).
    ``images_dir``: a COCO source's image folder. ``classes``: a VOC source's class order (default:
    that of its splits, or the sorted names of all when the splits' inferred classes differ).
    Returns ``{"splits": {dest split: images}, "objects": boxes written, "left_out": flagged
    objects left out (YOLO), "skipped": bad images left out, "classes": class names}``.
    """
    from fasterrcnn.data import build_dataset
    from fasterrcnn.data.bad_images import check_policy

    if to not in FORMATS:
        raise ConfigError(f"unknown format {to!r}: expected one of {', '.join(FORMATS)}")
    check_policy(on_bad_image)
    source, dest = Path(source), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(dest, "already exists and is not an empty folder (convert writes into a new one, overwriting nothing)")
    mapping = _split_map(splits, source)

    datasets = {
        dst_split: build_dataset(source, split=src_split, images_dir=images_dir, classes=classes, on_bad_image=on_bad_image)
        for src_split, dst_split in mapping.items()
    }
    if classes is None:  # VOC infers each split's classes: the sorted union when they differ
        found = {dataset.classes for dataset in datasets.values()}
        classes = found.pop() if len(found) == 1 else tuple(sorted(set().union(*found)))
    classes = tuple(classes)

    # Written into a hidden sibling folder, renamed to ``dest`` at the end: a failed conversion
    # (a file name clash, a full disk) leaves no half-written data set behind.
    target = dest.resolve()  # a name even for "."
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    made = False
    try:  # the mkdir inside: a Ctrl-C raised as it returns still removes the folder (as io.atomic_save does)
        work.mkdir()  # the usual permissions (tempfile.mkdtemp's would be 0o700)
        made = True
        summary = _write(work, to, datasets, classes)
        if target.exists():
            target.rmdir()  # empty, checked above
        work.rename(target)
    except BaseException as error:
        if made or not isinstance(error, FileExistsError):  # a folder already at the random name is not ours
            shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _write(dest: Path, to: str, datasets: dict, classes: tuple[str, ...]) -> dict:
    """Write every split of ``datasets`` {dest split: dataset} into the folder ``dest``; the summary."""
    writer = {"voc": _write_voc, "coco": _write_coco, "yolo": _write_yolo}[to]
    summary = {"splits": {}, "objects": 0, "left_out": 0, "skipped": 0, "classes": list(classes)}
    files = _Files(dest)
    for split, dataset in datasets.items():
        objects, left_out = writer(files, split, dataset, classes)
        summary["splits"][split] = len(dataset)
        summary["objects"] += objects
        summary["left_out"] += left_out
        summary["skipped"] += len(getattr(dataset, "skipped", ()))
    if to == "yolo":
        import yaml

        data = {"names": dict(enumerate(classes)), "nc": len(classes), **{s: f"images/{s}" for s in datasets}}
        atomic_write_text(dest / "data.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return summary


def _write_voc(files: _Files, split: str, dataset, classes) -> tuple[int, int]:
    ids, count = [], 0
    for image_path, size, objects in _images_of(dataset, classes):
        files.copy(f"JPEGImages/{image_path.name}", image_path)
        named = [(classes[label - 1], box, flag) for label, box, flag in objects]
        xml = files.claim(f"Annotations/{image_path.stem}.xml", image_path)
        if xml is not None:  # an image of two splits (trainval and train) has one annotation
            atomic_write_text(xml, _voc_xml(image_path.name, size, named))
        ids.append(image_path.stem)
        count += len(objects)
    (files.root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    atomic_write_text(files.root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return count, 0


def _write_coco(files: _Files, split: str, dataset, classes) -> tuple[int, int]:
    images, annotations = [], []
    for image_id, (image_path, (height, width), objects) in enumerate(_images_of(dataset, classes), start=1):
        files.copy(f"{split}/{image_path.name}", image_path)
        images.append({"id": image_id, "file_name": image_path.name, "width": width, "height": height})
        for label, (x1, y1, x2, y2), crowd in objects:
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "bbox": [round(x1, 4), round(y1, 4), round(w, 4), round(h, 4)],
                    "area": round(w * h, 4),
                    "iscrowd": int(crowd),
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": label, "name": name} for label, name in enumerate(classes, start=1)],
    }
    (files.root / "annotations").mkdir(parents=True, exist_ok=True)
    atomic_write_text(files.root / "annotations" / f"instances_{split}.json", json.dumps(data) + "\n")
    return len(annotations), 0


def _write_yolo(files: _Files, split: str, dataset, classes) -> tuple[int, int]:
    count = left_out = 0
    for image_path, (height, width), objects in _images_of(dataset, classes):
        files.copy(f"images/{split}/{image_path.name}", image_path)
        lines = []
        for label, (x1, y1, x2, y2), flagged in objects:
            if flagged:  # difficult / crowd: YOLO has no flag for objects evaluation ignores
                left_out += 1
                continue
            values = ((x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height)
            lines.append(" ".join([str(label - 1), *(_decimal(v, 6) for v in values)]) + "\n")
        atomic_write_text(files.claim(f"labels/{split}/{image_path.stem}.txt", image_path), "".join(lines))
        count += len(lines)
    return count, left_out
