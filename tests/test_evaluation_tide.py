"""TIDE error breakdown: each error type on a hand-built case, and agreement with the tidecv package."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fasterrcnn.evaluation.tide import ERROR_TYPES, average_precision_101, error_breakdown

NAMES = ["cat", "dog"]
BOX = [0.0, 0.0, 10.0, 10.0]


def gt(image_id, boxes, labels, difficult=None):
    entry = {"image_id": image_id, "boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}
    if difficult is not None:
        entry["difficult"] = torch.tensor(difficult)
    return entry


def dets(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64), "scores": torch.tensor(scores)}


def only(breakdown, error, value, count=1):
    """``error`` has dAP ``value`` and ``count`` occurrences; every other type adds nothing."""
    assert breakdown.delta_ap[error] == pytest.approx(value, abs=1e-12)
    assert breakdown.counts[error] == count
    for other in ERROR_TYPES:
        if other != error:
            assert breakdown.delta_ap[other] == 0.0, other
    assert breakdown.dominant() == error


def test_ap_101_points_of_a_hand_computed_curve():
    # TP, FP, TP of 2 boxes: precision 1 up to recall 0.5 (51 points), then 2/3 up to recall 1 (50 points)
    assert average_precision_101(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert average_precision_101(np.array([0.9]), np.array([True]), 0) == 0.0
    assert average_precision_101(np.array([]), np.array([], bool), 3) == 0.0


def test_classification_error_is_the_right_box_with_the_wrong_class():
    b = error_breakdown({"a": dets(BOX, [2], [0.9])}, [gt("a", [BOX], [1])], NAMES)
    assert b.ap == 0.0  # cat: 0 of 1 found; dog: one false positive, AP 0
    only(b, "classification", 1.0)  # the box becomes a cat hit, and dog has nothing left
    assert b.counts["missed"] == 0  # the cat is not missed: the classification error points at it
    assert b.per_class["cat"] == {"AP": 0.0, **{e: (1.0 if e == "classification" else 0.0) for e in ERROR_TYPES}}
    assert math.isnan(b.per_class["dog"]["AP"])  # no dog in the ground truth


def test_localisation_error_is_the_right_class_with_a_loose_box():
    b = error_breakdown({"a": dets([0.0, 0.0, 10.0, 4.0], [1], [0.9])}, [gt("a", [BOX], [1])], NAMES)  # IoU 0.4
    only(b, "localisation", 1.0)


def test_duplicate_error_is_a_second_detection_of_a_found_box():
    boxes = [BOX, [0.0, 0.0, 10.0, 9.0], [20.0, 0.0, 30.0, 10.0]]  # the second repeats the first (IoU 0.9)
    b = error_breakdown({"a": dets(boxes, [1, 1, 1], [0.9, 0.8, 0.7])}, [gt("a", [BOX, [20.0, 0.0, 30.0, 10.0]], [1, 1])], NAMES)
    assert b.ap == pytest.approx((51 + 50 * 2 / 3) / 101)
    only(b, "duplicate", 1.0 - (51 + 50 * 2 / 3) / 101)


def test_background_error_fires_on_nothing():
    b = error_breakdown({"a": dets([[50.0, 50.0, 60.0, 60.0], BOX], [1, 1], [0.95, 0.5])}, [gt("a", [BOX], [1])], NAMES)
    assert b.ap == pytest.approx(0.5)
    only(b, "background", 0.5)


def test_both_error_is_a_wrong_class_and_a_loose_box():
    found = dets([BOX, [0.0, 0.0, 10.0, 3.0]], [1, 2], [0.9, 0.8])  # the dog box: IoU 0.3 with the cat
    b = error_breakdown({"a": found}, [gt("a", [BOX], [1])], NAMES)
    assert b.ap == pytest.approx(0.5)  # cat 1, dog 0
    only(b, "both", 0.5)


def test_missed_error_is_a_box_nobody_pointed_at():
    b = error_breakdown({"a": dets(BOX, [1], [0.9])}, [gt("a", [BOX, [30.0, 30.0, 40.0, 40.0]], [1, 1])], NAMES)
    assert b.ap == pytest.approx(51 / 101)
    only(b, "missed", 50 / 101)


def test_difficult_boxes_are_neither_found_nor_missed():
    truth = [gt("a", [BOX, [30.0, 30.0, 40.0, 40.0]], [1, 1], [False, True])]
    b = error_breakdown({"a": dets([BOX, [31.0, 31.0, 39.0, 39.0]], [1, 1], [0.5, 0.9])}, truth, NAMES)
    assert b.ap == 1.0 and sum(b.counts.values()) == 0


def random_set(seed: int, images: int = 12, classes: int = 3):
    """Ground truth and detections with every error type: jittered, relabelled, repeated and stray boxes."""
    rng = np.random.default_rng(seed)
    truth, found = [], {}
    for image in range(images):
        k = int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, (k, 2))
        wh = rng.uniform(20, 80, (k, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(1, classes + 1, k)
        truth.append({"image_id": image, "boxes": torch.tensor(boxes), "labels": torch.tensor(labels)})
        det_boxes, det_labels = [], []
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):  # 0: missed, 2: a duplicate
                det_boxes.append(box + rng.normal(0, rng.choice([2.0, 12.0]), 4))
                det_labels.append(label if rng.random() < 0.75 else rng.integers(1, classes + 1))
        for _ in range(int(rng.integers(0, 4))):  # stray boxes
            xy = rng.uniform(0, 250, 2)
            det_boxes.append(np.concatenate([xy, xy + rng.uniform(10, 60, 2)]))
            det_labels.append(rng.integers(1, classes + 1))
        det_boxes = np.array(det_boxes).reshape(-1, 4)
        det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
        scores = rng.uniform(0.05, 1.0, len(det_boxes))
        found[image] = {"boxes": torch.tensor(det_boxes), "labels": torch.tensor(np.array(det_labels, np.int64)), "scores": torch.tensor(scores)}
    return truth, found


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_tidecv(seed):
    tidecv = pytest.importorskip("tidecv")
    truth, found = random_set(seed)
    names = ["a", "b", "c"]
    ours = error_breakdown(found, truth, names)
    gt_data, pred_data = tidecv.Data("gt"), tidecv.Data("preds")
    for entry in truth:
        for (x1, y1, x2, y2), label in zip(entry["boxes"].tolist(), entry["labels"].tolist()):
            gt_data.add_ground_truth(entry["image_id"], label, [x1, y1, x2 - x1, y2 - y1])
    for image, d in found.items():
        for (x1, y1, x2, y2), label, score in zip(d["boxes"].tolist(), d["labels"].tolist(), d["scores"].tolist()):
            pred_data.add_detection(image, label, score, [x1, y1, x2 - x1, y2 - y1])
    run = tidecv.TIDE().evaluate(gt_data, pred_data, mode=tidecv.TIDE.BOX)
    theirs = {type(e).short_name if not isinstance(e, type) else e.short_name: v for e, v in run.fix_main_errors().items()}
    short = {"classification": "Cls", "localisation": "Loc", "both": "Both", "duplicate": "Dupe", "background": "Bkg", "missed": "Miss"}
    assert 100 * ours.ap == pytest.approx(run.ap, abs=1e-9)
    for error, name in short.items():
        assert 100 * ours.delta_ap[error] == pytest.approx(theirs[name], abs=1e-9), error  # the goal: 0.01
        assert ours.counts[error] == len(run.error_dict[next(t for t in run.error_dict if t.short_name == name)]), error
    assert sum(ours.counts.values()) > 10 and all(ours.counts.values())  # every type occurs
