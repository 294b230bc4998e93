"""RPN: head layout, anchor targets on hand-built IoU cases, sampling, losses, proposals."""

import math
from collections import OrderedDict

import torch

from fasterrcnn.modeling.anchors import AnchorGenerator
from fasterrcnn.modeling.matching import IGNORE, NEGATIVE, POSITIVE
from fasterrcnn.modeling.rpn import RegionProposalNetwork, RPNHead, flatten_head_outputs
from fasterrcnn.modeling.transform import ImageList

NEG, POS, IGN = NEGATIVE, POSITIVE, IGNORE


def make_rpn(**kw):
    args = dict(
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n=dict(training=100, testing=50),
        post_nms_top_n=dict(training=20, testing=10),
        nms_thresh=0.7,
    )
    args.update(kw)
    return RegionProposalNetwork(AnchorGenerator(((16.0,),), ((1.0,),)), RPNHead(4, 1), **args)


ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with GT 0: positive
        [0.0, 0.0, 10.0, 8.0],  # IoU 0.8: positive
        [0.0, 0.0, 10.0, 6.0],  # IoU 0.6: between thresholds, ignored
        [0.0, 0.0, 10.0, 2.0],  # IoU 0.2: negative
        [50.0, 50.0, 60.0, 60.0],  # IoU 0: negative
        [-2.0, 0.0, 10.0, 10.0],  # IoU 0.833 but crosses the left border
        [30.0, 30.0, 40.0, 36.0],  # IoU 0.5 with GT 1, its best anchor: positive
    ]
)
GT = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 42.0]])


def test_head_names_and_output_layout():
    head = RPNHead(8, 3)
    assert list(head.state_dict()) == ["conv.0.0.weight", "conv.0.0.bias", "cls_logits.weight", "cls_logits.bias", "bbox_pred.weight", "bbox_pred.bias"]
    logits = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)  # [N, A, H, W]
    deltas = torch.arange(2 * 12 * 2 * 2, dtype=torch.float32).view(2, 12, 2, 2)  # [N, 4A, H, W]
    obj, d = flatten_head_outputs([logits], [deltas])
    assert obj.shape == (2, 12) and d.shape == (2, 12, 4)
    assert obj[0, :3].tolist() == [0.0, 4.0, 8.0]  # location (0, 0), anchors 0..2
    assert obj[0, 3] == 1.0  # location (0, 1), anchor 0
    assert d[0, 1].tolist() == [16.0, 20.0, 24.0, 28.0]  # location (0, 0), anchor 1: channels 4..7


def test_anchor_labels_exact():
    labels, matches, _ = make_rpn().assign_targets(ANCHORS, [GT], [(64, 64)])
    assert labels.tolist() == [[POS, POS, IGN, NEG, NEG, POS, POS]]
    assert matches[0, [0, 1, 5, 6]].tolist() == [0, 0, 0, 1]


def test_cross_boundary_anchors_ignored_when_asked():
    labels, _, _ = make_rpn(ignore_cross_boundary=True).assign_targets(ANCHORS, [GT], [(64, 64)])
    assert labels.tolist() == [[POS, POS, IGN, NEG, NEG, IGN, POS]]
    # anchors beyond the (unpadded) image size are ignored too
    labels, _, _ = make_rpn(ignore_cross_boundary=True).assign_targets(ANCHORS, [GT], [(64, 55)])
    assert labels.tolist() == [[POS, POS, IGN, NEG, IGN, IGN, POS]]


def test_no_anchor_inside_the_images_gives_zero_losses_not_nan():
    """With the paper's border flag an image smaller than every anchor (or a thin strip, e.g. 60x1000)
    has no anchor to sample: both RPN losses are exactly 0 and backward gives zero gradients."""
    rpn = make_rpn(ignore_cross_boundary=True)
    rpn.generator = torch.Generator().manual_seed(0)
    objectness = torch.zeros(2, 7, requires_grad=True)
    deltas = torch.zeros(2, 7, 4, requires_grad=True)
    losses = rpn.compute_loss(objectness, deltas, ANCHORS, [{"boxes": GT}, {"boxes": torch.zeros(0, 4)}], [(8, 8), (8, 8)])
    assert losses["loss_objectness"].item() == 0.0 and losses["loss_rpn_box_reg"].item() == 0.0
    sum(losses.values()).backward()
    assert not objectness.grad.any() and not deltas.grad.any()


def test_image_without_gt_all_negative():
    labels, _, _ = make_rpn().assign_targets(ANCHORS, [GT, torch.zeros(0, 4)], [(64, 64), (64, 64)])
    assert labels[1].tolist() == [NEG] * 7
    assert labels[0].tolist() == [POS, POS, IGN, NEG, NEG, POS, POS]


