import math

import pytest
import torch

from fasterrcnn.ops import BoxCoder


def random_boxes(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 800
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 300 + 20  # size ratios < 62.5: no clamping
    return torch.cat((xy, xy + wh), dim=1).to(dtype)


def test_encode_hand_computed():
    reference = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3, dtype=torch.float64)
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 20.0, 20.0]],
                          dtype=torch.float64)
    deltas = BoxCoder().encode(reference, target)
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.5, 0.5, math.log(2), math.log(2)]],
                            dtype=torch.float64)
    assert deltas.dtype == torch.float64
    torch.testing.assert_close(deltas, expected, rtol=0, atol=1e-15)
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(reference, target)
    torch.testing.assert_close(weighted, expected * torch.tensor([10.0, 10.0, 5.0, 5.0], dtype=torch.float64),
                               rtol=0, atol=1e-14)


def test_decode_hand_computed_and_class_specific_shape():
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0], [4.0, 4.0, 8.0, 6.0]])
    deltas = torch.tensor([
        [0.0, 0.0, 0.0, 0.0, 0.5, 0.25, math.log(2), 0.0],
        [0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, math.log(0.5)],
    ])
    boxes = BoxCoder().decode(deltas, reference)
    assert boxes.shape == (2, 8)  # [N, 4*K], K = 2
    expected = torch.tensor([
        # K=0: the reference itself; K=1: ctr (10, 15), w 20, h 20
        [0.0, 0.0, 10.0, 20.0, 0.0, 5.0, 20.0, 25.0],
        # K=1: ctr (6 - 4, 5) = (2, 5), w 4, h 1
        [4.0, 4.0, 8.0, 6.0, 0.0, 4.5, 4.0, 5.5],
    ])
    torch.testing.assert_close(boxes, expected, rtol=0, atol=1e-5)


def test_decode_clamps_dw_dh():
    reference = torch.tensor([[0.0, 0.0, 16.0, 16.0]], dtype=torch.float64)
    deltas = torch.tensor([[0.0, 0.0, 100.0, 100.0]], dtype=torch.float64)
    boxes = BoxCoder().decode(deltas, reference)
    # width = exp(log(1000 / 16)) * 16 = 1000 around the centre 8
    torch.testing.assert_close(boxes, torch.tensor([[-492.0, -492.0, 508.0, 508.0]], dtype=torch.float64),
                               rtol=0, atol=1e-9)


def test_decode_matches_torchvision_operation_order_bitwise():
    reference = random_boxes(200, torch.float32, seed=1)
    deltas = torch.randn(200, 12, generator=torch.Generator().manual_seed(2))
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    out = coder.decode(deltas, reference)
    # torchvision's decode_single, step by step
    widths = reference[:, 2] - reference[:, 0]
    heights = reference[:, 3] - reference[:, 1]
    ctr_x = reference[:, 0] + 0.5 * widths
    ctr_y = reference[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0::4] / 10.0, deltas[:, 1::4] / 10.0
    dw = torch.clamp(deltas[:, 2::4] / 5.0, max=math.log(1000.0 / 16))
    dh = torch.clamp(deltas[:, 3::4] / 5.0, max=math.log(1000.0 / 16))
    pcx, pcy = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pw, ph = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    half = torch.tensor(0.5)
    expected = torch.stack((pcx - half * pw, pcy - half * ph, pcx + half * pw, pcy + half * ph), dim=2).flatten(1)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_decode_inverts_encode(weights):
    coder = BoxCoder(weights=weights)
    reference = random_boxes(300, torch.float64, seed=3)
    target = random_boxes(300, torch.float64, seed=4)
    back = coder.decode(coder.encode(reference, target), reference)
    torch.testing.assert_close(back, target, rtol=0, atol=1e-9)
    back32 = coder.decode(coder.encode(reference.float(), target.float()), reference.float())
    assert back32.dtype == torch.float32
    torch.testing.assert_close(back32, target.float(), rtol=1e-5, atol=1e-3)


def test_dtypes_preserved():
    coder = BoxCoder()
    reference = random_boxes(5, torch.float64)
    assert coder.encode(reference, reference).dtype == torch.float64
    deltas16 = torch.zeros(5, 4, dtype=torch.float16)
    boxes16 = coder.decode(deltas16, random_boxes(5, torch.float32))
    assert boxes16.dtype == torch.float16  # computed in the deltas' dtype, like torchvision


def test_empty_inputs():
    coder = BoxCoder()
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)


def test_inputs_not_modified():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    reference = random_boxes(10, torch.float32)
    target = random_boxes(10, torch.float32, seed=5)
    deltas = torch.randn(10, 8) * 10
    copies = [t.clone() for t in (reference, target, deltas)]
    coder.encode(reference, target)
    coder.decode(deltas, reference)
    for before, after in zip(copies, (reference, target, deltas)):
        assert torch.equal(before, after)


def test_decode_gradcheck():
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    reference = random_boxes(4, torch.float64).requires_grad_()
    deltas = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).requires_grad_()
    assert torch.autograd.gradcheck(coder.decode, (deltas, reference))
    target = random_boxes(4, torch.float64, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(coder.encode, (reference, target))


def test_bad_shapes_raise_value_error():
    coder = BoxCoder()
    with pytest.raises(ValueError, match="deltas"):
        coder.decode(torch.zeros(3, 6), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same number of rows"):
        coder.decode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="reference"):
        coder.encode(torch.zeros(3, 5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="same number of boxes"):
        coder.encode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="4 values"):
        BoxCoder(weights=(1.0, 1.0))
