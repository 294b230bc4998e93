"""fasterrcnn.modeling.prepack: nn.Linear on oneDNN-packed weights for float32 CPU inference, nn.Linear elsewhere."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fasterrcnn.modeling.prepack import PackedLinear, prepack_linear


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
