from collections import OrderedDict

import torch
from torch import nn

from fasterrcnn.modeling.backbones.layers import Conv2dNormActivation, FeatureExtractor, FrozenBatchNorm2d, freeze


def test_frozen_batchnorm_hand_computed():
    bn = FrozenBatchNorm2d(2, eps=0.0)
    bn.weight.copy_(torch.tensor([2.0, 1.0]))
    bn.bias.copy_(torch.tensor([0.0, 1.0]))
    bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
    bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    x = torch.full((1, 2, 1, 2), 3.0)
    # channel 0: (3 - 1) / 2 * 2 + 0 = 2; channel 1: (3 - 0) / 0.5 * 1 + 1 = 7
    expected = torch.tensor([[[[2.0, 2.0]], [[7.0, 7.0]]]])
    assert torch.equal(bn(x), expected)


def test_frozen_batchnorm_matches_batchnorm_in_eval_mode():
    g = torch.Generator().manual_seed(0)
    ref = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        ref.weight.copy_(1 + 0.1 * torch.randn(5, generator=g))
        ref.bias.copy_(0.1 * torch.randn(5, generator=g))
        ref.running_mean.copy_(torch.randn(5, generator=g))
        ref.running_var.copy_(torch.rand(5, generator=g) + 0.5)
    frozen = FrozenBatchNorm2d(5)
    frozen.load_state_dict(ref.state_dict())  # carries num_batches_tracked: accepted and dropped
    x = torch.randn(2, 5, 3, 4, generator=g)
    assert torch.allclose(frozen(x), ref(x), atol=1e-6, rtol=1e-5)


def test_frozen_batchnorm_has_buffers_only_and_loads_with_or_without_counter():
    bn = FrozenBatchNorm2d(3)
    assert list(bn.parameters()) == []
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    state = {
        "weight": torch.arange(3.0), "bias": torch.ones(3), "running_mean": torch.zeros(3), "running_var": torch.ones(3)
    }
    bn.load_state_dict(state, strict=True)
    assert torch.equal(bn.weight, torch.arange(3.0))
    with_counter = dict(state, num_batches_tracked=torch.tensor(7))
    bn.load_state_dict(with_counter, strict=True)
    assert "num_batches_tracked" in with_counter  # the caller's dict is left as it was
    assert bn.bias.requires_grad is False


def test_conv2d_norm_activation_layout():
    plain = Conv2dNormActivation(4, 8, kernel_size=3)
    assert [k for k in plain.state_dict()] == ["0.weight", "0.bias"]
    assert plain[0].padding == (1, 1) and plain.out_channels == 8
    normed = Conv2dNormActivation(
        4, 8, kernel_size=5, stride=2, groups=4, norm_layer=FrozenBatchNorm2d, activation_layer=nn.ReLU
    )
    assert list(normed.state_dict()) == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert normed[0].bias is None and normed[0].padding == (2, 2) and normed[0].groups == 4
    assert isinstance(normed[2], nn.ReLU) and normed[2].inplace
    assert normed(torch.zeros(1, 4, 9, 9)).shape == (1, 8, 5, 5)


def test_feature_extractor_returns_named_maps_and_drops_unused_layers():
    layers = OrderedDict(
        ident=nn.Identity(), pool=nn.MaxPool2d(2), last=nn.AvgPool2d(2), unused=nn.Conv2d(1, 1, 1)
    )
    extractor = FeatureExtractor(layers, {"ident": "a", "last": "b"}, out_channels=1)
    assert list(extractor.keys()) == ["ident", "pool", "last"]
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = extractor(x)
    assert list(out) == ["a", "b"]
    assert torch.equal(out["a"], x)
    # max-pool 2x2 -> [[5, 7], [13, 15]]; average of those = 10
    assert torch.equal(out["b"], torch.tensor([[[[10.0]]]]))
    assert extractor.out_channels == 1


def test_freeze():
    conv = nn.Conv2d(1, 2, 1)
    freeze(conv)
    assert [p.requires_grad for p in conv.parameters()] == [False, False]
