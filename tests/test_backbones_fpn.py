"""FPN building blocks and the torchvision detection layouts of the two FPN backbones."""

import functools
from collections import OrderedDict

import pytest
import torch
from torchvision_reference import key_layout, parity_case, rand_image, seeded_state_dict

from fasterrcnn.modeling.backbones import build_backbone
from fasterrcnn.modeling.backbones.fpn import FeaturePyramidNetwork, LastLevelMaxPool, TwoMLPHead

DETECTION_MODELS = {
    "resnet50_fpn": "fasterrcnn_resnet50_fpn",
    "mobilenet_v3_large_fpn": "fasterrcnn_mobilenet_v3_large_fpn",
}


def identity_fpn(num_levels: int) -> FeaturePyramidNetwork:
    """1-channel FPN whose lateral and output convs are identities."""
    fpn = FeaturePyramidNetwork([1] * num_levels, 1, extra_blocks=LastLevelMaxPool())
    with torch.no_grad():
        for inner, layer in zip(fpn.inner_blocks, fpn.layer_blocks):
            inner[0].weight.fill_(1.0)
            inner[0].bias.zero_()
            layer[0].weight.zero_()
            layer[0].weight[0, 0, 1, 1] = 1.0
            layer[0].bias.zero_()
    return fpn


def test_fpn_top_down_sum_hand_computed():
    fpn = identity_fpn(2)
    fine = torch.ones(1, 1, 4, 4)
    coarse = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    out = fpn(OrderedDict([("a", fine), ("b", coarse)]))
    assert list(out) == ["a", "b", "pool"]
    assert torch.equal(out["b"], coarse)
    upsampled = torch.tensor([[1.0, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    assert torch.equal(out["a"], (1.0 + upsampled).reshape(1, 1, 4, 4))
    assert torch.equal(out["pool"], torch.tensor([[[[1.0]]]]))  # coarse[::2, ::2]


def test_fpn_odd_sizes_and_pool_level():
    fpn = identity_fpn(2)
    out = fpn(OrderedDict([("0", torch.zeros(2, 1, 5, 7)), ("1", torch.zeros(2, 1, 3, 4))]))
    assert [tuple(v.shape) for v in out.values()] == [(2, 1, 5, 7), (2, 1, 3, 4), (2, 1, 2, 2)]


def test_last_level_max_pool_subsamples():
    x = torch.arange(15.0).reshape(1, 1, 3, 5)
    results, names = LastLevelMaxPool()([x], ["0"])
    assert names == ["0", "pool"]
    assert torch.equal(results[1], torch.tensor([[[[0.0, 2.0, 4.0], [10.0, 12.0, 14.0]]]]))


def test_two_mlp_head():
    head = TwoMLPHead(2 * 2 * 2, 3)
    with torch.no_grad():
        head.fc6.weight.copy_(torch.eye(3, 8))
        head.fc6.bias.copy_(torch.tensor([0.0, -10.0, 0.0]))
        head.fc7.weight.copy_(torch.eye(3))
        head.fc7.bias.zero_()
    pooled = torch.arange(16.0).reshape(2, 2, 2, 2)
    # fc6 keeps the first 3 flattened values, -10 on the second, ReLU clips it
    assert torch.equal(head(pooled), torch.tensor([[0.0, 0.0, 2.0], [8.0, 0.0, 10.0]]))


@functools.lru_cache(maxsize=None)
def backbone_state(name: str):
    """(body, box head) parts of torchvision's parity weights, with num_batches_tracked entries."""
    state = seeded_state_dict(DETECTION_MODELS[name])
    body = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    head = {k[len("roi_heads.box_head.") :]: v for k, v in state.items() if k.startswith("roi_heads.box_head.")}
    return body, head


@functools.lru_cache(maxsize=None)
def parity_parts(name: str):
    """The backbone with the parity weights loaded (strict), in eval mode."""
    parts = build_backbone(name)
    body, head = backbone_state(name)
    parts.body.load_state_dict(body, strict=True)
    parts.box_head.load_state_dict(head, strict=True)
    return parts.body.eval(), parts.box_head.eval(), parts.featmap_names


@pytest.mark.parametrize("name", sorted(DETECTION_MODELS))
def test_state_dict_matches_torchvision_detection_layout(name):
    body, box_head, _ = parity_parts(name)
    ours = [("backbone." + k, list(v.shape)) for k, v in body.state_dict().items()]
    ours += [("roi_heads.box_head." + k, list(v.shape)) for k, v in box_head.state_dict().items()]
    reference = [
        (key, shape)
        for key, shape, _ in key_layout(DETECTION_MODELS[name])
        if key.startswith(("backbone.", "roi_heads.box_head.")) and not key.endswith("num_batches_tracked")
    ]
    assert ours == reference


@pytest.mark.parametrize("name", sorted(DETECTION_MODELS))
def test_detection_weights_load_with_and_without_num_batches_tracked(name):
    body, head = backbone_state(name)
    assert any(k.endswith("num_batches_tracked") for k in body)
    body_module, head_module, _ = parity_parts(name)  # loaded with the counters
    ours = body_module.state_dict()
    assert list(ours) == [k for k in body if not k.endswith("num_batches_tracked")]
    assert all(torch.equal(v, body[k]) for k, v in ours.items())
    assert torch.equal(head_module.fc7.weight, head["fc7.weight"])

    without = {k: v for k, v in body.items() if not k.endswith("num_batches_tracked")}
    key = next(iter(without))  # the stem conv
    without[key] = without[key] + 1
    body_module.load_state_dict(without, strict=True)
    assert torch.equal(body_module.state_dict()[key], without[key])
    body_module.load_state_dict(body, strict=True)  # back to the parity weights


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("resnet50_fpn", {"0": (16, 24), "1": (8, 12), "2": (4, 6), "3": (2, 3), "pool": (1, 2)}),
        ("mobilenet_v3_large_fpn", {"0": (2, 3), "1": (2, 3), "pool": (1, 2)}),
    ],
)
def test_parity_weights_give_finite_deterministic_features(name, shapes):
    """torchvision's parity weights on a 64x96 crop of its parity image (full parity: the model tests)."""
    body, head, featmap_names = parity_parts(name)
    seed = parity_case(DETECTION_MODELS[name])["seed"]
    image = rand_image(seed)[:, :64, :96].unsqueeze(0)
    with torch.no_grad():
        first = body(image)
        second = body(image)
        pooled = head(first["0"][:, :, :2, :2].repeat(1, 1, 4, 4)[:, :, :7, :7])
    assert list(first) == featmap_names == list(shapes)
    for key, (h, w) in shapes.items():
        assert first[key].shape == (1, 256, h, w)
        assert torch.isfinite(first[key]).all()
        assert torch.equal(first[key], second[key])
    assert first["0"].abs().sum() > 0
    assert pooled.shape == (1, 1024) and torch.isfinite(pooled).all()
