"""engine/report.py: the per-class table, the confusion matrix files and the sample picture of an evaluation."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.evaluator import evaluate_results
from fasterrcnn.engine.report import REPORT_FILES, build_report, format_per_class_table, per_class_rows
from fasterrcnn.evaluation import detections_to_results

MATRIX = np.array([[3, 1, 2], [0, 0, 0], [1, 4, 0]])  # cat: 6 boxes, 3 found; dog: no boxes, 5 false detections


def test_per_class_rows_join_counts_and_ap():
    voc = per_class_rows({"metric": "voc", "mAP": 0.6, "per_class": {"cat": 0.6}}, MATRIX, ["cat", "dog"])
    assert voc[0] == {"class": "cat", "instances": 6, "detections": 4, "true_positives": 3, "precision": 0.75, "recall": 0.5, "AP": 0.6}
    assert math.isnan(voc[1]["AP"]) and "AP50" not in voc[1]
    coco = per_class_rows({"metric": "coco", "per_class": {"cat": 0.4}, "per_class_ap50": {"cat": 0.7}}, MATRIX, ["cat", "dog"])
    assert (coco[0]["AP"], coco[0]["AP50"]) == (0.4, 0.7) and math.isnan(coco[1]["AP50"])


def test_table_has_a_row_per_class_and_a_total():
    metrics = {"metric": "voc", "mAP": 0.6, "per_class": {"cat": 0.6}}
    lines = format_per_class_table(per_class_rows(metrics, MATRIX, ["cat", "dog"]), metrics, 0.5).splitlines()
    assert lines[0].split() == ["class", "instances", "detections", "precision", "recall", "AP@0.5"]
    assert lines[2].split() == ["cat", "6", "4", "0.7500", "0.5000", "0.6000"]
    assert lines[3].split() == ["dog", "0", "5", "0.0000", "-", "-"]
    assert lines[5].split() == ["all", "6", "9", "0.3333", "0.5000", "0.6000"]  # 3 right of 9 detections, of 6 boxes
    assert lines[6] == "precision, recall: detections scoring >= 0.5, matched at IoU >= 0.5; AP (voc): all detections; -: undefined"
    coco = {"metric": "coco", "AP": 0.4, "AP50": 0.7, "per_class": {"cat": 0.4}, "per_class_ap50": {"cat": 0.7}}
    lines = format_per_class_table(per_class_rows(coco, MATRIX, ["cat", "dog"]), coco).splitlines()
    assert lines[0].split()[-2:] == ["AP@[.5:.95]", "AP50"] and lines[5].split()[-2:] == ["0.4000", "0.7000"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=3, num_test=0, image_size=(48, 64), seed=4)
    return VOCDataset(root, split="train", classes=SYNTHETIC_CLASSES)


def test_report_of_an_evaluation_written_to_a_folder(dataset, tmp_path):
    results = []  # every box found, and one confident false positive on the first image
    for entry in dataset.ground_truth():
        detection = {"boxes": entry["boxes"], "labels": entry["labels"], "scores": torch.full((len(entry["labels"]),), 0.9)}
        results.extend(detections_to_results(entry["image_id"], detection, dataset.classes))
    first = dataset.ground_truth()[0]["image_id"]
    results.append({"image_id": first, "category_id": 1, "bbox": [0.0, 0.0, 3.0, 3.0], "score": 0.8})
    metrics = evaluate_results(results, dataset, metric="voc")
    report = build_report(results, dataset, metrics, class_names=dataset.classes, num_samples=2)

    counts = np.bincount(torch.cat([e["labels"] for e in dataset.ground_truth()]).numpy(), minlength=6)[1:]
    expected = np.diag(np.append(counts, 0))
    expected[5, 0] = 1  # the false "circle"
    assert np.array_equal(report.matrix, expected)
    circle = report.rows[0]
    assert (circle["instances"], circle["detections"], circle["recall"]) == (counts[0], counts[0] + 1, 1.0)

    report.write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(REPORT_FILES)
    csv_lines = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert csv_lines[0] == "true \\ predicted," + ",".join(SYNTHETIC_CLASSES) + ",background"
    assert csv_lines[-1] == "background,1,0,0,0,0,0"
    per_class = (tmp_path / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "class,instances,detections,true_positives,precision,recall,AP"
    assert len(per_class) == 1 + len(SYNTHETIC_CLASSES)
    samples = Image.open(tmp_path / "samples.jpg")
    assert samples.height > 48 and samples.width > 2 * 2 * 48  # two pairs side by side, scaled up to 256 px high
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The one false positive: a background error; fixing it lifts circle to AP 1 (it ranks below the hits: no dAP)
    assert report.breakdown.counts == {"classification": 0, "localisation": 0, "both": 0, "duplicate": 0, "background": 1, "missed": 0}
    assert report.breakdown.ap == 1.0 and report.breakdown.dominant() is None
    # n hits scored 0.9 (float32: 0.8999..., bin [0.8, 0.9)) and one miss at 0.8 share one bin
    n = int(counts.sum())
    assert report.ece == pytest.approx(abs(n / (n + 1) - (0.9 * n + 0.8) / (n + 1)), abs=1e-6)
    assert report.summary()["error_breakdown"]["background"] == 0.0
    breakdown = (tmp_path / "error_breakdown.csv").read_text().splitlines()
    assert breakdown[0].startswith("class,AP,classification,localisation,both,duplicate,background,missed,classification_count")
    assert breakdown[1].startswith("all,1,0,0,0,0,0,0,0,0,0,0,1,0") and len(breakdown) == 2 + len(SYNTHETIC_CLASSES)
    assert "dominant error: none; detection ECE" in report.table()
    for name in ("error_breakdown.png", "reliability.png"):
        assert Image.open(tmp_path / name).size[0] > 300
