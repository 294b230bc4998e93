"""Untrusted VOC / COCO annotations: every bad value is a one-line DataError naming the file and the
field, or, for a value that concerns one image, that image skipped with a warning under
``on_bad_image="skip"``; never an OverflowError / TypeError / RecursionError traceback."""

import io
import json
import logging

import pytest
from PIL import Image
from test_data_coco import coco_json, write_coco
from test_data_voc import obj, write_voc

from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.errors import DataError


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "fasterrcnn"]


# -- VOC -------------------------------------------------------------------------------------------------
def voc_with_bad_b(tmp_path, xml):
    """A VOC root of images a (fine) and b, whose annotation file is ``xml``."""
    root = write_voc(tmp_path, {"a": ((10, 12), [obj("dog", 1, 1, 5, 5)]), "b": ((10, 12), [obj("dog", 1, 1, 5, 5)])})
    (root / "Annotations" / "b.xml").write_text(xml)
    return root


SIZE = "<filename>b.jpg</filename><size><width>12</width><height>10</height></size>"


@pytest.mark.parametrize(
    "xml, problem",
    [
        (f"<annotation>{SIZE}{obj('dog', 'nan', 1, 5, 5)}</annotation>", "<object> 'dog': <xmin> is 'nan', expected a finite number"),
        (f"<annotation>{SIZE}{obj('dog', 1, 1, 'inf', 5)}</annotation>", "<object> 'dog': <xmax> is 'inf', expected a finite number"),
        (f"<annotation>{SIZE}{obj('dog', 1, 1, 5, '1e999')}</annotation>", "<object> 'dog': <ymax> is '1e999', expected a finite number"),
        ("<annotation><size><width>inf</width><height>10</height></size></annotation>",
         "<size> <width> is 'inf', expected a whole number of pixels"),
        ("<annotation><size><width>12</width><height>nan</height></size></annotation>",
         "<size> <height> is 'nan', expected a whole number of pixels"),
        (f"<annotation>{SIZE}{obj('dog', 1, 1, 5, 5, 'inf')}</annotation>", "<difficult> is 'inf', expected 0 or 1"),
        (f"<annotation>{SIZE}{obj('dog', 1, 1, 5, 5, 'nan')}</annotation>", "<difficult> is 'nan', expected 0 or 1"),
        (f"<html>{SIZE}{obj('dog', 1, 1, 5, 5)}</html>", "root element is <html>, expected <annotation>"),
    ],
)  # fmt: skip
def test_voc_bad_values_name_the_file_and_field_or_skip_the_image(tmp_path, caplog, xml, problem):
    root = voc_with_bad_b(tmp_path, xml)
    xml_path = root / "Annotations" / "b.xml"
    with pytest.raises(DataError) as info:
        VOCDataset(root)
    assert str(info.value).startswith(f"{xml_path}: {problem}") and "\n" not in str(info.value)
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = VOCDataset(root, on_bad_image="skip")
    assert dataset.ids == ["a"]
    assert dataset.skipped == [(str(xml_path), info.value.problem)]
    assert f"{xml_path}: {info.value.problem}; image skipped" in warnings_of(caplog)


def test_voc_whole_number_sizes_written_as_floats_still_load(tmp_path):
    root = voc_with_bad_b(tmp_path, f"<annotation><size><width>12.0</width><height>1e1</height></size>{obj('dog', 1, 1, 5, 5)}</annotation>")
    assert VOCDataset(root).image_size(1) == (10, 12)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_voc_empty_split_file_is_an_error_naming_it(tmp_path, policy):
    root = write_voc(tmp_path, {"a": ((10, 12), [])})
    split_file = root / "ImageSets" / "Main" / "test.txt"
    split_file.write_text("\n  \n")
    with pytest.raises(DataError) as info:
        VOCDataset(root, split="test", on_bad_image=policy)
    assert str(info.value) == f"{split_file}: split file of split 'test' lists no images"


