"""Which data set format a path holds, the one detection that ``convert`` and the runs use, and ``build_dataset``.

- a folder with ``Annotations/``: PASCAL VOC (``VOCDataset``);
- a ``.json`` file: COCO instances (``COCODataset``);
- a ``data.yaml`` (or a folder holding one): YOLO (``YOLODataset``).

Each data set class answers the split questions of its format itself: ``evaluation_split`` (what a run
validates on and ``eval`` scores by default: VOC ``test``, YOLO ``val``, COCO None: a JSON is one split)
and ``has_split(path, split)``.
"""

from __future__ import annotations

from pathlib import Path

from fasterrcnn.data.bad_images import check_policy
from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.images import DEFAULT_REDUCE_TO
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.data.yolo import YOLODataset, find_data_yaml
from fasterrcnn.errors import DataError

__all__ = ["FORMATS", "build_dataset", "dataset_class", "dataset_format", "evaluation_split", "split_name"]

FORMATS = {"voc": VOCDataset, "coco": COCODataset, "yolo": YOLODataset}


def dataset_format(path) -> str | None:
    """"voc", "coco" or "yolo" for what ``path`` holds (see the module docstring); None for anything else."""
    path = Path(path)
    if path.is_dir() and (path / "Annotations").is_dir():
        return "voc"
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if find_data_yaml(path) is not None:
        return "yolo"
    return None


def dataset_class(path) -> type:
    """The data set class of ``path``'s format; DataError naming ``path`` when it is missing or of no format."""
    found = dataset_format(path)
    if found is not None:
        return FORMATS[found]
    if not Path(path).exists():
        raise DataError(path, "dataset not found")
    raise DataError(
        path,
        "is neither a VOC root (Annotations/, JPEGImages/, ImageSets/Main/), a COCO instances JSON nor a YOLO "
        "data.yaml (or a folder holding one)",
    )


def evaluation_split(path, split: str | None = None) -> str | None:
    """``split`` when given, else the split ``path``'s format validates and evaluates on (VOC: test, YOLO: val;
    None for COCO, whose file is the split)."""
    return split if split is not None else dataset_class(path).evaluation_split


def split_name(dataset) -> str:
    """What a line names the data set's split by: its ``split`` (VOC, YOLO), else its file's name (COCO)."""
    info = dataset.describe() if hasattr(dataset, "describe") else {}
    return str(info.get("split") or Path(info.get("path", "")).name or type(dataset).__name__)


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
