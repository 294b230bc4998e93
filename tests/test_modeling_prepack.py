"""fasterrcnn.modeling.prepack: nn.Linear on oneDNN-packed weights for float32 CPU inference, nn.Linear elsewhere."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fasterrcnn.modeling.prepack import FrozenBackbone, PackedLinear, prepack_linear


def linear_and_input(bias: bool = True) -> tuple[nn.Linear, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(300, 70, bias=bias).eval()
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g))
    return linear, torch.randn(37, 300, generator=g)


@pytest.mark.parametrize("bias", [True, False])
def test_inference_runs_on_the_packed_weight_and_equals_linear_up_to_rounding(bias):
    linear, x = linear_and_input(bias)
    packed = PackedLinear.of(linear)
    assert packed.weight is linear.weight and packed.bias is linear.bias and isinstance(packed, nn.Linear)
    with torch.inference_mode():
        out = packed(x)
    assert packed._packed is not None  # noqa: SLF001
    torch.testing.assert_close(out, F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-4)
    with torch.inference_mode():
        assert packed(x[:0]).shape == (0, 70) and packed(x[:1]).shape == (1, 70)


def test_training_gradients_and_autocast_run_linears_own_forward():
    linear, x = linear_and_input()
    packed = PackedLinear.of(linear)
    expected = F.linear(x, linear.weight, linear.bias)
    out = packed(x)  # gradients enabled
    assert torch.equal(out, expected) and out.requires_grad and packed._packed is None  # noqa: SLF001
    out.sum().backward()
    assert linear.weight.grad is not None
    with torch.no_grad():
        assert torch.equal(packed.train()(x), expected) and packed._packed is None  # noqa: SLF001
        packed.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert packed(x).dtype == torch.bfloat16 and packed._packed is None  # noqa: SLF001
        assert torch.equal(packed.double()(x.double()), F.linear(x.double(), packed.weight, packed.bias))
        assert packed._packed is None  # noqa: SLF001


def test_a_changed_weight_is_packed_again():
    linear, x = linear_and_input()
    packed = PackedLinear.of(linear)
    with torch.inference_mode():
        before = packed(x)
    state = {k: v * 2 for k, v in packed.state_dict().items()}
    packed.load_state_dict(state)  # in place: the version counter moves
    with torch.inference_mode():
        after = packed(x)
    torch.testing.assert_close(after, 2 * before, rtol=1e-5, atol=1e-4)


def test_prepack_linear_keeps_the_parameters_and_state_dict_and_copies():
    model = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2, bias=False)))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = list(model.parameters())
    assert prepack_linear(model) is model
    assert [type(m) for m in (model[0], model[2][0])] == [PackedLinear, PackedLinear]
    assert all(a is b for a, b in zip(model.parameters(), parameters, strict=True))
    assert state.keys() == model.state_dict().keys() and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    x = torch.randn(5, 8)
    with torch.inference_mode():
        out = model(x)  # packs both layers
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.inference_mode():
            assert torch.equal(clone(x), out)


def tiny_backbone() -> nn.Module:
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    return FasterRCNN.from_preset("tiny", num_classes=2).eval().backbone


def first_map(features) -> torch.Tensor:
    return next(iter(features.values())) if isinstance(features, dict) else features


def assert_features_close(actual, expected) -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-4)
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_frozen_backbone_traces_one_module_per_size_and_keeps_the_last_ones():
    backbone = tiny_backbone()
    frozen = FrozenBackbone(backbone, sizes=2)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.rand(1, 3, h, w, generator=g) for h, w in ((64, 96), (96, 64), (64, 96), (32, 32))]
    with torch.inference_mode():
        assert frozen.usable(inputs[0])
        for x in inputs:
            assert_features_close(frozen(x), backbone(x))
    assert list(frozen.frozen) == [(1, 3, 64, 96), (1, 3, 32, 32)]  # (96, 64) was the least recently used
    module = frozen.frozen[(1, 3, 64, 96)]
    with torch.inference_mode():
        frozen(inputs[0])
    assert frozen.frozen[(1, 3, 64, 96)] is module and list(frozen.frozen)[-1] == (1, 3, 64, 96)
    with pytest.raises(ValueError, match="sizes must be at least 1, got 0"):
        FrozenBackbone(backbone, sizes=0)


def test_frozen_backbone_is_for_float32_cpu_inference_and_follows_the_weights():
    backbone = tiny_backbone()
    frozen = FrozenBackbone(backbone)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert not frozen.usable(x)  # gradients enabled
    with torch.no_grad():
        assert frozen.usable(x) and not frozen.usable(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not frozen.usable(x)
        backbone.train()
        assert not frozen.usable(x)
        backbone.eval()
        before = first_map(frozen(x))
        for parameter in backbone.parameters():
            parameter.mul_(0.5)  # in place: the frozen copies are stale
        after = frozen(x)
        assert_features_close(after, backbone(x))
        assert len(frozen.frozen) == 1 and not torch.allclose(first_map(after), before)
    for clone in (copy.deepcopy(frozen), pickle.loads(pickle.dumps(frozen))):
        assert not clone.frozen and clone.sizes == frozen.sizes
        with torch.no_grad():
            assert_features_close(clone(x), backbone(x))
