"""The composed detector: presets, train/eval on mixed sizes, empty GT, save/load, input checks, overfitting."""

import io
import math

import pytest
import torch
import torchvision_reference as reference

from fasterrcnn import ops
from fasterrcnn.config import PRESETS, get_preset
from fasterrcnn.modeling.faster_rcnn import FasterRCNN


pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny model is faster single-threaded on a shared 2-core machine


def tiny(**overrides):
    torch.manual_seed(0)
    return FasterRCNN.from_preset("tiny", num_classes=3, **overrides)


def target(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels, dtype=torch.int64)}


def draw_shapes(size, objects):
    """A grey image with filled shapes: 1 square, 2 disc, 3 triangle (apex up), in a box (x1, y1, x2, y2)."""
    h, w = size
    image = torch.full((3, h, w), 0.5)
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    for kind, (x1, y1, x2, y2), colour in objects:
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2
        if kind == 1:
            mask = (xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)
        elif kind == 2:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        else:
            mask = (ys >= y1) & (ys < y2) & ((xs - cx).abs() <= (ys - y1) / (y2 - y1) * r)
        image[:, mask] = torch.tensor(colour, dtype=torch.float32)[:, None]
    return image, target([o[1] for o in objects], [o[0] for o in objects])


def test_presets_exist_and_paper_values():
    assert {"vgg16", "resnet50_c4", "resnet101_c4", "tiny"} <= set(PRESETS)
    cfg = get_preset("vgg16").model
    assert (cfg.pixel_format, cfg.min_size, cfg.max_size, cfg.size_divisible) == ("caffe_bgr255", 600, 1000, 16)
    assert (cfg.rpn_pre_nms_top_n_train, cfg.rpn_post_nms_top_n_train, cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test) == (12000, 2000, 6000, 300)
    assert cfg.rpn_ignore_cross_boundary and cfg.box_pooler == "roi_pool" and cfg.box_bg_iou_low == 0.1
    assert (cfg.box_batch_size_per_image, cfg.box_positive_fraction, cfg.box_nms_thresh, cfg.rpn_min_size) == (128, 0.25, 0.3, 16.0)
    train = get_preset("vgg16").train
    assert (train.lr, train.momentum, train.weight_decay) == (0.001, 0.9, 0.0005)


def test_the_paper_preset_builds_the_papers_model():
    """Every value the paper fixes, read off the built vgg16 model (not only its config)."""
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("vgg16", num_classes=20)
    rpn, heads = model.rpn, model.roi_heads
    assert (rpn.anchor_generator.sizes, rpn.anchor_generator.aspect_ratios) == (((128.0, 256.0, 512.0),), ((0.5, 1.0, 2.0),))
    assert rpn.head.cls_logits.out_channels == 9 and rpn.head.bbox_pred.out_channels == 36
    matcher = rpn.proposal_matcher
    assert (matcher.high_threshold, matcher.low_threshold, matcher.allow_low_quality_matches) == (0.7, 0.3, True)
    assert (rpn.batch_size_per_image, rpn.positive_fraction, rpn.nms_thresh, rpn.ignore_cross_boundary) == (256, 0.5, 0.7, True)
    assert rpn.smooth_l1_beta == 1 / 9 and rpn.box_coder.weights == (1.0, 1.0, 1.0, 1.0)
    assert (heads.proposal_matcher.high_threshold, heads.bg_iou_low) == (0.5, 0.1)
    assert (heads.batch_size_per_image, heads.positive_fraction, heads.box_coder.weights) == (128, 0.25, (10.0, 10.0, 5.0, 5.0))
    assert (heads.score_thresh, heads.nms_thresh, heads.detections_per_img, heads.smooth_l1_beta) == (0.05, 0.3, 100, 1.0)
    pooler = heads.box_roi_pool.pooler
    assert type(pooler).__name__ == "RoIPool" and (pooler.output_size, pooler.spatial_scale) == ((7, 7), 1 / 16)
    fc6, fc7 = heads.box_head.fc6, heads.box_head.fc7
    assert (fc6.in_features, fc6.out_features, fc7.out_features) == (512 * 7 * 7, 4096, 4096)
    assert (heads.box_predictor.cls_score.out_features, heads.box_predictor.bbox_pred.out_features) == (21, 84)
    frozen = sorted({name.rsplit(".", 1)[0] for name, p in model.backbone.named_parameters() if not p.requires_grad})
    assert frozen == ["features.0", "features.2", "features.5", "features.7"]  # conv1_1 .. conv2_2
    assert (model.transform.min_size, model.transform.max_size) == (600, 1000)


