"""Evaluator: scoring results lists against a dataset with the VOC and COCO metrics."""

from __future__ import annotations

import pytest

from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.evaluator import default_metric, evaluate_results, headline
from fasterrcnn.errors import ConfigError
from fasterrcnn.evaluation import detections_to_results


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=4, num_test=2, image_size=(48, 48), seed=4)
    return VOCDataset(root, split="train", classes=SYNTHETIC_CLASSES)


def perfect_results(dataset):
    results = []
    for entry in dataset.ground_truth():
        detection = {"boxes": entry["boxes"], "labels": entry["labels"], "scores": entry["boxes"].new_ones(len(entry["labels"]))}
        results.extend(detections_to_results(entry["image_id"], detection, dataset.classes))
    return results


@pytest.mark.parametrize("metric", ["voc", "voc07", "coco"])
def test_perfect_detections_score_one(dataset, metric):
    metrics = evaluate_results(perfect_results(dataset), dataset, metric=metric)
    name, value = headline(metrics)
    assert metrics["metric"] == metric
    assert name == ("AP" if metric == "coco" else "mAP")
    assert value == pytest.approx(1.0)
    if metric == "coco":
        assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    present = {SYNTHETIC_CLASSES[label - 1] for entry in dataset.ground_truth() for label in entry["labels"].tolist()}
    assert set(metrics["per_class"]) == present
    assert all(ap == pytest.approx(1.0) for ap in metrics["per_class"].values())


def test_no_detections_score_zero(dataset):
    assert headline(evaluate_results([], dataset, metric="voc")) == ("mAP", 0.0)


def test_results_of_another_dataset_are_a_value_error(dataset):
    wrong = [dict(r, image_id="not_an_image") for r in perfect_results(dataset)]
    with pytest.raises(ValueError, match="not_an_image"):
        evaluate_results(wrong, dataset, metric="voc")
    with pytest.raises(ValueError, match="not_an_image"):
        evaluate_results(wrong, dataset, metric="coco")
    with pytest.raises(ConfigError, match="unknown metric"):
        evaluate_results([], dataset, metric="map")


def test_default_metric(dataset):
    assert default_metric(dataset) == "voc"
