import json
import logging

import pytest
import torch
from PIL import Image

from fasterrcnn.data.coco import COCODataset
from fasterrcnn.errors import DataError


def coco_json(annotations=None, images=None, categories=None):
    return {
        "images": images
        if images is not None
        else [
            {"id": 5, "file_name": "five.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "two.png", "width": 20, "height": 50},
            {"id": 9, "file_name": "nine.png", "width": 16, "height": 16},
        ],
        "categories": categories
        if categories is not None
        else [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 5, "category_id": 7, "bbox": [10, 20, 5, 6], "iscrowd": 0, "area": 30},
            {"id": 2, "image_id": 5, "category_id": 1, "bbox": [0, 0, 40, 30], "iscrowd": 1, "area": 1200},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [1.5, 2.5, 3, 4], "area": 12},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [2, 3, 0, 4], "iscrowd": 0, "area": 0},
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [15, 40, 10, 20], "iscrowd": 0, "area": 200},
        ],
    }


def write_coco(folder, data, image_folder=None, name="instances.json"):
    folder.mkdir(parents=True, exist_ok=True)
    image_folder = image_folder or folder
    image_folder.mkdir(parents=True, exist_ok=True)
    for image in data["images"]:
        Image.new("RGB", (image["width"], image["height"]), (1, 2, 3)).save(image_folder / image["file_name"])
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def test_category_ids_map_to_contiguous_labels_and_back(tmp_path):
    dataset = COCODataset(write_coco(tmp_path, coco_json()))
    assert dataset.cat_id_to_label == {1: 1, 3: 2, 7: 3}
    assert dataset.label_to_category_id == {1: 1, 2: 3, 3: 7}
    assert dataset.classes == ("one", "three", "seven")
    assert dataset.ids == [2, 5, 9]
    assert [dataset.image_size(i) for i in range(3)] == [(50, 20), (30, 40), (16, 16)]


def test_targets_xywh_to_xyxy_crowd_separate_empty_and_clipped(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = COCODataset(write_coco(tmp_path, coco_json()))
    messages = [r.getMessage() for r in caplog.records if r.name == "fasterrcnn"]
    assert len(messages) == 1
    assert "1 annotations with empty boxes dropped" in messages[0]

    image, target = dataset[1]  # image 5
    assert image.shape == (3, 30, 40)
    assert target["image_id"] == 5
    assert target["orig_size"] == (30, 40)
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 20.0, 15.0, 26.0], [1.5, 2.5, 4.5, 6.5]]))
    assert torch.equal(target["labels"], torch.tensor([3, 2]))
    assert torch.equal(target["iscrowd"], torch.tensor([False, False]))
    assert torch.equal(target["crowd_boxes"], torch.tensor([[0.0, 0.0, 40.0, 30.0]]))
    assert torch.equal(target["crowd_labels"], torch.tensor([1]))

    _, target = dataset[0]  # image 2: the w=0 box is dropped, the other clipped at the bottom (y2 60 -> 50)
    assert torch.equal(target["boxes"], torch.tensor([[15.0, 40.0, 20.0, 50.0]]))
    assert torch.equal(target["labels"], torch.tensor([1]))
    assert target["crowd_boxes"].shape == (0, 4)

    _, target = dataset[2]  # image 9 has no annotations
    assert target["boxes"].shape == (0, 4)
    assert target["labels"].dtype == torch.int64
    assert target["labels"].shape == (0,)

    assert sorted(dataset.coco.getAnnIds()) == [1, 2, 3, 5]  # evaluation sees the same ground truth
    assert dataset.coco.anns[3]["iscrowd"] == 0  # filled in
    assert dataset.coco.anns[1]["area"] == 30  # kept
    assert dataset.coco.getAnnIds(imgIds=[5], iscrowd=False) == [1, 3]


def test_missing_ids_and_area_are_filled_for_pycocotools(tmp_path):
    data = coco_json(
        annotations=[
            {"image_id": 5, "category_id": 1, "bbox": [1, 1, 2, 3]},
            {"image_id": 9, "category_id": 3, "bbox": [10, 0, 10, 10]},  # clipped at x = 16
        ]
    )
    dataset = COCODataset(write_coco(tmp_path, data))
    assert dataset.coco.anns[1] == {"id": 1, "iscrowd": 0, "area": 6.0, "image_id": 5, "category_id": 1, "bbox": [1, 1, 2, 3]}
    assert dataset.coco.anns[2]["area"] == 60.0
    assert torch.equal(dataset[2][1]["boxes"], torch.tensor([[10.0, 0.0, 16.0, 10.0]]))


def test_drop_empty_removes_images_without_trainable_objects(tmp_path):
    data = coco_json()
    data["annotations"].append({"id": 6, "image_id": 9, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 1})
    path = write_coco(tmp_path, data)
    assert COCODataset(path).ids == [2, 5, 9]
    assert COCODataset(path, drop_empty=True).ids == [2, 5]


