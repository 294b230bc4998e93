"""ops.merge: greedy non-maximum merging, weighted box fusion and box voting on hand-built boxes."""

import pytest
import torch

from fasterrcnn.ops.merge import box_voting, greedy_nmm, merge_detections, weighted_box_fusion


def T(values, dtype=torch.float32):
    return torch.tensor(values, dtype=dtype)


def test_greedy_nmm_joins_the_parts_of_a_cut_object_into_their_enclosing_box():
    # An object at x 90..130 seen cut by the right edge of a tile at 120 and the left edge of the next
    # at 100 (IoS 20 / 30, IoU 20 / 40), an unrelated box, and a box of another class on the same spot.
    boxes = T([[90, 10, 120, 30], [100, 10, 130, 30], [300, 300, 320, 320], [95, 10, 125, 30]])
    scores = T([0.6, 0.9, 0.8, 0.7])
    labels = T([1, 1, 1, 2], torch.int64)
    merged, merged_scores, merged_labels = greedy_nmm(boxes, scores, labels, 0.5)
    assert merged.tolist() == [[90, 10, 130, 30], [300, 300, 320, 320], [95, 10, 125, 30]]
    assert merged_scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert merged_labels.tolist() == [1, 1, 2]
    # NMS at IoU 0.5 keeps both parts (IoU 0.5 is not above it), never the whole object
    kept, _, _ = merge_detections(boxes, scores, labels, "nms", 0.5)
    assert kept.tolist() == [[100, 10, 130, 30], [300, 300, 320, 320], [95, 10, 125, 30], [90, 10, 120, 30]]


def test_greedy_nmm_matches_by_ios_above_the_threshold_only():
    boxes = T([[0, 0, 10, 10], [5, 0, 15, 10]])  # IoS 0.5 exactly: not above 0.5
    scores, labels = T([0.9, 0.8]), T([1, 1], torch.int64)
    assert len(greedy_nmm(boxes, scores, labels, 0.5)[0]) == 2
    assert greedy_nmm(boxes, scores, labels, 0.4)[0].tolist() == [[0, 0, 15, 10]]
    assert len(greedy_nmm(boxes, scores, labels, 0.4, match="iou")[0]) == 2  # IoU 1/3
    empty = greedy_nmm(boxes[:0], scores[:0], labels[:0])
    assert [t.shape[0] for t in empty] == [0, 0, 0]


def test_weighted_box_fusion_averages_by_score_and_scales_by_the_passes_that_found_it():
    boxes = T([[0, 0, 10, 10], [2, 0, 12, 10], [50, 50, 60, 60]])
    scores = T([0.8, 0.4, 0.6])
    labels = T([1, 1, 1], torch.int64)
    fused, fused_scores, fused_labels = weighted_box_fusion(boxes, scores, labels, passes=2, threshold=0.55)
    # cluster 1: (0.8 * [0,0,10,10] + 0.4 * [2,0,12,10]) / 1.2; mean score 0.6 * min(2, 2) / 2
    assert fused[0].tolist() == pytest.approx([2 / 3, 0, 10 + 2 / 3, 10], abs=1e-5)
    assert fused_scores.tolist() == pytest.approx([0.6, 0.3])  # the single box: 0.6 * 1 / 2
    assert fused[1].tolist() == pytest.approx([50, 50, 60, 60]) and fused_labels.tolist() == [1, 1]


def test_weighted_box_fusion_never_fuses_across_classes():
    boxes = T([[0, 0, 10, 10], [0, 0, 10, 10]])
    fused, fused_scores, fused_labels = weighted_box_fusion(boxes, T([0.9, 0.5]), T([1, 2], torch.int64), passes=1)
    assert fused_labels.tolist() == [1, 2] and fused_scores.tolist() == pytest.approx([0.9, 0.5])


def test_box_voting_keeps_the_nms_survivors_scores_with_voted_coordinates():
    boxes = T([[0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 10, 20], [30, 30, 40, 40]])
    scores = T([0.9, 0.3, 0.5, 0.7])
    labels = T([1, 1, 1, 1], torch.int64)
    voted, voted_scores, _ = box_voting(boxes, scores, labels, nms_threshold=0.5, vote_threshold=0.8)
    # survivors: box 0 (0.9; box 1 suppressed, IoU 0.91; box 2 IoU 0.5 stays), box 3, box 2
    assert voted_scores.tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert voted[0].tolist() == pytest.approx([0, 0, 10, (0.9 * 10 + 0.3 * 11) / 1.2])  # box 2 below 0.8
    assert voted[1].tolist() == [30, 30, 40, 40] and voted[2].tolist() == [0, 0, 10, 20]


