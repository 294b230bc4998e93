"""evaluation/results.py: xyxy -> COCO results entries, atomic save, validating load."""

import json
import os

import pytest
import torch

from fasterrcnn.errors import DataError
from fasterrcnn.evaluation import detections_to_results, load_results, results_to_detections, save_results

CLASSES = ("cat", "dog")


def detection():
    return {
        "boxes": torch.tensor([[1.5, 2.25, 10.0, 20.5], [0.0, 0.0, 0.0, 3.0]], dtype=torch.float32),
        "labels": torch.tensor([2, 1]),
        "scores": torch.tensor([0.75, 0.5]),
    }


def test_detections_to_results_voc_ids():
    results = detections_to_results("000005", detection(), CLASSES)
    assert results == [
        {"image_id": "000005", "category_id": 2, "category_name": "dog", "bbox": [1.5, 2.25, 8.5, 18.25], "score": 0.75},
        {"image_id": "000005", "category_id": 1, "category_name": "cat", "bbox": [0.0, 0.0, 0.0, 3.0], "score": 0.5},
    ]
    assert all(type(v) is float for r in results for v in r["bbox"] + [r["score"]])


def test_detections_to_results_coco_category_ids():
    results = detections_to_results(42, detection(), CLASSES, label_to_category_id={1: 3, 2: 18})
    assert [r["category_id"] for r in results] == [18, 3]
    assert [r["category_name"] for r in results] == ["dog", "cat"]
    assert [r["image_id"] for r in results] == [42, 42]


def test_xywh_is_exact_in_float64():
    # 0.1 and 0.3 in float32: w computed in float64 from the float32 values, so x + w == x2 exactly.
    boxes = torch.tensor([[0.1, 100.3, 0.3, 200.7]], dtype=torch.float32)
    det = {"boxes": boxes, "labels": torch.tensor([1]), "scores": torch.tensor([1.0])}
    (entry,) = detections_to_results(1, det, CLASSES)
    x1, y1, x2, y2 = boxes[0].double().tolist()
    assert entry["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert entry["bbox"][0] + entry["bbox"][2] == x2
    assert entry["bbox"][1] + entry["bbox"][3] == y2


def test_empty_detection_and_bad_labels():
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0)}
    assert detections_to_results("a", empty, CLASSES) == []
    bad = dict(detection(), labels=torch.tensor([3, 1]))
    with pytest.raises(ValueError, match=r"label 3 outside 1..2"):
        detections_to_results("a", bad, CLASSES)
    with pytest.raises(ValueError, match=r"expected boxes \[D,4\]"):
        detections_to_results("a", dict(detection(), scores=torch.tensor([1.0])), CLASSES)


def test_round_trip_save_load_and_back_to_detections(tmp_path):
    results = detections_to_results("img", detection(), CLASSES) + detections_to_results(
        "other", {"boxes": torch.tensor([[5.0, 6.0, 7.0, 9.0]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.25])},
        CLASSES,
    )
    path = tmp_path / "results.json"
    save_results(path, results)
    assert os.listdir(tmp_path) == ["results.json"]
    loaded = load_results(path)
    assert loaded == results
    detections = results_to_detections(loaded)
    assert list(detections) == ["img", "other"]
    original = detection()
    assert torch.equal(detections["img"]["boxes"], original["boxes"])
    assert torch.equal(detections["img"]["labels"], original["labels"])
    assert torch.equal(detections["img"]["scores"], original["scores"])
    assert torch.equal(detections["other"]["boxes"], torch.tensor([[5.0, 6.0, 7.0, 9.0]]))
    coco = results_to_detections(detections_to_results(7, detection(), CLASSES, {1: 3, 2: 18}), {3: 1, 18: 2})
    assert torch.equal(coco[7]["labels"], torch.tensor([2, 1]))


def test_save_results_refuses_nan_and_keeps_old_file(tmp_path):
    path = tmp_path / "results.json"
    save_results(path, [])
    assert json.loads(path.read_text()) == []
    bad = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": float("nan")}]
    with pytest.raises(ValueError):
        save_results(path, bad)
    assert json.loads(path.read_text()) == []
    assert os.listdir(tmp_path) == ["results.json"]


GOOD = {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}


@pytest.mark.parametrize(
    "content, problem",
    [
        ('{"image_id": 1}', "expected a JSON list of detections, got dict"),
        ("[1, 2", "not valid JSON (line 1 column 6"),
        # hostile JSON: Python's own ValueError, OverflowError and RecursionError become one-line errors
        ('[{"image_id": 1, "category_id": 1%s, "bbox": [0, 0, 1, 1], "score": 1}]' % ("0" * 5000), "entry 0: category_id must be an integer"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1%s}]' % ("0" * 400), "entry 0: score must be a finite number"),
        ("[" * 20000 + "]" * 20000, "JSON nested too deeply to read"),
        (json.dumps([GOOD, "x"]), "entry 1: expected an object, got str"),
        (json.dumps([GOOD, {k: v for k, v in GOOD.items() if k != "score"}]), "entry 1: missing key(s) score"),
        (json.dumps([{"image_id": 1}]), "entry 0: missing key(s) category_id, bbox, score"),
        (json.dumps([dict(GOOD, bbox=[0, 0, "1", 1])]), "entry 0: bbox must be 4 finite numbers"),
        (json.dumps([dict(GOOD, bbox=[0, 0, 1])]), "entry 0: bbox must be 4 finite numbers"),
        (json.dumps([GOOD, GOOD, dict(GOOD, bbox=[0, 0, -1, 1])]), "entry 2: bbox width and height must be >= 0"),
        (json.dumps([dict(GOOD, score="high")]), "entry 0: score must be a finite number"),
        (json.dumps([dict(GOOD, category_id=1.5)]), "entry 0: category_id must be an integer"),
        (json.dumps([dict(GOOD, image_id=[1])]), "entry 0: image_id must be an int or a string"),
        ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, NaN], "score": 1}]', "entry 0: bbox must be 4 finite"),
    ],
)
def test_load_results_rejects_bad_files(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError) as info:
        load_results(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message
    assert info.value.path == str(path)


def test_load_results_missing_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(DataError) as info:
        load_results(path)
    assert str(info.value) == f"{path}: results file not found"


def test_load_results_accepts_integer_coordinates_and_extra_keys(tmp_path):
    path = tmp_path / "ok.json"
    entries = [dict(GOOD, category_name="cat", extra=1), dict(GOOD, image_id="000001", bbox=[0.5, 1, 0, 0])]
    path.write_text(json.dumps(entries))
    assert load_results(path) == entries
