import sys

import numpy as np
import pytest
import torch

from fasterrcnn.ops import batched_nms, box_iou, nms

nms_module = sys.modules["fasterrcnn.ops.nms"]


def reference_nms(boxes, scores, threshold):
    """The definition: stable sort by score, keep a box unless IoU > threshold with a kept box."""
    order = torch.sort(scores, descending=True, stable=True).indices
    over = (box_iou(boxes, boxes).double() > threshold).numpy()  # exact comparison with the (double) threshold
    suppressed = np.zeros(len(boxes), dtype=bool)
    keep = []
    for i in order.tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= over[i]
    return torch.tensor(keep, dtype=torch.int64)


def reference_batched_nms(boxes, scores, idxs, threshold):
    kept = [torch.nonzero(idxs == c).flatten()[reference_nms(boxes[idxs == c], scores[idxs == c], threshold)]
            for c in torch.unique(idxs)]
    kept = torch.sort(torch.cat(kept)).values  # by input index, then stably by decreasing score
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def random_case(n, seed, image=300.0, tie_levels=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * image
    wh = torch.rand(n, 2, generator=g) * 60 + 1
    boxes = torch.cat((xy, xy + wh), dim=1).to(dtype)
    scores = torch.rand(n, generator=g)
    if tie_levels is not None:
        scores = torch.floor(scores * tie_levels) / tie_levels  # many equal scores
    return boxes, scores


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 100, 700])
def test_nms_equals_reference_loop(n, seed, threshold):
    boxes, scores = random_case(n, seed, tie_levels=10 if seed == 1 else None)
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, reference_nms(boxes, scores, threshold))


def test_nms_large_dense_case_equals_reference():
    boxes, scores = random_case(3000, 5, image=400.0, tie_levels=50)
    assert torch.equal(nms(boxes, scores, 0.5), reference_nms(boxes, scores, 0.5))


def test_nms_dense_fallback_equals_reference(monkeypatch):
    # Force the blocked dense path (used for heavily clustered boxes) on ordinary cases.
    monkeypatch.setattr(nms_module, "_PAIRS_FLOOR", 0)
    monkeypatch.setattr(nms_module, "_PAIRS_PER_BOX", 0)
    monkeypatch.setattr(nms_module, "_BLOCK", 64)
    for seed, n in ((0, 300), (3, 130)):
        boxes, scores = random_case(n, seed, image=150.0, tie_levels=20)
        idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
        for threshold in (0.2, 0.5, 0.8):
            assert torch.equal(nms(boxes, scores, threshold), reference_nms(boxes, scores, threshold))
            assert torch.equal(batched_nms(boxes, scores, idxs, threshold),
                               reference_batched_nms(boxes, scores, idxs, threshold))


def test_nms_in_small_chunks_equals_reference(monkeypatch):
    monkeypatch.setattr(nms_module, "_CHUNK_PAIRS", {"cpu": 97})  # candidate pairs are expanded in many chunks
    boxes, scores = random_case(400, 9, image=120.0)
    idxs = torch.randint(0, 2, (400,), generator=torch.Generator().manual_seed(9))
    assert torch.equal(nms(boxes, scores, 0.4), reference_nms(boxes, scores, 0.4))
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.4), reference_batched_nms(boxes, scores, idxs, 0.4))


def test_nms_clustered_boxes_equal_reference():
    # Jittered copies of a few boxes: long suppression chains and many candidate pairs.
    g = torch.Generator().manual_seed(7)
    centres = torch.tensor([[50.0, 50.0, 150.0, 120.0], [400.0, 10.0, 420.0, 300.0], [0.0, 0.0, 500.0, 500.0]])
    boxes = centres.repeat(400, 1) + torch.randn(1200, 4, generator=g) * 4
    scores = torch.rand(1200, generator=g)
    for threshold in (0.5, 0.7, 0.9):
        assert torch.equal(nms(boxes, scores, threshold), reference_nms(boxes, scores, threshold))


def test_nms_chain_of_shifted_boxes():
    # Each box overlaps the next with IoU 0.6 and the one after with IoU < 0.5: greedy alternates.
    n = 60
    x = torch.arange(n, dtype=torch.float32) * 25.0
    boxes = torch.stack((x, torch.zeros(n), x + 100.0, torch.full((n,), 10.0)), dim=1)
    scores = torch.linspace(1.0, 0.1, n)
    keep = nms(boxes, scores, 0.5)
    assert torch.equal(keep, reference_nms(boxes, scores, 0.5))
    assert torch.equal(keep, torch.arange(0, n, 2))  # IoU(i, i+1) = 75/125 > 0.5, IoU(i, i+2) = 50/150