# -- COCO ------------------------------------------------------------------------------------------------
def coco_with(tmp_path, change):
    """The default COCO file (images 5, 2, 9) after ``change(data)``, images written before the change."""
    data = coco_json()
    path = write_coco(tmp_path, data)
    change(data)
    path.write_text(json.dumps(data))
    return path


def image_entry(data, image_id):
    return next(image for image in data["images"] if image["id"] == image_id)


def annotation(data, ann_id):
    return next(ann for ann in data["annotations"] if ann["id"] == ann_id)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: image_entry(d, 2).update(width=float("inf")), "image 2 has width/height inf/50, expected positive whole numbers"),
        (lambda d: image_entry(d, 2).update(height=10**400), "image 2 has width/height 20/inf, expected"),
        (lambda d: image_entry(d, 2).update(width=20.5), "image 2 has width/height 20.5/50"),
        (lambda d: image_entry(d, 2).update(width=True), "image 2 has width/height True/50"),
        (lambda d: image_entry(d, 2).update(file_name=7), "image 2 has file_name 7, expected a file name"),
        (lambda d: image_entry(d, 2).update(file_name=None), "image 2 has file_name None, expected a file name"),
        (lambda d: image_entry(d, 2).update(id=[2]), "image id [2] is not an integer"),
        (lambda d: annotation(d, 5).update(area="big"), "annotation 5 has area 'big', expected a number >= 0 (image 2)"),
        (lambda d: annotation(d, 5).update(area=float("nan")), "annotation 5 has area nan, expected a number >= 0 (image 2)"),
        (lambda d: annotation(d, 5).update(bbox="1234"), "annotation 5 has bbox '1234', expected 4 finite numbers (image 2)"),
        (lambda d: annotation(d, 5).update(bbox=[15, 40, float("nan"), 20]), "annotation 5 has bbox [15, 40, nan, 20], expected 4 finite"),
        (lambda d: annotation(d, 5).update(bbox=[15, 40, True, 20]), "annotation 5 has bbox [15, 40, True, 20], expected 4 finite"),
        (lambda d: annotation(d, 5).update(iscrowd="0"), "annotation 5 has iscrowd '0', expected 0 or 1 (image 2)"),
        (lambda d: annotation(d, 5).update(iscrowd=2), "annotation 5 has iscrowd 2, expected 0 or 1 (image 2)"),
    ],
)  # fmt: skip
def test_coco_bad_values_of_one_image_name_the_field_or_skip_the_image(tmp_path, caplog, change, problem):
    path = coco_with(tmp_path, change)
    with pytest.raises(DataError) as info:
        COCODataset(path)
    assert str(info.value).startswith(f"{path}: {problem}") and "\n" not in str(info.value)
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = COCODataset(path, on_bad_image="skip")
    assert dataset.ids == [5, 9] and sorted(dataset.coco.getImgIds()) == [5, 9]
    assert {a["image_id"] for a in dataset.coco.dataset["annotations"]} == {5}
    assert f"{path}: {info.value.problem}; image skipped" in warnings_of(caplog)


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: annotation(d, 5).update(image_id=[2]), "annotations[4] has image_id [2], expected an integer"),
        (lambda d: annotation(d, 5).update(category_id=[1]), "annotations[4] has category_id [1], expected an integer"),
        (lambda d: annotation(d, 5).update(id=[5]), "annotations[4] has id [5], expected an integer"),
        (lambda d: d["categories"].append({"id": 4, "name": "one"}), "duplicate category name 'one' (ids 1 and 4)"),
        (lambda d: d["categories"].append({"id": 4, "name": None}), "category 4 has name None, expected a non-empty string"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_coco_bad_ids_and_categories_are_errors_of_the_file(tmp_path, change, problem, policy):
    path = coco_with(tmp_path, change)
    with pytest.raises(DataError) as info:
        COCODataset(path, on_bad_image=policy)
    assert str(info.value) == f"{path}: {problem}"


def test_coco_crowd_flags_given_as_booleans_or_numbers_are_read_by_value(tmp_path):
    path = coco_with(tmp_path, lambda d: (annotation(d, 1).update(iscrowd=True), annotation(d, 2).update(iscrowd=0.0)))
    dataset = COCODataset(path)
    _, target = dataset[dataset.ids.index(5)]
    assert target["crowd_boxes"].tolist() == [[10.0, 20.0, 15.0, 26.0]]
    assert dataset.coco.anns[1]["iscrowd"] == 1 and dataset.coco.anns[2]["iscrowd"] == 0  # plain ints for pycocotools


def test_coco_deeply_nested_json_is_a_one_line_error(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"images": ' + "[" * 200_000 + "]" * 200_000 + ', "categories": []}')
    with pytest.raises(DataError) as info:
        COCODataset(path)
    assert str(info.value) == f"{path}: JSON nested too deeply to read"


def test_coco_images_folder_is_the_one_holding_most_images(tmp_path):
    # The images are in images/; the first image's name also exists beside the JSON (a stray
    # copy).  Guessing from the first image sent every other image to the wrong folder.
    data = coco_json(annotations=[])
    path = write_coco(tmp_path, data, image_folder=tmp_path / "images")
    Image.new("RGB", (20, 50)).save(tmp_path / "two.png")  # id 2: the first in id order
    dataset = COCODataset(path)
    assert dataset.images_dir == tmp_path / "images" and dataset.ids == [2, 5, 9]


# -- EXIF orientation ------------------------------------------------------------------------------------
def jpeg_with_orientation(path, size, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 30, 200)).save(buffer, format="JPEG", exif=exif.tobytes())
    path.write_bytes(buffer.getvalue())