def test_submodule_names_follow_torchvision():
    keys = list(tiny().state_dict())
    for k in ["rpn.head.conv.0.0.weight", "rpn.head.cls_logits.weight", "rpn.head.bbox_pred.bias", "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.bbox_pred.bias"]:
        assert k in keys
    assert all(k.split(".")[0] in {"backbone", "rpn", "roi_heads"} for k in keys)
    model = tiny()
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 foreground classes + background
    assert model.config.num_classes == 3


def test_train_and_eval_batch_of_different_sizes():
    model = tiny()
    images = [torch.rand(3, 200, 260), torch.rand(3, 150, 120), torch.rand(3, 300, 310)]
    originals = [img.clone() for img in images]
    targets = [target([[10, 20, 90, 100], [100, 50, 200, 140]], [1, 2]), target([[5, 5, 60, 70]], [3]), target([[40, 40, 300, 290]], [2])]
    original_targets = [{k: v.clone() for k, v in t.items()} for t in targets]
    model.train()
    losses = model(images, targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(v.dim() == 0 and math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    assert model.rpn.head.cls_logits.weight.grad is not None and model.roi_heads.box_predictor.bbox_pred.weight.grad is not None
    model.eval()
    with torch.no_grad():
        dets = model(images)
    assert len(dets) == 3
    for det, img in zip(dets, images):
        h, w = img.shape[-2:]
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["labels"]) == len(det["scores"]) > 0
        assert bool((det["boxes"][:, 0] >= 0).all() and (det["boxes"][:, 1] >= 0).all())
        assert bool((det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all())
        assert bool(((det["labels"] >= 1) & (det["labels"] <= 3)).all())
        assert bool((det["scores"][:-1] >= det["scores"][1:]).all())
    assert all(torch.equal(a, b) for a, b in zip(images, originals))  # inputs are never modified in place
    for t, o in zip(targets, original_targets):
        assert t.keys() == o.keys() and all(torch.equal(t[k], o[k]) for k in o)


@pytest.mark.parametrize("preset", ["tiny", "vgg16"])  # vgg16: the paper's border flag on, RoIPool
def test_empty_gt_losses(preset):
    torch.manual_seed(0)
    model = FasterRCNN.from_preset(preset, num_classes=3, min_size=320, max_size=320).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = {k: v.detach() for k, v in model([torch.rand(3, 320, 320)], [empty], generator=torch.Generator().manual_seed(0)).items()}
    assert float(losses["loss_box_reg"]) == 0.0 and float(losses["loss_rpn_box_reg"]) == 0.0
    for k in ("loss_classifier", "loss_objectness"):
        assert math.isfinite(float(losses[k])) and float(losses[k]) > 0


def test_images_smaller_than_every_anchor_train_with_zero_rpn_losses():
    """vgg16 ignores border-crossing anchors in training: a 64x64 image (or a thin strip) has none to sample."""
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("vgg16", num_classes=3, min_size=64, max_size=64).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    losses = model(images, [target([[8, 8, 40, 40]], [1]), target([], [])], generator=torch.Generator().manual_seed(0))
    values = {k: v.item() for k, v in losses.items()}
    assert values["loss_objectness"] == 0.0 and values["loss_rpn_box_reg"] == 0.0
    assert all(math.isfinite(v) for v in values.values()) and values["loss_classifier"] > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_state_dict_round_trip_gives_identical_outputs():
    model = tiny().eval()
    images = [torch.rand(3, 120, 160)]
    with torch.no_grad():
        before = model(images)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(123)
    other = FasterRCNN.from_preset("tiny", num_classes=3).eval()
    other.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        after = other(images)
    for k in ("boxes", "labels", "scores"):
        assert torch.equal(before[0][k], after[0][k])


@pytest.mark.parametrize(
    "images, targets, message",
    [
        ([torch.rand(3, 32, 32)], None, r"training mode needs targets"),
        ([torch.rand(3, 32, 32), torch.rand(1, 32, 32)], [target([[1, 1, 5, 5]], [1])] * 2, "image 1"),
        ([torch.rand(3, 32, 32), torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8)], [target([[1, 1, 5, 5]], [1])] * 2, "image 1"),
        ([torch.rand(3, 32, 32), torch.full((3, 32, 32), float("nan"))], [target([[1, 1, 5, 5]], [1])] * 2, "image 1: contains non-finite"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), target([[1, 1, 5, 5]], [4])], "image 1: label 4"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), target([[1, 1, 5, 5]], [0])], "image 1: label 0"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), target([[5, 1, 5, 5]], [1])], "image 1: box 0"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), target([[1, 6, 5, 5]], [1])], "image 1: box 0"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), {"boxes": torch.tensor([[1, 1, 5, 5]]), "labels": torch.tensor([1])}], "image 1: boxes must be a float"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), {"boxes": torch.tensor([1.0, 1, 5, 5]), "labels": torch.tensor([1])}], "image 1: boxes must be a float"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), target([[1, 1, float("inf"), 5]], [1])], "image 1: boxes contain non-finite"),
        ([torch.rand(3, 32, 32)] * 2, [target([[1, 1, 5, 5]], [1]), {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "labels": torch.tensor([1.0])}], "image 1: labels"),
    ],
)
def test_input_checks_name_the_image(images, targets, message):
    model = tiny().train()
    with pytest.raises(ValueError, match=message):
        model(images, targets)


