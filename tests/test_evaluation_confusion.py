"""evaluation/confusion.py: the confusion matrix with background, on hand-made cases with exact counts."""

import math

import numpy as np
import pytest
import torch

from fasterrcnn.evaluation import confusion_matrix, per_class_counts

BG = 2  # two classes: index 0 = label 1, index 1 = label 2, index 2 = background


def gt(image_id, boxes, labels, difficult=None):
    entry = {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}
    if difficult is not None:
        entry["difficult"] = torch.tensor(difficult)
    return entry


def det(boxes, labels, scores):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels), "scores": torch.tensor(scores)}


def test_match_wrong_class_missed_and_false_positive():
    ground_truth = [gt("a", [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 1, 2])]
    detections = {
        "a": det(
            [[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]],  # right, wrong class, on nothing
            [1, 2, 2],
            [0.9, 0.8, 0.7],
        )
    }
    matrix = confusion_matrix(detections, ground_truth, 2)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 0] = 1  # label 1 found as 1
    expected[0, 1] = 1  # label 1 found as 2
    expected[1, BG] = 1  # label 2 missed
    expected[BG, 1] = 1  # a false positive of label 2
    assert matrix.dtype == np.int64 and np.array_equal(matrix, expected)


def test_thresholds_decide_what_counts():
    ground_truth = [gt("a", [[0, 0, 10, 10]], [1])]
    # IoU of [0,0,10,10] with [0,0,10,20] is exactly 0.5: a match (>=); a low-scoring detection is not counted
    detections = {"a": det([[0, 0, 10, 20], [0, 0, 10, 10]], [1, 2], [0.6, 0.4])}
    assert confusion_matrix(detections, ground_truth, 2).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert confusion_matrix(detections, ground_truth, 2, iou_threshold=0.51).tolist() == [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    # every detection counted: the better overlap (IoU 1, label 2) takes the box, the other is a false positive
    assert confusion_matrix(detections, ground_truth, 2, score_threshold=0.0).tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_one_to_one_in_decreasing_iou():
    # two boxes side by side, two detections: greedy by IoU, not by score, and each box / detection once
    ground_truth = [gt("a", [[0, 0, 10, 10], [8, 0, 18, 10]], [1, 2])]
    detections = {"a": det([[1, 0, 11, 10], [8, 0, 18, 10], [0, 0, 10, 10]], [1, 2, 1], [0.99, 0.6, 0.55])}
    # IoUs: det0 with gt0 0.818, gt1 0.176 (below); det1 with gt1 1.0; det2 with gt0 1.0 -> det2 takes gt0, det0 is spare
    assert confusion_matrix(detections, ground_truth, 2).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]


def test_difficult_boxes_count_nothing_and_unknown_images_are_false_positives():
    ground_truth = [gt("a", [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], difficult=[True, True]), gt("b", [], [])]
    detections = {"a": det([[0, 0, 10, 10]], [2], [0.9]), "elsewhere": det([[0, 0, 5, 5]], [1], [0.9])}
    # the detection on the difficult box: neither right nor wrong; the unmatched difficult box: not missed
    assert confusion_matrix(detections, ground_truth, 2).tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0]]
    assert confusion_matrix({}, [], 2).tolist() == [[0] * 3] * 3


def test_labels_outside_the_classes_are_refused():
    with pytest.raises(ValueError, match=r"image 'a': labels \[3\] outside 1..2"):
        confusion_matrix({"a": det([[0, 0, 1, 1]], [3], [0.9])}, [gt("a", [], [])], 2)


def test_per_class_counts_read_the_matrix():
    matrix = np.array([[3, 1, 2], [0, 0, 0], [1, 4, 0]])
    rows = per_class_counts(matrix, ["cat", "dog"])
    assert rows[0] == {"class": "cat", "instances": 6, "detections": 4, "true_positives": 3, "precision": 0.75, "recall": 0.5}
    dog = rows[1]  # no instances: recall undefined; 5 detections, none right
    assert (dog["instances"], dog["detections"], dog["true_positives"], dog["precision"]) == (0, 5, 0, 0.0)
    assert math.isnan(dog["recall"])
