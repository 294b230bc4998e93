"""RoI heads: proposal targets on hand-built IoU cases, losses, post-processing."""

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from fasterrcnn import ops
from fasterrcnn.modeling.roi_heads import FastRCNNPredictor, RoIHeads, SingleLevelRoIPool, fastrcnn_loss


class FlattenHead(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def make_heads(num_classes=2, **kw):
    args = dict(
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        bg_iou_low=0.1,
        batch_size_per_image=128,
        positive_fraction=0.25,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_img=100,
    )
    args.update(kw)
    pool = SingleLevelRoIPool("0", ops.RoIAlign(2, 1.0, 2))
    return RoIHeads(pool, FlattenHead(), FastRCNNPredictor(4, num_classes + 1), **args)


GT = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2])}
PROPOSALS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 8.0],  # IoU 0.8: foreground
        [0.0, 0.0, 10.0, 4.0],  # IoU 0.4: background
        [0.0, 0.0, 10.0, 0.5],  # IoU 0.05: below bg_low 0.1
        [50.0, 50.0, 60.0, 60.0],  # IoU 0: below bg_low 0.1
    ]
)


def test_predictor_names_and_shapes():
    p = FastRCNNPredictor(16, 21)
    assert list(p.state_dict()) == ["cls_score.weight", "cls_score.bias", "bbox_pred.weight", "bbox_pred.bias"]
    scores, deltas = p(torch.randn(5, 16, 1, 1))
    assert scores.shape == (5, 21) and deltas.shape == (5, 84)


def test_proposal_targets_paper_bg_low():
    heads = make_heads()
    heads.generator = torch.Generator().manual_seed(0)
    rois, labels, targets = heads.select_training_samples([PROPOSALS], [GT])
    # proposals 0 (fg) and 1 (bg) and the appended GT box (fg); 2 and 3 are ignored
    assert torch.equal(rois[0], torch.tensor([[0.0, 0.0, 10.0, 8.0], [0.0, 0.0, 10.0, 4.0], [0.0, 0.0, 10.0, 10.0]]))
    assert labels.tolist() == [2, 0, 2]
    assert torch.allclose(targets, torch.tensor([[0.0, 10 * 1 / 8, 0.0, 5 * math.log(10 / 8)], [0.0, 0.0, 0.0, 0.0]]))


def test_proposal_targets_torchvision_bg_low_zero():
    heads = make_heads(bg_iou_low=0.0)
    heads.generator = torch.Generator().manual_seed(0)
    rois, labels, _ = heads.select_training_samples([PROPOSALS], [GT])
    assert labels.tolist() == [2, 0, 0, 0, 2]
    assert len(rois[0]) == 5


def test_proposal_targets_sampling_limits_deterministic():
    proposals = torch.cat([torch.tensor([[0.0, 0.0, 10.0, 9.0]]).repeat(10, 1), torch.tensor([[0.0, 0.0, 10.0, 3.0]]).repeat(10, 1)])
    out = []
    for _ in range(2):
        heads = make_heads(batch_size_per_image=8, positive_fraction=0.25)
        heads.generator = torch.Generator().manual_seed(3)
        out.append(heads.select_training_samples([proposals], [GT]))
    (rois, labels, targets), (rois2, labels2, _) = out
    assert labels.tolist().count(2) == 2 and labels.tolist().count(0) == 6
    assert targets.shape == (2, 4)
    assert torch.equal(rois[0], rois2[0]) and torch.equal(labels, labels2)


