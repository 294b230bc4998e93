"""Which data set format a path holds: the one detection that ``build_dataset``, ``convert`` and the runs use.

- a folder with ``Annotations/``: PASCAL VOC (``VOCDataset``);
- a ``.json`` file: COCO instances (``COCODataset``);
- a ``data.yaml`` (or a folder holding one): YOLO (``YOLODataset``).

Each data set class answers the split questions of its format itself: ``evaluation_split`` (what a run
validates on and ``eval`` scores by default: VOC ``test``, YOLO ``val``, COCO None: a JSON is one split)
and ``has_split(path, split)``.
"""

from __future__ import annotations

from pathlib import Path

from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.data.yolo import YOLODataset, find_data_yaml
from fasterrcnn.errors import DataError

__all__ = ["FORMATS", "dataset_class", "dataset_format", "evaluation_split", "split_name"]

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