def test_an_orientation_the_annotated_size_cannot_resolve_is_warned_once_per_file(tmp_path, caplog):
    # 6 (90 degrees) on a square image and 3 (180 degrees) on any image: the annotation's size fits
    # both the stored and the shown grid, so boxes drawn on the stored pixels would be silently wrong.
    root = write_voc(tmp_path, {i: ((16, 16), []) for i in ("square6", "square1", "wide6", "wide3")})
    folder = root / "JPEGImages"
    jpeg_with_orientation(folder / "square6.jpg", (16, 16), 6)
    jpeg_with_orientation(folder / "square1.jpg", (16, 16), 1)
    jpeg_with_orientation(folder / "wide6.jpg", (16, 12), 6)  # shown 16 x 12 (h x w), stored 12 x 16: the size decides
    jpeg_with_orientation(folder / "wide3.jpg", (16, 16), 3)
    (root / "Annotations" / "wide6.xml").write_text("<annotation><size><width>16</width><height>12</height></size></annotation>")
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        VOCDataset(root)
        VOCDataset(root)  # a second construction does not repeat the warnings
    messages = warnings_of(caplog)
    assert messages == [
        f"{folder / name}.jpg: EXIF orientation {o}, and the size in {name}.xml fits both the stored and the shown "
        "pixels: its boxes are read on the image as shown (upright); they are wrong if they were drawn on the stored pixels"
        for name, o in (("square6", 6), ("wide3", 3))
    ]


def test_eval_on_an_empty_split_is_a_one_line_error_not_a_score(tmp_path, capsys):
    # It reported mAP 0.0 over 0 images and exit code 0.
    from fasterrcnn.cli import main
    from fasterrcnn.config import to_dict
    from fasterrcnn.engine.checkpoint import save_checkpoint
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    model = FasterRCNN.from_preset("tiny", num_classes=1, min_size=48, max_size=64)
    weights = tmp_path / "untrained.pt"
    config = {"preset": "tiny", "model": to_dict(model.config)}
    save_checkpoint(weights, {"model": model.state_dict(), "config": config, "class_names": ["dog"]})
    root = write_voc(tmp_path / "voc", {"a": ((10, 12), [obj("dog", 1, 1, 5, 5)])})
    split_file = root / "ImageSets" / "Main" / "test.txt"
    split_file.write_text("")
    code = main(["eval", "--weights", str(weights), "--data", str(root), "--split", "test", "--output", str(tmp_path / "eval"), "--precision", "f32"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"fasterrcnn: error: {split_file}: split file of split 'test' lists no images\n"
