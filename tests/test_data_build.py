import json

import pytest
from PIL import Image

from fasterrcnn.data import COCODataset, VOCDataset, build_dataset
from fasterrcnn.errors import DataError


def make_voc(root):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (8, 6)).save(root / "JPEGImages" / "a.jpg")
    (root / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>8</width><height>6</height></size><object><name>cat</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>4</xmax><ymax>4</ymax></bndbox></object></annotation>"
    )
    (root / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    return root


def make_coco(folder):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6)).save(folder / "a.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 6}],
        "categories": [{"id": 4, "name": "cat"}, {"id": 2, "name": "ant"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 4, "bbox": [0, 0, 3, 3]}],
    }
    path = folder / "train.json"
    path.write_text(json.dumps(data))
    return path


def test_voc_root_detected(tmp_path):
    dataset = build_dataset(make_voc(tmp_path / "voc"), split="val", classes=("dog", "cat"))
    assert isinstance(dataset, VOCDataset)
    assert dataset.classes == ("dog", "cat")
    assert dataset.ids == ["a"]


def test_coco_json_detected_with_images_dir_and_class_check(tmp_path):
    path = make_coco(tmp_path / "coco")
    dataset = build_dataset(path, images_dir=tmp_path / "coco")
    assert isinstance(dataset, COCODataset)
    assert dataset.classes == ("ant", "cat")
    assert build_dataset(path, classes=["ant", "cat"]).classes == ("ant", "cat")
    with pytest.raises(DataError) as info:
        build_dataset(path, classes=["cat", "ant"])
    assert str(info.value).startswith(f"{path}: categories ant, cat differ")


def test_neither_voc_nor_coco_nor_yolo(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(DataError) as info:
            build_dataset(path)
        assert str(info.value) == (
            f"{path}: is neither a VOC root (Annotations/, JPEGImages/, ImageSets/Main/), a COCO instances JSON nor "
            "a YOLO data.yaml (or a folder holding one)"
        )
    with pytest.raises(DataError) as info:
        build_dataset(tmp_path / "missing")
    assert str(info.value) == f"{tmp_path / 'missing'}: dataset not found"