def test_image_without_gt_all_background_and_batch():
    heads = make_heads()
    heads.generator = torch.Generator().manual_seed(0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    rois, labels, targets = heads.select_training_samples([PROPOSALS[:2], PROPOSALS], [GT, empty])
    assert [len(r) for r in rois] == [3, 4]
    assert labels.tolist() == [2, 0, 2, 0, 0, 0, 0]  # the empty image: every proposal is background
    assert targets.shape == (2, 4)


def test_losses_empty_gt():
    logits = torch.randn(4, 3)
    loss_cls, loss_box = fastrcnn_loss(logits, torch.randn(4, 12), torch.zeros(4, dtype=torch.int64), torch.zeros(0, 4), 1.0)
    assert float(loss_box) == 0.0
    assert math.isfinite(float(loss_cls)) and float(loss_cls) > 0


def test_loss_uses_the_class_specific_deltas():
    logits = torch.zeros(2, 3)
    deltas = torch.zeros(2, 12)
    deltas[0, 8:12] = torch.tensor([1.0, 0.0, 0.0, 2.0])  # RoI 0, class 2
    deltas[0, 4:8] = 100.0  # class 1: not its class, ignored
    loss_cls, loss_box = fastrcnn_loss(logits, deltas, torch.tensor([2, 0]), torch.zeros(1, 4), 1.0)
    assert math.isclose(float(loss_cls), math.log(3.0), rel_tol=1e-6)
    assert math.isclose(float(loss_box), (0.5 + 1.5) / 2, rel_tol=1e-6)


def test_postprocess_keeps_the_detections_per_img_best():
    heads = make_heads().eval()
    x = torch.arange(150, dtype=torch.float32) * 20  # 150 disjoint boxes, no NMS between them
    proposals = [torch.stack([x, torch.zeros(150), x + 10, torch.full((150,), 10.0)], dim=1)]
    logits = torch.zeros(150, 3)
    logits[:, 1] = torch.linspace(1.0, 4.0, 150)  # class 1 scores rise with the box index
    dets = heads.postprocess_detections(logits, torch.zeros(150, 12), proposals, [(10, 3000)])[0]
    assert len(dets["boxes"]) == 100
    assert torch.equal(dets["boxes"], proposals[0].flip(0)[:100])  # the 100 best, by decreasing score
    assert torch.equal(dets["labels"], torch.ones(100, dtype=torch.int64))


def test_loss_of_no_sampled_roi_is_zero_not_nan():
    logits = torch.zeros(0, 3, requires_grad=True)
    deltas = torch.zeros(0, 12, requires_grad=True)
    loss_cls, loss_box = fastrcnn_loss(logits, deltas, torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), 1.0)
    assert loss_cls.item() == 0.0 and loss_box.item() == 0.0
    (loss_cls + loss_box).backward()
    assert logits.grad.shape == (0, 3) and deltas.grad.shape == (0, 12)