def test_losses_exact_on_hand_case():
    rpn = make_rpn(ignore_cross_boundary=True)
    rpn.generator = torch.Generator().manual_seed(0)
    objectness = torch.zeros(1, 7, requires_grad=True)
    deltas = torch.zeros(1, 7, 4, requires_grad=True)
    losses = rpn.compute_loss(objectness, deltas, ANCHORS, [{"boxes": GT}], [(64, 64)])
    assert math.isclose(losses["loss_objectness"].detach().item(), math.log(2.0), rel_tol=1e-6)
    # positives 0, 1, 6 (5 sampled anchors in all); targets (dx, dy, dw, dh):
    # anchor 0: (0, 0, 0, 0); anchor 1: (0, 1/8, 0, log(10/8)); anchor 6: (0, 3/6, 0, log(12/6))
    beta = 1 / 9

    def sl1(x):
        return 0.5 * x * x / beta if abs(x) < beta else abs(x) - 0.5 * beta

    expected = (sl1(1 / 8) + sl1(math.log(10 / 8)) + sl1(0.5) + sl1(math.log(2.0))) / 5
    assert math.isclose(losses["loss_rpn_box_reg"].detach().item(), expected, rel_tol=1e-5)
    sum(losses.values()).backward()
    assert objectness.grad[0, 5] == 0 and objectness.grad[0, 2] == 0  # ignored anchors get no gradient


def test_sampling_limits_and_determinism():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 10 + [[50.0, 50.0, 60.0, 60.0]] * 10)
    rpn = make_rpn(batch_size_per_image=8, positive_fraction=0.25)
    from fasterrcnn.modeling.matching import sample_labels

    labels, _, _ = rpn.assign_targets(anchors, [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], [(64, 64)])
    assert labels.tolist() == [[POS] * 10 + [NEG] * 10]
    pos, neg = sample_labels(labels, 8, 0.25, torch.Generator().manual_seed(5))
    pos2, neg2 = sample_labels(labels, 8, 0.25, torch.Generator().manual_seed(5))
    assert int(pos.sum()) == 2 and int(neg.sum()) == 6
    assert bool(pos[0, :10].sum() == 2) and bool(neg[0, 10:].sum() == 6)
    assert torch.equal(pos, pos2) and torch.equal(neg, neg2)


def test_empty_gt_loss_box_exactly_zero():
    rpn = make_rpn()
    losses = rpn.compute_loss(torch.randn(1, 7), torch.randn(1, 7, 4), ANCHORS, [{"boxes": torch.zeros(0, 4)}], [(64, 64)])
    assert float(losses["loss_rpn_box_reg"]) == 0.0
    assert math.isfinite(float(losses["loss_objectness"])) and float(losses["loss_objectness"]) > 0


def test_proposals_top_n_clip_nms_per_image():
    torch.manual_seed(0)
    rpn = make_rpn().eval()
    images = ImageList(torch.zeros(2, 3, 64, 64), [(64, 64), (40, 30)])
    features = OrderedDict([("0", torch.randn(2, 4, 4, 4))])
    proposals, losses = rpn(images, features)
    assert losses == {}
    assert len(proposals) == 2 and all(len(p) <= 10 for p in proposals) and len(proposals[0]) > 0
    for p, (h, w) in zip(proposals, images.image_sizes):
        assert bool((p[:, 0] >= 0).all() and (p[:, 2] <= w).all() and (p[:, 1] >= 0).all() and (p[:, 3] <= h).all())


def test_proposals_match_a_per_level_reference():
    # Two levels: per-level top-N, NMS within a level only, best objectness first.
    rpn = RegionProposalNetwork(
        AnchorGenerator(((16.0,), (32.0,)), ((1.0,), (1.0,))),
        RPNHead(4, 1),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_top_n=dict(training=2, testing=2),
        post_nms_top_n=dict(training=3, testing=3),
        nms_thresh=0.7,
    ).eval()
    anchors = torch.cat(rpn.anchor_generator((32, 32), [(2, 2), (1, 1)]))  # 4 + 1 anchors
    objectness = torch.tensor([[0.0, 3.0, 2.0, 1.0, -1.0]])
    deltas = torch.zeros(1, 5, 4)
    out = rpn.filter_proposals(objectness, deltas, anchors, [4, 1], [(32, 32)])
    # level 0 keeps anchors 1 and 2 (top 2), level 1 its only anchor; sorted by score; clipped to 32 x 32
    expected = torch.tensor([[8.0, 0.0, 24.0, 8.0], [0.0, 8.0, 8.0, 24.0], [0.0, 0.0, 16.0, 16.0]])
    assert torch.equal(out[0], expected)
