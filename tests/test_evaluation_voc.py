"""evaluation/voc.py: VOC AP equals hand-computed values and a transcription of py-faster-rcnn's voc_eval."""

import numpy as np
import pytest
import torch

from fasterrcnn.evaluation import detections_to_results, evaluate_voc, voc_ap

CLASSES = ("cat", "dog", "bird")


def result(image_id, category_id, xyxy, score):
    x1, y1, x2, y2 = xyxy
    return {"image_id": image_id, "category_id": category_id, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}


def gt(image_id, boxes, labels, difficult=None):
    entry = {"image_id": image_id, "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
             "labels": torch.tensor(labels, dtype=torch.int64)}
    if difficult is not None:
        entry["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return entry


# ---------------------------------------------------------------------------------------------
# voc_ap on hand-made curves


def test_voc_ap_area_under_envelope():
    # rec [.5,.5,.5,.5,1], prec [1,.5,.5,1/3,.5]: envelope 1 up to recall .5, then .5 -> .5 + .25
    assert voc_ap([0.5, 0.5, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 1 / 3, 0.5], False) == 0.75
    # Precision rising later lifts the envelope before it: rec [.25,.5], prec [.5, 1] -> .5 * 1
    assert voc_ap([0.25, 0.5], [0.5, 1.0], False) == 0.5
    assert voc_ap([], [], False) == 0.0


def test_voc_ap_07_eleven_points():
    # t in 0..0.5 (6 points): max precision 1; t in 0.6..1 (5 points): 0.5
    assert voc_ap([0.5, 0.5, 0.5, 0.5, 1.0], [1.0, 0.5, 0.5, 1 / 3, 0.5], True) == pytest.approx(8.5 / 11, abs=1e-15)
    # Recall 0.3 does not reach voc_eval's 4th threshold np.arange(0, 1.1, 0.1)[3] = 0.30000000000000004
    assert voc_ap([0.3], [1.0], True) == pytest.approx(3 / 11, abs=1e-15)
    assert voc_ap([], [], True) == 0.0


# ---------------------------------------------------------------------------------------------
# evaluate_voc on hand-made detections


def hand_made_case():
    ground_truth = [
        gt("img1",
           [[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10], [0, 0, 10, 10]],
           [1, 1, 1, 2],
           [False, True, False, False]),
    ]
    results = [
        result("img1", 1, (0, 0, 10, 10), 0.9),  # TP on box 0
        result("img1", 1, (1, 0, 11, 10), 0.8),  # IoU 90/110 with box 0, already matched: FP
        result("img1", 1, (20, 20, 30, 30), 0.7),  # on the difficult box: ignored
        result("img1", 1, (60, 60, 70, 70), 0.65),  # nothing there: FP
        result("img1", 1, (40, 0, 50, 10), 0.6),  # TP on box 2
        result("img1", 3, (0, 0, 5, 5), 0.99),  # bird has no ground truth
    ]
    return results, ground_truth


def test_evaluate_voc_hand_made_area_metric():
    results, ground_truth = hand_made_case()
    out = evaluate_voc(results, ground_truth, CLASSES)
    # cat: tp [1,1,1,1,2], fp [0,1,1,2,2], npos 2 -> rec [.5,.5,.5,.5,1], prec [1,.5,.5,1/3,.5]
    recall, precision = out["pr_curves"]["cat"]
    assert recall == [0.5, 0.5, 0.5, 0.5, 1.0]
    assert precision == [1.0, 0.5, 0.5, 1 / 3, 0.5]
    assert out["per_class"] == {"cat": 0.75, "dog": 0.0}
    assert out["pr_curves"]["dog"] == ([], [])
    assert out["classes_without_gt"] == ["bird"]
    assert out["mAP"] == 0.375
    assert out["metric"] == "voc"
    assert out["iou_threshold"] == 0.5
    assert out["num_gt"] == {"cat": 2, "dog": 1, "bird": 0}
    assert out["num_detections"] == {"cat": 5, "dog": 0, "bird": 1}


def test_evaluate_voc_hand_made_07_metric():
    results, ground_truth = hand_made_case()
    out = evaluate_voc(results, ground_truth, CLASSES, use_07_metric=True)
    assert out["metric"] == "voc07"
    assert out["per_class"]["cat"] == pytest.approx(8.5 / 11, abs=1e-15)
    assert out["per_class"]["dog"] == 0.0
    assert out["mAP"] == pytest.approx(8.5 / 22, abs=1e-15)
    assert out["classes_without_gt"] == ["bird"]


def test_results_order_does_not_matter_apart_from_ties():
    results, ground_truth = hand_made_case()
    assert evaluate_voc(results[::-1], ground_truth, CLASSES) == evaluate_voc(results, ground_truth, CLASSES)


def test_score_ties_keep_results_order():
    ground_truth = [gt("a", [[0, 0, 10, 10]], [1])]
    tp = result("a", 1, (0, 0, 10, 10), 0.5)
    fp = result("a", 1, (50, 50, 60, 60), 0.5)
    # FP first: rec [0, 1], prec [0, .5] -> AP .5; TP first: rec [1, 1], prec [1, .5] -> AP 1
    first_fp = evaluate_voc([fp, tp], ground_truth, CLASSES)
    assert first_fp["pr_curves"]["cat"] == ([0.0, 1.0], [0.0, 0.5])
    assert first_fp["per_class"]["cat"] == 0.5
    first_tp = evaluate_voc([tp, fp], ground_truth, CLASSES)
    assert first_tp["pr_curves"]["cat"] == ([1.0, 1.0], [1.0, 0.5])
    assert first_tp["per_class"]["cat"] == 1.0


def test_top_detection_on_difficult_box_gives_zero_precision_not_nan():
    ground_truth = [gt("a", [[0, 0, 10, 10], [20, 0, 30, 10]], [1, 1], [True, False])]
    results = [result("a", 1, (0, 0, 10, 10), 0.9), result("a", 1, (20, 0, 30, 10), 0.8)]
    for use_07 in (False, True):
        out = evaluate_voc(results, ground_truth, CLASSES, use_07_metric=use_07)
        assert out["pr_curves"]["cat"] == ([0.0, 1.0], [0.0, 1.0])
        assert out["per_class"]["cat"] == pytest.approx(1.0, abs=1e-15)


def test_iou_ties_between_ground_truth_boxes_go_to_the_first():
    # Two identical boxes: voc_eval's np.argmax picks the first, so the order decides whether the
    # detection lands on the difficult one (ignored) or the other one (TP).
    detection = [result("a", 1, (0, 0, 10, 10), 0.9)]
    difficult_first = evaluate_voc(detection, [gt("a", [[0, 0, 10, 10]] * 2, [1, 1], [True, False])], CLASSES)
    assert difficult_first["pr_curves"]["cat"] == ([0.0], [0.0])
    assert difficult_first["per_class"]["cat"] == 0.0
    difficult_second = evaluate_voc(detection, [gt("a", [[0, 0, 10, 10]] * 2, [1, 1], [False, True])], CLASSES)
    assert difficult_second["pr_curves"]["cat"] == ([1.0], [1.0])
    assert difficult_second["per_class"]["cat"] == 1.0


def test_iou_exactly_half_is_not_a_match():
    # GT XML (1,1,10,10) -> continuous (0,0,10,10). Detection (0,0,10,5): VOC pixels (1,1,10,5),
    # IoU (10*5)/(10*10 + 10*5 - 50) = 0.5 exactly -> not > 0.5 -> FP.
    # (+1 widths applied to the continuous boxes would give 66/121 = 0.545 and a wrong TP.)
    ground_truth = [gt("a", [[0, 0, 10, 10]], [1])]
    out = evaluate_voc([result("a", 1, (0, 0, 10, 5), 0.9)], ground_truth, CLASSES)
    assert out["pr_curves"]["cat"] == ([0.0], [0.0])
    assert out["per_class"]["cat"] == 0.0
    # The threshold is a parameter: at 0.49 the same detection matches.
    assert evaluate_voc([result("a", 1, (0, 0, 10, 5), 0.9)], ground_truth, CLASSES, iou_threshold=0.49)[
        "per_class"]["cat"] == 1.0


def test_pixel_inclusive_convention_matches_continuous_iou():
    # Detection (0,0,10,5.25): continuous IoU 52.5/100 > 0.5 -> TP. VOC pixels (1,1,10,5.25) with +1
    # widths: 10*5.25 / 100 = 0.525 as well. Plain IoU on those VOC pixel coordinates (no +1) would
    # give (9*4.25)/(9*9) = 0.472 -> a wrong FP.
    ground_truth = [gt("a", [[0, 0, 10, 10]], [1])]
    out = evaluate_voc([result("a", 1, (0, 0, 10, 5.25), 0.9)], ground_truth, CLASSES)
    assert out["pr_curves"]["cat"] == ([1.0], [1.0])
    assert out["per_class"]["cat"] == 1.0


def test_detections_on_images_without_ground_truth_are_false_positives():
    ground_truth = [gt("a", [[0, 0, 10, 10]], [1])]
    results = [result("not-in-gt", 1, (0, 0, 10, 10), 0.9), result("a", 1, (0, 0, 10, 10), 0.8)]
    out = evaluate_voc(results, ground_truth, CLASSES)
    assert out["pr_curves"]["cat"] == ([0.0, 1.0], [0.0, 0.5])
    assert out["per_class"]["cat"] == 0.5


def test_images_without_boxes_and_no_ground_truth_at_all():
    ground_truth = [gt("a", [], []), {"image_id": "b", "boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)}]
    out = evaluate_voc([result("a", 2, (0, 0, 10, 10), 0.9)], ground_truth, CLASSES)
    assert out["mAP"] == 0.0
    assert out["per_class"] == {}
    assert out["pr_curves"] == {}
    assert out["classes_without_gt"] == ["cat", "dog", "bird"]
    assert out["num_detections"] == {"cat": 0, "dog": 1, "bird": 0}


def test_only_difficult_ground_truth_means_no_gt():
    ground_truth = [gt("a", [[0, 0, 10, 10], [0, 0, 20, 20]], [1, 2], [True, False])]
    out = evaluate_voc([result("a", 2, (0, 0, 20, 20), 0.9)], ground_truth, CLASSES)
    assert out["classes_without_gt"] == ["cat", "bird"]
    assert out["per_class"] == {"dog": 1.0}
    assert out["mAP"] == 1.0
    assert out["num_gt"] == {"cat": 0, "dog": 1, "bird": 0}


def test_bad_inputs_raise_value_error():
    ground_truth = [gt("a", [[0, 0, 10, 10]], [1])]
    with pytest.raises(ValueError, match="category_id 4 outside 1..3"):
        evaluate_voc([result("a", 4, (0, 0, 1, 1), 0.5)], ground_truth, CLASSES)
    with pytest.raises(ValueError, match="'horse' in the results but 'cat'"):
        evaluate_voc([dict(result("a", 1, (0, 0, 1, 1), 0.5), category_name="horse")], ground_truth, CLASSES)
    with pytest.raises(ValueError, match="appears twice"):
        evaluate_voc([], ground_truth * 2, CLASSES)
    with pytest.raises(ValueError, match=r"labels \[0\] outside 1..3"):
        evaluate_voc([], [gt("a", [[0, 0, 10, 10]], [0])], CLASSES)


# ---------------------------------------------------------------------------------------------
# Against a transcription of py-faster-rcnn's lib/datasets/voc_eval.py (on VOC XML coordinates)


def reference_voc_eval(recs, dets, classname, ovthresh=0.5, use_07_metric=False):
    """voc_eval's loop, line by line. recs: {image: [{"name", "difficult", "bbox" (XML ints)}]};
    dets: [(image, score, [x1, y1, x2, y2] as py-faster-rcnn writes them)] of this class.
    Returns (rec, prec, ap_area, ap_07), precision with Detectron's eps guard for the 07 AP."""
    class_recs = {}
    npos = 0
    for imagename in recs:
        R = [obj for obj in recs[imagename] if obj["name"] == classname]
        bbox = np.array([x["bbox"] for x in R])
        difficult = np.array([x["difficult"] for x in R]).astype(bool)
        det = [False] * len(R)
        npos = npos + sum(~difficult)
        class_recs[imagename] = {"bbox": bbox, "difficult": difficult, "det": det}
    image_ids = [d[0] for d in dets]
    confidence = np.array([d[1] for d in dets])
    BB = np.array([d[2] for d in dets]).reshape(-1, 4)
    sorted_ind = np.argsort(-confidence)
    BB = BB[sorted_ind, :]
    image_ids = [image_ids[x] for x in sorted_ind]
    nd = len(image_ids)
    tp = np.zeros(nd)
    fp = np.zeros(nd)
    for d in range(nd):
        R = class_recs[image_ids[d]]
        bb = BB[d, :].astype(float)
        ovmax = -np.inf
        BBGT = R["bbox"].astype(float)
        if BBGT.size > 0:
            ixmin = np.maximum(BBGT[:, 0], bb[0])
            iymin = np.maximum(BBGT[:, 1], bb[1])
            ixmax = np.minimum(BBGT[:, 2], bb[2])
            iymax = np.minimum(BBGT[:, 3], bb[3])
            iw = np.maximum(ixmax - ixmin + 1., 0.)
            ih = np.maximum(iymax - iymin + 1., 0.)
            inters = iw * ih
            uni = ((bb[2] - bb[0] + 1.) * (bb[3] - bb[1] + 1.) +
                   (BBGT[:, 2] - BBGT[:, 0] + 1.) *
                   (BBGT[:, 3] - BBGT[:, 1] + 1.) - inters)
            overlaps = inters / uni
            ovmax = np.max(overlaps)
            jmax = np.argmax(overlaps)
        if ovmax > ovthresh:
            if not R["difficult"][jmax]:
                if not R["det"][jmax]:
                    tp[d] = 1.
                    R["det"][jmax] = 1
                else:
                    fp[d] = 1.
        else:
            fp[d] = 1.
    fp = np.cumsum(fp)
    tp = np.cumsum(tp)
    rec = tp / float(npos)
    with np.errstate(invalid="ignore"):
        prec_original = tp / (tp + fp)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return rec, prec, reference_voc_ap(rec, prec_original, False), reference_voc_ap(rec, prec, True)


def reference_voc_ap(rec, prec, use_07_metric=False):
    if use_07_metric:
        ap = 0.
        for t in np.arange(0., 1.1, 0.1):
            if np.sum(rec >= t) == 0:
                p = 0
            else:
                p = np.max(prec[rec >= t])
            ap = ap + p / 11.
    else:
        mrec = np.concatenate(([0.], rec, [1.]))
        mpre = np.concatenate(([0.], prec, [0.]))
        for i in range(mpre.size - 1, 0, -1):
            mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
        i = np.where(mrec[1:] != mrec[:-1])[0]
        ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
    return ap


def random_voc_case(seed, num_images=12):
    """XML-style ground truth and py-faster-rcnn-style detections, plus the same data in our format.

    Detection coordinates are multiples of 1/4 (exact in float32) jittered around small GT boxes so
    that many IoUs land near 0.5, some exactly on it."""
    rng = np.random.default_rng(seed)
    recs, dets, ground_truth, results = {}, {name: [] for name in CLASSES}, [], []
    for i in range(num_images):
        image = f"{i:06d}"
        objs = []
        for _ in range(rng.integers(0, 6)):
            xmin, ymin = rng.integers(1, 60, size=2)
            xmax, ymax = xmin + rng.integers(0, 16), ymin + rng.integers(0, 16)
            objs.append({"name": CLASSES[rng.integers(0, 2)], "difficult": int(rng.random() < 0.25),
                         "bbox": [int(xmin), int(ymin), int(xmax), int(ymax)]})
        recs[image] = objs
        ground_truth.append({
            "image_id": image,
            "boxes": torch.tensor([[o["bbox"][0] - 1, o["bbox"][1] - 1, o["bbox"][2], o["bbox"][3]] for o in objs],
                                  dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor([CLASSES.index(o["name"]) + 1 for o in objs], dtype=torch.int64),
            "difficult": torch.tensor([bool(o["difficult"]) for o in objs], dtype=torch.bool),
        })
        boxes, labels, scores = [], [], []
        for _ in range(rng.integers(0, 12)):
            o = objs[rng.integers(0, len(objs))] if objs else None
            if o is not None and (o["bbox"][3] - o["bbox"][1]) % 2 == 1 and rng.random() < 0.2:
                x1, y1, x2 = (float(v) for v in o["bbox"][:3])  # top half of the box: IoU exactly 0.5
                y2 = y1 + (o["bbox"][3] - o["bbox"][1] + 1) / 2 - 1
                label = CLASSES.index(o["name"]) + 1
            elif o is not None and rng.random() < 0.7:
                step = 1.0 if rng.random() < 0.5 else 0.25  # integer jitter makes exact IoU ties likely
                x1, y1, x2, y2 = np.array(o["bbox"], dtype=float) + rng.integers(-4, 5, size=4) * step
                label = CLASSES.index(o["name"]) + 1 if rng.random() < 0.8 else int(rng.integers(1, 4))
            else:
                x1, y1 = rng.integers(1, 80, size=2) / 1.0
                x2, y2 = x1 + rng.integers(0, 160) / 4, y1 + rng.integers(0, 160) / 4
                label = int(rng.integers(1, 4))
            x2, y2 = max(x2, x1 - 1), max(y2, y1 - 1)  # VOC pixel boxes of width >= 0 (+1 convention)
            score = float(rng.random())
            dets[CLASSES[label - 1]].append((image, score, [x1, y1, x2, y2]))
            boxes.append([x1 - 1, y1 - 1, x2, y2])  # our continuous boxes
            labels.append(label)
            scores.append(score)
        detection = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                     "labels": torch.tensor(labels, dtype=torch.int64),
                     "scores": torch.tensor(scores, dtype=torch.float64)}
        results += detections_to_results(image, detection, CLASSES)
    return recs, dets, ground_truth, results


@pytest.mark.parametrize("seed", range(6))
def test_evaluate_voc_equals_voc_eval_transcription(seed):
    recs, dets, ground_truth, results = random_voc_case(seed)
    area = evaluate_voc(results, ground_truth, CLASSES)
    eleven = evaluate_voc(results, ground_truth, CLASSES, use_07_metric=True)
    checked = 0
    for name in CLASSES:
        npos = sum(1 for objs in recs.values() for o in objs if o["name"] == name and not o["difficult"])
        assert area["num_gt"][name] == npos
        assert area["num_detections"][name] == len(dets[name])
        if npos == 0:
            assert name in area["classes_without_gt"]
            assert name not in area["per_class"]
            continue
        rec, prec, ap_area, ap_07 = reference_voc_eval(recs, dets[name], name)
        recall, precision = area["pr_curves"][name]
        np.testing.assert_array_equal(recall, rec)
        np.testing.assert_array_equal(precision, prec)
        assert area["per_class"][name] == ap_area
        assert eleven["per_class"][name] == ap_07
        checked += 1
    assert checked >= 1
    assert area["mAP"] == pytest.approx(np.mean(list(area["per_class"].values())), abs=0)
    assert 0.0 < area["mAP"] < 1.0
