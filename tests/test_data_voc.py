import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.voc import VOC_CLASSES, VOCDataset
from fasterrcnn.errors import ConfigError, DataError


def obj(name, xmin, ymin, xmax, ymax, difficult=None):
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return (
        f"<object><name>{name}</name>{flag}<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
        f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def write_voc(root, images, split="trainval", size_in_xml=True, filenames=None):
    """images: {image_id: ((height, width), [object xml, ...])}."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, ((height, width), objects) in images.items():
        filename = (filenames or {}).get(image_id, f"{image_id}.jpg")
        Image.new("RGB", (width, height), (10, 200, 30)).save(root / "JPEGImages" / filename)
        size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>" if size_in_xml else ""
        xml = f"<annotation><filename>{filename}</filename>{size}{''.join(objects)}</annotation>"
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return root


def test_sample_boxes_converted_from_one_based_inclusive(tmp_path):
    root = write_voc(tmp_path, {"a": ((25, 30), [obj("dog", 1, 2, 10, 20), obj("person", 5.5, 3, 30, 25, 1)])})
    dataset = VOCDataset(root)
    assert dataset.classes == VOC_CLASSES
    assert dataset.ids == ["a"]
    assert len(dataset) == 1
    image, target = dataset[0]
    assert image.shape == (3, 25, 30)
    assert image.dtype == torch.float32
    assert target["boxes"].dtype == torch.float32
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 1.0, 10.0, 20.0], [4.5, 2.0, 30.0, 25.0]]))
    assert torch.equal(target["labels"], torch.tensor([VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]))
    assert target["labels"].dtype == torch.int64
    assert torch.equal(target["difficult"], torch.tensor([False, True]))
    assert target["image_id"] == "a"
    assert target["orig_size"] == (25, 30)
    assert dataset.image_size(0) == (25, 30)


def test_keep_difficult_false_drops_them_from_samples_not_from_ground_truth(tmp_path):
    root = write_voc(tmp_path, {"a": ((25, 30), [obj("dog", 1, 2, 10, 20, 0), obj("cat", 2, 2, 9, 9, 1)])})
    dataset = VOCDataset(root, keep_difficult=False)
    _, target = dataset[0]
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 1.0, 10.0, 20.0]]))
    assert torch.equal(target["labels"], torch.tensor([12]))
    assert torch.equal(target["difficult"], torch.tensor([False]))
    (truth,) = dataset.ground_truth()
    assert truth["image_id"] == "a"
    assert torch.equal(truth["boxes"], torch.tensor([[0.0, 1.0, 10.0, 20.0], [1.0, 1.0, 9.0, 9.0]]))
    assert torch.equal(truth["labels"], torch.tensor([12, 8]))
    assert torch.equal(truth["difficult"], torch.tensor([False, True]))


def test_class_list_custom_names_sorted_and_argument_order(tmp_path):
    root = write_voc(tmp_path, {"a": ((20, 20), [obj("zebra", 1, 1, 5, 5), obj("ant", 2, 2, 6, 6)]), "b": ((20, 20), [])})
    dataset = VOCDataset(root)
    assert dataset.classes == ("ant", "zebra")
    assert torch.equal(dataset[0][1]["labels"], torch.tensor([2, 1]))
    _, empty = dataset[1]
    assert empty["boxes"].shape == (0, 4)
    assert empty["labels"].shape == (0,)
    dataset = VOCDataset(root, classes=["zebra", "bee", "ant"])
    assert dataset.classes == ("zebra", "bee", "ant")
    assert torch.equal(dataset[0][1]["labels"], torch.tensor([1, 3]))
    with pytest.raises(ConfigError, match="distinct"):
        VOCDataset(root, classes=["ant", "zebra", "ant"])


def test_unknown_class_with_explicit_classes_names_xml_and_class(tmp_path):
    root = write_voc(tmp_path, {"a": ((20, 20), [obj("dog", 1, 1, 5, 5)]), "b": ((20, 20), [obj("wolf", 1, 1, 5, 5)])})
    with pytest.raises(DataError) as info:
        VOCDataset(root, classes=VOC_CLASSES)
    assert "b.xml" in str(info.value)
    assert "'wolf'" in str(info.value)


def test_clipping_and_degenerate_boxes_counted_in_one_warning(tmp_path, caplog):
    objects = [
        obj("dog", 0, 1, 40, 10),  # x1 = -1 and x2 = 40 clipped to 0 and 30
        obj("dog", 35, 1, 40, 10),  # entirely right of the image: empty after clipping
        obj("dog", 10, 10, 5, 12),  # xmax < xmin
        obj("dog", 3, 3, 3, 3),  # one pixel: 2..3, kept
    ]
    root = write_voc(tmp_path, {"a": ((20, 30), objects), "b": ((20, 30), [obj("cat", 1, 1, 10, 25)])})
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = VOCDataset(root)
    assert dataset.num_clipped == 2
    assert dataset.num_dropped == 2
    records = [r for r in caplog.records if r.name == "fasterrcnn"]
    assert len(records) == 1
    assert "2 boxes clipped" in records[0].getMessage()
    assert "2 empty boxes dropped" in records[0].getMessage()
    assert torch.equal(dataset[0][1]["boxes"], torch.tensor([[0.0, 0.0, 30.0, 10.0], [2.0, 2.0, 3.0, 3.0]]))
    assert torch.equal(dataset[1][1]["boxes"], torch.tensor([[0.0, 0.0, 10.0, 20.0]]))


def test_no_warning_for_clean_data(tmp_path, caplog):
    root = write_voc(tmp_path, {"a": ((20, 30), [obj("dog", 1, 1, 30, 20)])})
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = VOCDataset(root)
    assert dataset.num_clipped == 0
    assert dataset.num_dropped == 0
    assert [r for r in caplog.records if r.name == "fasterrcnn"] == []


def test_size_read_from_image_header_when_xml_has_none(tmp_path):
    root = write_voc(tmp_path, {"a": ((17, 23), [obj("dog", 1, 1, 5, 5)])}, size_in_xml=False)
    dataset = VOCDataset(root)
    assert dataset.image_size(0) == (17, 23)
    assert dataset[0][1]["orig_size"] == (17, 23)


def test_filename_from_xml_and_other_extensions(tmp_path):
    root = write_voc(tmp_path, {"a": ((10, 12), []), "b": ((11, 13), [])}, filenames={"a": "photo.png", "b": "b.png"})
    dataset = VOCDataset(root)
    assert dataset[0][0].shape == (3, 10, 12)
    assert dataset[1][0].shape == (3, 11, 13)
    (root / "Annotations" / "b.xml").write_text("<annotation><size><width>13</width><height>11</height></size></annotation>")
    assert VOCDataset(root)[1][0].shape == (3, 11, 13)  # no <filename>: b.png found by its id


def test_split_file_with_per_class_flags(tmp_path):
    root = write_voc(tmp_path, {"a": ((10, 10), []), "b": ((10, 10), [])})
    (root / "ImageSets" / "Main" / "dog_val.txt").write_text("a -1\nb  1\n\n")
    assert VOCDataset(root, split="dog_val").ids == ["a", "b"]


def test_missing_root_split_image_and_annotation(tmp_path):
    with pytest.raises(DataError) as info:
        VOCDataset(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)
    root = write_voc(tmp_path / "voc", {"a": ((10, 10), [])})
    with pytest.raises(DataError) as info:
        VOCDataset(root, split="test")
    assert "test.txt" in str(info.value)
    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DataError) as info:
        VOCDataset(root)
    assert "a.jpg" in str(info.value)
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nghost\n")
    with pytest.raises(DataError) as info:
        VOCDataset(root)
    assert "a.jpg" in str(info.value)
    write_voc(root, {"a": ((10, 10), [])})
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("a\nghost\n")
    with pytest.raises(DataError) as info:
        VOCDataset(root)
    assert "ghost.xml" in str(info.value)


@pytest.mark.parametrize(
    "xml, problem",
    [
        ("<annotation><object><name>dog</name>", "does not parse"),
        ("<annotation><object><name>dog</name></object></annotation>", "has no <bndbox>"),
        (f"<annotation>{obj('dog', 1, 'abc', 5, 5)}</annotation>", "<ymin> is 'abc'"),
        ("<annotation><object><bndbox><xmin>1</xmin></bndbox></object></annotation>", "without <name>"),
        (f"<annotation>{obj('dog', 1, 1, 5, 5, 'yes')}</annotation>", "<difficult> is 'yes'"),
    ],
)
def test_malformed_xml_raises_data_error_naming_it(tmp_path, xml, problem):
    root = write_voc(tmp_path, {"a": ((10, 10), [])})
    (root / "Annotations" / "a.xml").write_text(xml)
    with pytest.raises(DataError) as info:
        VOCDataset(root)
    assert str(info.value).startswith(str(root / "Annotations" / "a.xml"))
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_xml_size_that_disagrees_with_the_image_is_reported_at_construction(tmp_path):
    root = write_voc(tmp_path, {"a": ((10, 12), []), "b": ((10, 12), [])})
    Image.fromarray(np.zeros((12, 10, 3), dtype=np.uint8)).save(root / "JPEGImages" / "a.jpg")
    with pytest.raises(DataError) as info:
        VOCDataset(root)
    assert "a.xml" in str(info.value)
    assert "10x12" in str(info.value)
    assert "12x10" in str(info.value)
    dataset = VOCDataset(root, on_bad_image="skip")
    assert dataset.ids == ["b"] and [path for path, _ in dataset.skipped] == [str(root / "JPEGImages" / "a.jpg")]


def test_transforms_receive_image_and_target(tmp_path):
    root = write_voc(tmp_path, {"a": ((10, 12), [obj("dog", 1, 1, 5, 5)])})

    def transform(image, target):
        return image * 0, {**target, "seen": True}

    image, target = VOCDataset(root, transforms=transform)[0]
    assert image.abs().sum().item() == 0.0
    assert target["seen"] is True
    assert torch.equal(target["boxes"], torch.tensor([[0.0, 0.0, 5.0, 5.0]]))