def boundary_box(threshold, offset):
    """A box [d, 0, 100 + d, 100] whose IoU with [0, 0, 100, 100] is (100 - d) / (100 + d) ~ threshold + offset."""
    target = threshold + offset
    d = 100.0 * (1.0 - target) / (1.0 + target)
    return torch.tensor([d, 0.0, 100.0 + d, 100.0], dtype=torch.float64).float()


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_threshold_boundary(threshold):
    top = torch.tensor([0.0, 0.0, 100.0, 100.0])
    above = boundary_box(threshold, 1e-5)
    below = boundary_box(threshold, -1e-5)
    iou_above = box_iou(top[None], above[None]).item()
    iou_below = box_iou(top[None], below[None]).item()
    assert iou_above > threshold and iou_below <= threshold  # computed float32 IoU on the intended side
    boxes = torch.stack((below, top, above))
    scores = torch.tensor([0.5, 0.9, 0.6])
    assert torch.equal(nms(boxes, scores, threshold), torch.tensor([1, 0]))  # `above` suppressed, `below` kept


def test_nms_iou_exactly_at_threshold_is_kept():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 1.0], [0.0, 0.0, 2.0, 1.0]])  # IoU exactly 0.5
    assert torch.equal(nms(boxes, torch.tensor([0.9, 0.8]), 0.5), torch.tensor([0, 1]))
    assert torch.equal(nms(boxes, torch.tensor([0.9, 0.8]), 0.4999), torch.tensor([0]))


def test_nms_ties_keep_input_order():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                          [0.0, 0.0, 10.0, 10.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    assert torch.equal(nms(boxes, scores, 0.5), torch.tensor([3, 2]))
    scores = torch.tensor([0.5, 0.5, 0.5, 0.1])
    assert torch.equal(nms(boxes, scores, 0.5), torch.tensor([0, 2]))


def test_nms_degenerate_boxes_and_extreme_thresholds():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 5.0, 5.0], [5.0, 5.0, 5.0, 5.0],
                          [1.0, 1.0, 10.0, 10.0], [9.0, 9.0, 2.0, 2.0], [100.0, 100.0, 110.0, 110.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    for threshold in (0.0, 0.5):
        assert torch.equal(nms(boxes, scores, threshold), reference_nms(boxes, scores, threshold))
    assert torch.equal(nms(boxes, scores, 0.0), torch.tensor([0, 1, 2, 4, 5]))
    assert torch.equal(nms(boxes, scores, 1.0), torch.arange(6))  # IoU is never > 1
    assert torch.equal(nms(boxes, scores, -0.1), torch.tensor([0]))  # every IoU >= 0 > threshold


def test_nms_dtypes():
    boxes, scores = random_case(300, 11, image=200.0)
    expected = reference_nms(boxes.double(), scores, 0.5)
    assert torch.equal(nms(boxes.double(), scores.double(), 0.5), expected)
    for dtype in (torch.float16, torch.bfloat16):
        low = boxes.to(dtype)
        # compared in float32, on the rounded coordinates
        assert torch.equal(nms(low, scores.to(dtype), 0.5), reference_nms(low.float(), scores.to(dtype), 0.5))


def test_nms_does_not_modify_inputs():
    boxes, scores = random_case(200, 12)
    idxs = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(0))
    copies = (boxes.clone(), scores.clone(), idxs.clone())
    nms(boxes, scores, 0.5)
    batched_nms(boxes, scores, idxs, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(copies, (boxes, scores, idxs)))


def test_nms_empty_input():
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    keep = batched_nms(torch.empty(0), None, None, None)  # torchvision's empty call (1-D boxes, nothing else)
    assert keep.shape == (0,) and keep.dtype == torch.int64
    with pytest.raises(ValueError):  # boxes with elements are still checked
        batched_nms(torch.zeros(1, 4), None, None, 0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_batched_nms_equals_per_class_nms(seed, threshold):
    boxes, scores = random_case(600, seed, image=150.0, tie_levels=30 if seed == 2 else None)
    idxs = torch.randint(0, 5, (600,), generator=torch.Generator().manual_seed(seed)) * 1000 - 2000
    keep = batched_nms(boxes, scores, idxs, threshold)
    assert torch.equal(keep, reference_batched_nms(boxes, scores, idxs, threshold))
    assert torch.equal(batched_nms(boxes, scores, torch.zeros_like(idxs), threshold), nms(boxes, scores, threshold))


def test_batched_nms_identical_boxes_in_different_classes_all_kept():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4)
    scores = torch.tensor([0.1, 0.4, 0.3, 0.2])
    idxs = torch.tensor([0, 1, 1, 2])
    assert torch.equal(batched_nms(boxes, scores, idxs, 0.5), torch.tensor([1, 3, 0]))
    assert torch.equal(batched_nms(boxes, scores, idxs, -1.0), torch.tensor([1, 3, 0]))


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match="boxes"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(4, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="integer"):
        batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5)


def test_nms_integer_boxes_compared_in_float32():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([0.5, 0.9, 0.1])
    assert torch.equal(nms(boxes, scores, 0.5), torch.tensor([1, 2]))
