"""evaluation/coco.py: evaluate_coco equals pycocotools' COCOeval run directly."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fasterrcnn.evaluation import evaluate_coco

CATEGORIES = [{"id": 3, "name": "car"}, {"id": 7, "name": "person"}, {"id": 11, "name": "kite"}]  # kite: no GT
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def ground_truth_json(tmp_path):
    """Three images, non-contiguous category ids, small (< 32^2), medium and large boxes, one crowd box."""
    boxes = [  # image id, category id, [x, y, w, h], iscrowd
        (10, 3, [10.0, 10.0, 20.0, 15.0], 0),  # small
        (10, 7, [50.0, 40.0, 60.0, 80.0], 0),  # large
        (10, 7, [200.0, 30.0, 40.0, 50.0], 0),  # medium
        (20, 3, [5.0, 5.0, 150.0, 100.0], 0),  # large
        (20, 7, [300.0, 200.0, 80.0, 90.0], 1),  # crowd
        (20, 7, [100.0, 150.0, 30.0, 40.0], 0),  # medium
        (30, 3, [0.0, 0.0, 8.0, 6.0], 0),  # small
        (30, 3, [60.0, 60.0, 45.0, 45.0], 0),  # medium
    ]
    annotations = [
        {"id": i + 1, "image_id": image, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": crowd}
        for i, (image, cat, bbox, crowd) in enumerate(boxes)
    ]
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640} for i in (10, 20, 30)],
        "categories": CATEGORIES,
        "annotations": annotations,
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def random_results(coco, seed):
    rng = np.random.default_rng(seed)
    results = []
    for ann in coco.dataset["annotations"]:
        for _ in range(rng.integers(0, 3)):
            x, y, w, h = ann["bbox"]
            jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
            category = ann["category_id"] if rng.random() < 0.85 else 11
            results.append({"image_id": ann["image_id"], "category_id": category, "category_name": "?",
                            "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)],
                            "score": float(rng.random())})
    for _ in range(6):  # background false positives
        results.append({"image_id": int(rng.choice([10, 20, 30])), "category_id": int(rng.choice([3, 7, 11])),
                        "bbox": [float(v) for v in rng.uniform(0, 300, size=2)] + [float(v) for v in rng.uniform(2, 100, size=2)],
                        "score": float(rng.random())})
    return results


def pycocotools_directly(coco, results):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco.loadRes(copy.deepcopy(results))
        coco_eval = COCOeval(coco, coco_dt, "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_coco_equals_pycocotools(tmp_path, seed):
    coco = ground_truth_json(tmp_path)
    results = random_results(coco, seed)
    before = copy.deepcopy(results)
    out = evaluate_coco(coco, results)
    assert results == before  # pycocotools' loadRes mutates entries: ours must not leak that
    reference = pycocotools_directly(coco, results)
    for i, name in enumerate(STATS):
        assert out[name] == float(reference.stats[i]), name
    assert 0.0 < out["AP"] < 1.0

    precision = reference.eval["precision"]  # [T, R, K, A, M]
    assert list(out["per_class"]) == ["car", "person"]
    assert out["classes_without_gt"] == ["kite"]
    for k, name in enumerate(["car", "person"]):
        p = precision[:, :, k, 0, 2]
        assert out["per_class"][name] == float(np.mean(p[p > -1]))
        assert out["per_class_ap50"][name] == float(np.mean(precision[0, :, k, 0, 2]))  # IoU 0.5: the first threshold
        recall, prec = out["pr_curves"][name]
        assert recall == [float(r) for r in np.linspace(0, 1, 101)]
        assert prec == [float(v) for v in precision[0, :, k, 0, 2]]
    # Mean over categories of the per-class AP is COCO's AP (all categories with GT are valid here).
    assert np.mean(list(out["per_class"].values())) == pytest.approx(out["AP"], abs=1e-12)

    assert len(out["summary"]) == 12
    assert out["summary"][0].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]")
    assert out["summary"][0].endswith(f"{out['AP']:0.3f}")


def test_evaluate_coco_prints_nothing(tmp_path, capsys):
    coco = ground_truth_json(tmp_path)
    capsys.readouterr()
    evaluate_coco(coco, random_results(coco, 0))
    evaluate_coco(coco, [])
    assert capsys.readouterr().out == ""


def test_perfect_detections(tmp_path):
    coco = ground_truth_json(tmp_path)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in coco.dataset["annotations"] if not a["iscrowd"]]
    out = evaluate_coco(coco, results)
    for name in STATS[:6]:
        assert out[name] == pytest.approx(1.0, abs=1e-12), name  # a mean of ones
    assert out["per_class"] == pytest.approx({"car": 1.0, "person": 1.0}, abs=1e-12)


def test_empty_results_give_zeros(tmp_path):
    coco = ground_truth_json(tmp_path)
    out = evaluate_coco(coco, [])
    for name in STATS:
        assert out[name] == 0.0, name
    assert out["per_class"] == {"car": 0.0, "person": 0.0}
    assert out["classes_without_gt"] == ["kite"]
    assert out["pr_curves"]["car"] == ([float(r) for r in np.linspace(0, 1, 101)], [0.0] * 101)
    assert len(out["summary"]) == 12


def test_results_on_unknown_images_raise(tmp_path):
    coco = ground_truth_json(tmp_path)
    results = [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}]
    with pytest.raises(ValueError, match=r"1 result image id\(s\) are not in the COCO ground truth, e.g. \[99\]"):
        evaluate_coco(coco, results)