def test_an_unknown_merge_rule_is_refused():
    with pytest.raises(ValueError, match="unknown merge rule"):
        merge_detections(T([[0, 0, 1, 1]]), T([1.0]), T([1], torch.int64), "mean")


def reference_greedy_nmm(boxes, scores, labels, threshold, match):
    """SAHI's greedy merging as a plain loop over every pair."""
    boxes, scores, labels = boxes.tolist(), scores.tolist(), labels.tolist()
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    free, out = set(order), []
    for i in order:
        if i not in free:
            continue
        free.discard(i)
        group = [i]
        for j in order:
            if j in free and labels[j] == labels[i]:
                a, b = boxes[i], boxes[j]
                inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
                value = inter / (min(area_a, area_b) if match == "ios" else area_a + area_b - inter)
                if value > threshold:
                    free.discard(j)
                    group.append(j)
        members = [boxes[k] for k in group]
        out.append((*(min(m[c] for m in members) for c in (0, 1)), *(max(m[c] for m in members) for c in (2, 3)), scores[i], labels[i]))
    return out


@pytest.mark.parametrize("match", ["ios", "iou"])
def test_greedy_nmm_equals_the_pairwise_loop_on_random_boxes(match):
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(300, 2, generator=generator) * 400
    boxes = torch.cat([corners, corners + 5 + torch.rand(300, 2, generator=generator) * 60], dim=1)
    scores = torch.rand(300, generator=generator)
    labels = torch.randint(1, 4, (300,), generator=generator)
    merged, merged_scores, merged_labels = greedy_nmm(boxes, scores, labels, 0.5, match=match)
    expected = reference_greedy_nmm(boxes, scores, labels, 0.5, match)
    assert len(expected) < 300  # some merged
    got = [(*box, score, label) for box, score, label in zip(merged.tolist(), merged_scores.tolist(), merged_labels.tolist())]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g == pytest.approx(e)


def test_weighted_box_fusion_agrees_with_ensemble_boxes():
    ensemble_boxes = pytest.importorskip("ensemble_boxes")  # the test extra installs it
    generator = torch.Generator().manual_seed(1)
    width, height = 640.0, 480.0
    passes = []
    for _ in range(3):  # three passes that see the same 12 objects, jittered, with missed ones and extra ones
        centres = torch.rand(12, 2, generator=generator) * torch.tensor([width - 80, height - 80]) + 40
        sides = 20 + torch.rand(12, 2, generator=generator) * 30
        boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=1)
        boxes = boxes[torch.rand(12, generator=generator) > 0.2]
        passes.append((boxes, torch.rand(len(boxes), generator=generator) * 0.9 + 0.05, torch.randint(1, 3, (len(boxes),), generator=generator)))
    scale = torch.tensor([width, height, width, height])
    expected_boxes, expected_scores, expected_labels = ensemble_boxes.weighted_boxes_fusion(
        [(b / scale).tolist() for b, _, _ in passes], [s.tolist() for _, s, _ in passes], [l.tolist() for _, _, l in passes],
        iou_thr=0.55, skip_box_thr=0.0, conf_type="avg",
    )  # fmt: skip
    boxes, scores, labels = (torch.cat([p[k] for p in passes]) for k in range(3))
    fused, fused_scores, fused_labels = weighted_box_fusion(boxes, scores, labels, passes=3, threshold=0.55)
    assert len(fused) == len(expected_boxes) < len(boxes)
    order = torch.argsort(torch.as_tensor(expected_scores, dtype=torch.float32), descending=True, stable=True)
    assert fused_scores.tolist() == pytest.approx(torch.as_tensor(expected_scores)[order].tolist(), abs=1e-5)
    assert fused_labels.tolist() == torch.as_tensor(expected_labels)[order].long().tolist()
    assert (fused / scale).tolist()[0] == pytest.approx(expected_boxes[order[0]].tolist(), abs=1e-5)
    for got, want in zip((fused / scale).tolist(), torch.as_tensor(expected_boxes)[order].tolist()):
        assert got == pytest.approx(want, abs=1e-5)