def test_ground_truth_has_crowd_regions_as_difficult(tmp_path):
    truth = COCODataset(write_coco(tmp_path, coco_json())).ground_truth()
    assert [t["image_id"] for t in truth] == [2, 5, 9]
    assert torch.equal(truth[1]["boxes"], torch.tensor([[10.0, 20.0, 15.0, 26.0], [1.5, 2.5, 4.5, 6.5], [0.0, 0.0, 40.0, 30.0]]))
    assert torch.equal(truth[1]["labels"], torch.tensor([3, 2, 1]))
    assert torch.equal(truth[1]["difficult"], torch.tensor([False, False, True]))
    assert truth[2]["boxes"].shape == (0, 4)


def test_image_lookup_order(tmp_path):
    data = coco_json(annotations=[])
    # 1. beside the JSON wins over images/
    path = write_coco(tmp_path / "a", data)
    write_coco(tmp_path / "a", data, image_folder=tmp_path / "a" / "images", name="other.json")
    assert COCODataset(path).images_dir == tmp_path / "a"
    # 2. the images/ subfolder
    path = write_coco(tmp_path / "b", data, image_folder=tmp_path / "b" / "images")
    assert COCODataset(path).images_dir == tmp_path / "b" / "images"
    # 3. the standard layout annotations/instances_val.json + val/
    path = write_coco(tmp_path / "c" / "annotations", data, image_folder=tmp_path / "c" / "val", name="instances_val.json")
    dataset = COCODataset(path)
    assert dataset.images_dir == tmp_path / "c" / "val"
    assert dataset[0][0].shape == (3, 50, 20)
    # 4. images_dir, when given, is the only place looked in
    assert COCODataset(path, images_dir=tmp_path / "b" / "images").images_dir == tmp_path / "b" / "images"
    with pytest.raises(DataError) as info:
        COCODataset(path, images_dir=tmp_path / "a" / "nothing")
    assert "two.png" in str(info.value)
    assert "instances_val.json" in str(info.value)


def test_one_missing_image_is_named(tmp_path):
    path = write_coco(tmp_path, coco_json())
    (tmp_path / "nine.png").unlink()
    with pytest.raises(DataError) as info:
        COCODataset(path)
    assert str(info.value) == f"{tmp_path / 'nine.png'}: image file not found"


def test_image_size_disagreeing_with_json_is_reported_at_construction(tmp_path):
    path = write_coco(tmp_path, coco_json())
    Image.new("RGB", (21, 50)).save(tmp_path / "two.png")
    with pytest.raises(DataError) as info:
        COCODataset(path)
    assert "two.png" in str(info.value)
    assert "50x20" in str(info.value)
    dataset = COCODataset(path, on_bad_image="skip")
    assert dataset.ids == [5, 9] and sorted(dataset.coco.getImgIds()) == [5, 9]
    assert sorted(dataset.coco.getAnnIds()) == [1, 2, 3]  # two's annotation went with it


def test_annotations_of_unknown_images_are_skipped_with_a_count(tmp_path, caplog):
    data = coco_json()
    data["annotations"] += [{"id": i, "image_id": 404, "category_id": 1, "bbox": [1, 1, 2, 2]} for i in (8, 9)]
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = COCODataset(write_coco(tmp_path, data))
    assert any("2 annotations of image ids not in 'images' skipped" in r.getMessage() for r in caplog.records)
    assert sorted(dataset.coco.getAnnIds()) == [1, 2, 3, 5]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "is not a COCO instances file"),
        (json.dumps({"images": [], "annotations": []}), "is not a COCO instances file"),
        (json.dumps(coco_json(annotations=[{"id": 1, "image_id": 5, "caption": "a dog"}])), "lacks image_id"),
        (json.dumps(coco_json(annotations=[{"id": 1, "image_id": 5, "category_id": 4, "bbox": [1, 1, 2, 2]}])),
         "unknown category id 4"),
        (json.dumps(coco_json(annotations=[{"id": 1, "image_id": 5, "category_id": 1, "bbox": [1, "x", 2, 2]}])),
         "expected 4 finite numbers"),
        (json.dumps(coco_json(images=[{"id": 1, "file_name": "a.png", "width": 4, "height": 4}] * 2, annotations=[])),
         "duplicate image id 1"),
        (json.dumps(coco_json(categories=[{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], annotations=[])),
         "duplicate category id 1"),
        (json.dumps(coco_json(annotations=[{"id": 3, "image_id": 5, "category_id": 1, "bbox": [1, 1, 2, 2]}] * 2)),
         "duplicate annotation id 3"),
        (json.dumps(coco_json(images=[{"id": 1, "file_name": "a.png", "width": 0, "height": 4}], annotations=[])),
         "width/height"),
        (json.dumps(coco_json(images=[{"id": "x", "file_name": "a.png", "width": 4, "height": 4}], annotations=[])),
         "image id 'x' is not an integer"),
        (json.dumps(coco_json(categories=[{"id": [1], "name": "a"}], annotations=[])), "category id [1] is not an integer"),
    ],
)  # fmt: skip
def test_bad_json_raises_data_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        COCODataset(path)
    assert str(info.value).startswith(f"{path}: ")
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(DataError) as info:
        COCODataset(tmp_path / "none.json")
    assert str(info.value) == f"{tmp_path / 'none.json'}: COCO annotation file not found"