def test_overfits_a_few_generated_images():
    size = (160, 160)
    samples = [
        draw_shapes(size, [(1, (16, 20, 64, 68), (1.0, 0.0, 0.0)), (2, (90, 80, 150, 140), (0.0, 0.0, 1.0))]),
        draw_shapes(size, [(3, (40, 30, 120, 110), (0.0, 1.0, 0.0)), (1, (120, 120, 150, 150), (1.0, 1.0, 0.0))]),
    ]
    images, targets = [s[0] for s in samples], [s[1] for s in samples]
    model = tiny(min_size=160, max_size=160)
    model.generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    model.train()
    totals = []
    for it in range(300):  # "a few hundred iterations"
        for group in optimizer.param_groups:
            group["lr"] = 0.02 * min(1.0, (it + 1) / 20)
        losses = model(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    # The loss of a single step jumps with the sampled RoIs; the last 10 steps' mean does not.
    assert totals[0] > 1.0 and sum(totals[-10:]) / 10 < 0.2, totals[-10:]
    model.eval()
    with torch.no_grad():
        dets = model(images)
    for det, tgt in zip(dets, targets):
        keep = det["scores"] > 0.5
        boxes, labels = det["boxes"][keep], det["labels"][keep]
        assert len(boxes) == len(tgt["boxes"]), det
        iou = ops.box_iou(tgt["boxes"], boxes)  # [G, D]
        best = iou.argmax(dim=1)
        assert bool((iou.max(dim=1).values > 0.7).all()), iou
        assert torch.equal(labels[best], tgt["labels"])


@pytest.mark.parametrize("preset", ["mobilenet_v3_large_320_fpn", "mobilenet_v3_large_fpn", "resnet50_fpn"])
def test_same_detections_as_torchvision(preset):
    # torchvision 0.29.1's fasterrcnn_<preset> with seeded weights (tests/torchvision_reference.py).
    name = f"fasterrcnn_{preset}"
    case = reference.parity_case(name)
    model = FasterRCNN.from_preset(preset).eval()
    model.load_state_dict(reference.seeded_state_dict(name))
    image = reference.rand_image(case["seed"])
    with torch.no_grad():
        image_list, _ = model.transform([image])
        proposals, _ = model.rpn(image_list, model.backbone(image_list.tensors))
        det = model([image])[0]
    assert list(image_list.image_sizes[0]) == case["transformed_size"] and list(image_list.tensors.shape) == case["padded_shape"]
    # The same proposals; two of near-equal objectness (float summation order, thread count) may
    # swap places, so each proposal must have its twin within 0.01 px in the other list.
    assert proposals[0].shape == case["proposals"].shape
    distance = torch.cdist(proposals[0].double(), case["proposals"].double(), p=math.inf)  # [P, P]
    assert float(distance.min(dim=0).values.max()) < 0.01 and float(distance.min(dim=1).values.max()) < 0.01
    assert det["boxes"].shape == case["boxes"].shape
    assert torch.allclose(det["boxes"], case["boxes"], atol=0.01, rtol=0)
    assert torch.allclose(det["scores"], case["scores"], atol=1e-4, rtol=0)
    assert torch.equal(det["labels"], case["labels"])