def test_postprocess_softmax_decode_clip_nms_order():
    heads = make_heads().eval()
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]]), torch.tensor([[5.0, 5.0, 30.0, 30.0]])]
    logits = torch.tensor([[0.0, 5.0, -5.0], [0.0, 4.0, -5.0], [0.0, -5.0, 3.0]])
    deltas = torch.zeros(3, 12)
    dets = heads.postprocess_detections(logits, deltas, proposals, [(50, 50), (20, 25)])
    p = torch.softmax(logits, -1)
    # image 0: the second class-1 box (IoU 0.68 with the first) is suppressed; class 2 is below 0.05
    assert torch.equal(dets[0]["boxes"], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert dets[0]["labels"].tolist() == [1]
    assert torch.allclose(dets[0]["scores"], p[0, 1:2])
    # image 1: clipped to its 20 x 25 size; class 2 kept, class 1 (0.0003) dropped
    assert torch.equal(dets[1]["boxes"], torch.tensor([[5.0, 5.0, 25.0, 20.0]]))
    assert dets[1]["labels"].tolist() == [2]


def test_forward_train_and_eval():
    torch.manual_seed(0)
    heads = make_heads()
    features = OrderedDict([("0", torch.randn(1, 1, 16, 16))])
    losses = heads(features, [PROPOSALS], [(16, 16)], [GT])[1]
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    heads.eval()
    dets, losses = heads(features, [PROPOSALS], [(16, 16)])
    assert losses == {} and len(dets) == 1 and set(dets[0]) == {"boxes", "labels", "scores"}


def _disjoint_rois(count: int) -> list[Tensor]:
    """``count`` disjoint 10 x 10 proposals in a row (no NMS between them; zero deltas keep them as the boxes)."""
    x = torch.arange(count, dtype=torch.float32) * 20
    return [torch.stack([x, torch.zeros(count), x + 10, torch.full((count,), 10.0)], dim=1)]


def test_postprocess_probabilities_are_each_detections_roi_row():
    torch.manual_seed(0)
    heads = make_heads(num_classes=3, nms_thresh=1.0, detections_per_img=25).eval()  # NMS 1.0: nothing suppressed
    proposals = _disjoint_rois(30)
    logits = torch.randn(30, 4) * 2  # several classes of a RoI pass the 0.05 threshold
    plain = heads.postprocess_detections(logits, torch.zeros(30, 16), proposals, [(10, 600)])[0]
    with heads.keeping_probabilities():
        dets = heads.postprocess_detections(logits, torch.zeros(30, 16), proposals, [(10, 600)])[0]
    assert set(plain) == {"boxes", "labels", "scores"} and not heads.class_probabilities  # off by default and after
    for key in plain:  # asking for the probabilities changes nothing else
        assert torch.equal(dets[key], plain[key])
    assert len(dets["scores"]) == 25  # top-K cut (more candidates pass the threshold)
    rows, labels = dets["probabilities"], dets["labels"]
    roi = (dets["boxes"][:, 0] / 20).long()  # the RoI of each detection (its box is its proposal)
    assert torch.equal(rows, torch.softmax(logits, -1)[roi])
    assert torch.allclose(rows.sum(1), torch.ones(25))
    assert torch.equal(rows[torch.arange(25), labels], dets["scores"])
    # Before per-class NMS a RoI gives one candidate per class above the threshold; its best-scoring
    # detection is its foreground argmax (the others are its runner-up classes).
    best = {}
    for d, r in enumerate(roi.tolist()):
        best.setdefault(r, d)  # detections come by decreasing score
    for r, d in best.items():
        assert int(labels[d]) == int(rows[d, 1:].argmax()) + 1


def test_postprocess_probabilities_argmax_is_the_label_above_one_half():
    # A threshold >= 0.5 lets at most one class of a RoI through: the label is the argmax of the whole row.
    torch.manual_seed(1)
    heads = make_heads(num_classes=3, score_thresh=0.5).eval()
    logits = torch.randn(40, 4) * 3
    with heads.keeping_probabilities():
        dets = heads.postprocess_detections(logits, torch.zeros(40, 16), _disjoint_rois(40), [(10, 800)])[0]
    assert len(dets["labels"]) > 5
    assert torch.equal(dets["probabilities"].argmax(1), dets["labels"])


def test_postprocess_temperature_divides_the_logits():
    logits = torch.tensor([[0.0, 4.0, 1.0], [1.0, 0.0, 3.0]])
    heads = make_heads(temperature=2.0).eval()
    with heads.keeping_probabilities():
        dets = heads.postprocess_detections(logits, torch.zeros(2, 12), _disjoint_rois(2), [(10, 100)])[0]
    expected = torch.softmax(logits / 2.0, -1)
    roi = (dets["boxes"][:, 0] / 20).long()
    assert torch.allclose(dets["probabilities"], expected[roi])
    assert torch.allclose(dets["scores"], expected[roi, dets["labels"]])


def test_postprocess_score_map_changes_the_scores_not_the_detections():
    logits = torch.randn(40, 4, generator=torch.Generator().manual_seed(0)) * 3
    heads = make_heads().eval()
    with heads.keeping_probabilities():
        plain = heads.postprocess_detections(logits, torch.zeros(40, 16), _disjoint_rois(40), [(10, 800)])[0]
        heads.score_map = (0.5, -1.0)
        mapped = heads.postprocess_detections(logits, torch.zeros(40, 16), _disjoint_rois(40), [(10, 800)])[0]
    assert len(plain["scores"]) > 5 and torch.equal(plain["boxes"], mapped["boxes"]) and torch.equal(plain["labels"], mapped["labels"])
    assert torch.allclose(mapped["scores"], torch.sigmoid(0.5 * torch.logit(plain["scores"].double()) - 1.0).float())
    assert torch.equal(mapped["probabilities"], plain["probabilities"])  # the class distribution stays the softmax's
