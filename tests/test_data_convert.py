import argparse
import json

import pytest
import torch
from PIL import Image

from fasterrcnn.cli import convert as convert_command
from fasterrcnn.data import COCODataset, VOCDataset, YOLODataset, build_dataset, write_synthetic_voc
from fasterrcnn.data.convert import convert, source_splits
from fasterrcnn.errors import ConfigError, DataError


def write_voc(root, objects, size=(30, 40), split="train"):
    """One image 'a' (h, w = size) with ``objects``: (name, xmin, ymin, xmax, ymax, difficult) in VOC pixels."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (200, 10, 10)).save(root / "JPEGImages" / "a.jpg")
    xml = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    (root / "Annotations" / "a.xml").write_text(
        f"<annotation><size><width>{size[1]}</width><height>{size[0]}</height></size>{xml}</annotation>"
    )
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("a\n")
    return root


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("src") / "voc", num_train=3, num_test=2, image_size=((40, 60), (50, 70)), seed=3)


def assert_same_truth(a, b, atol=0.0):
    """The same classes, image sizes, labels, flags and boxes (up to ``atol`` pixels), image by image."""
    assert a.classes == b.classes and len(a) == len(b)
    for i, (x, y) in enumerate(zip(a.ground_truth(), b.ground_truth())):
        assert a.image_size(i) == b.image_size(i)
        assert torch.equal(x["labels"], y["labels"])
        assert torch.allclose(x["boxes"], y["boxes"], rtol=0, atol=atol), (x["boxes"], y["boxes"])
        assert torch.equal(x["difficult"], y["difficult"])


def test_hand_made_box_in_each_format(tmp_path):
    src = write_voc(tmp_path / "voc", [("zebra", 1, 2, 10, 20, 0), ("ant", 5, 3, 40, 30, 1)])  # x1 y1 x2 y2 = 0 1 10 20
    convert(src, tmp_path / "coco", to="coco")
    data = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "ant"}, {"id": 2, "name": "zebra"}]
    assert data["images"] == [{"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}]
    assert [(a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in data["annotations"]] == [
        (2, [0.0, 1.0, 10.0, 19.0], 190.0, 0),
        (1, [4.0, 2.0, 36.0, 28.0], 1008.0, 1),
    ]
    summary = convert(tmp_path / "coco" / "annotations" / "instances_train.json", tmp_path / "yolo", to="yolo", splits=["train=val"])
    assert summary == {"splits": {"val": 1}, "objects": 1, "left_out": 1, "skipped": 0, "classes": ["ant", "zebra"]}
    assert (tmp_path / "yolo" / "labels" / "val" / "a.txt").read_text() == "1 0.125 0.35 0.25 0.633333\n"
    assert (tmp_path / "yolo" / "data.yaml").read_text() == "names:\n  0: ant\n  1: zebra\nnc: 2\nval: images/val\n"
    convert(tmp_path / "yolo", tmp_path / "back", to="voc")
    xml = (tmp_path / "back" / "Annotations" / "a.xml").read_text()
    box = "<name>zebra</name>\n    <difficult>0</difficult>\n    <bndbox>\n      <xmin>1</xmin>\n      <ymin>2</ymin>\n      <xmax>10</xmax>\n      <ymax>20</ymax>"
    assert box in xml and xml.count("<object>") == 1  # 19.999995 px from 6 decimals rounds back to 20
    assert (tmp_path / "back" / "ImageSets" / "Main" / "val.txt").read_text() == "a\n"
    assert (tmp_path / "back" / "JPEGImages" / "a.jpg").read_bytes() == (src / "JPEGImages" / "a.jpg").read_bytes()


def test_voc_yolo_voc_round_trip(voc, tmp_path):
    assert source_splits(voc) == ["train", "test"]
    summary = convert(voc, tmp_path / "yolo", to="yolo")
    assert summary["splits"] == {"train": 3, "test": 2}
    assert summary["classes"] == ["circle", "cross", "square", "star", "triangle"]  # the union of the splits'
    convert(tmp_path / "yolo", tmp_path / "voc", to="voc")
    for split in ("train", "test"):
        original = VOCDataset(voc, split=split, classes=summary["classes"])
        yolo = YOLODataset(tmp_path / "yolo", split=split)
        back = VOCDataset(tmp_path / "voc", split=split, classes=summary["classes"])
        assert yolo.ids == original.ids == back.ids
        assert_same_truth(original, yolo, atol=1e-3)  # 6 decimals of a width under 100 px
        assert_same_truth(original, back, atol=1e-3)


def test_voc_coco_yolo_coco_voc_keeps_the_boxes(voc, tmp_path):
    convert(voc, tmp_path / "coco", to="coco", splits=["train"])
    coco = build_dataset(tmp_path / "coco" / "annotations" / "instances_train.json")
    assert isinstance(coco, COCODataset)
    assert_same_truth(VOCDataset(voc, split="train"), coco)  # exact: integers in, integers out
    convert(tmp_path / "coco" / "annotations" / "instances_train.json", tmp_path / "yolo", to="yolo", splits={"train": "train"})
    convert(tmp_path / "yolo", tmp_path / "coco2", to="coco")
    convert(tmp_path / "coco2" / "annotations" / "instances_train.json", tmp_path / "voc2", to="voc")
    assert_same_truth(coco, build_dataset(tmp_path / "coco2" / "annotations" / "instances_train.json"), atol=1e-3)
    assert_same_truth(VOCDataset(voc, split="train"), VOCDataset(tmp_path / "voc2", split="train"), atol=1e-3)


def test_difficult_objects_are_crowd_regions_in_coco_and_back(tmp_path):
    src = write_voc(tmp_path / "voc", [("dog", 1, 2, 10, 20, 0), ("cat", 5, 3, 40, 30, 1)])
    convert(src, tmp_path / "coco", to="coco")
    coco = build_dataset(tmp_path / "coco" / "annotations" / "instances_train.json")
    _, target = coco[0]
    assert torch.equal(target["crowd_boxes"], torch.tensor([[4.0, 2.0, 40.0, 30.0]]))
    convert(tmp_path / "coco" / "annotations" / "instances_train.json", tmp_path / "voc2", to="voc", splits=["train"])
    assert_same_truth(VOCDataset(src, split="train"), VOCDataset(tmp_path / "voc2", split="train"))


def test_destination_must_be_new_or_empty(voc, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for dest in (tmp_path / "full", tmp_path / "full" / "keep.txt"):
        with pytest.raises(DataError) as info:
            convert(voc, dest, to="yolo")
        assert str(info.value) == f"{dest}: already exists and is not an empty folder (convert writes into a new one, overwriting nothing)"
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert convert(voc, tmp_path / "empty", to="coco", splits=["test"])["splits"] == {"test": 2}
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["annotations", "test"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no work folder left


def test_bad_arguments(voc, tmp_path):
    with pytest.raises(ConfigError, match="unknown format 'kitti'"):
        convert(voc, tmp_path / "a", to="kitti")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "data.yaml").write_text("training: images\nnames: [a]\n")
    with pytest.raises(DataError) as info:
        convert(tmp_path / "y", tmp_path / "a", to="voc")
    assert str(info.value) == f"{tmp_path / 'y'}: has none of the splits train, val, test (name the splits to convert)"
    with pytest.raises(ConfigError, match="split name '../x'"):
        convert(voc, tmp_path / "a", to="yolo", splits=["train=../x"])
    with pytest.raises(ConfigError, match="two splits would be written as one: train=val, test=val"):
        convert(voc, tmp_path / "a", to="yolo", splits=["train=val", "test=val"])
    with pytest.raises(DataError) as info:
        convert(voc, tmp_path / "a", to="yolo", splits=["val"])
    assert str(info.value) == f"{voc / 'ImageSets' / 'Main' / 'val.txt'}: split file of split 'val' not found"
    assert not (tmp_path / "a").exists()  # nothing written when the source cannot be read


def test_two_images_with_one_file_name_are_an_error(tmp_path):
    root = tmp_path / "y"
    for sub in ("x", "y"):
        (root / "images" / "train" / sub).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / "images" / "train" / sub / "a.png")
    (root / "data.yaml").write_text("train: images/train\nnames: [cat]\n")
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError) as info:
        convert(root, tmp_path / "out" / "voc", to="voc")
    first, second = root / "images" / "train" / "x" / "a.png", root / "images" / "train" / "y" / "a.png"
    assert str(info.value) == f"{second}: would be JPEGImages/a.png of the converted set, as {first} is (two images with one file name)"
    assert list((tmp_path / "out").iterdir()) == []  # the half-written set is removed


def test_bad_images_follow_the_policy(tmp_path):
    src = write_voc(tmp_path / "voc", [("dog", 1, 2, 10, 20, 0)])
    (src / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="annotation file not found"):
        convert(src, tmp_path / "out1", to="yolo")
    summary = convert(src, tmp_path / "out2", to="yolo", on_bad_image="skip")
    assert summary["splits"] == {"train": 1} and summary["skipped"] == 1


def test_the_command(voc, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fasterrcnn")
    convert_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(voc), str(tmp_path / "y"), "--to", "yolo", "--split", "train", "--split", "test=val"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == f"wrote YOLO set {tmp_path / 'y'}: 5 classes, images per split: train 3, val 2; 18 boxes\n"
    assert YOLODataset(tmp_path / "y", split="val").ids == ["000003", "000004"]
    args = parser.parse_args(["convert", str(tmp_path / "y"), str(tmp_path / "c"), "--to", "coco", "--classes", "a,b"])
    with pytest.raises(DataError, match="differ from the expected classes a, b"):
        args.func(args)


def test_one_image_file_for_two_coco_entries_is_an_error(tmp_path):
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    image = {"file_name": "a.png", "width": 8, "height": 6}
    data = {"images": [{"id": 1, **image}, {"id": 2, **image}], "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    (tmp_path / "two.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        convert(tmp_path / "two.json", tmp_path / "out", to="yolo")
    assert str(info.value) == f"{tmp_path / 'a.png'}: is the image of two entries of the split (ids 1 and 2)"
