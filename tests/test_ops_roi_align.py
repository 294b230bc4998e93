"""Tests of fasterrcnn.ops.roi_align: roi_align, roi_pool, RoIAlign, RoIPool, MultiScaleRoIAlign.

The references below transcribe torchvision's C++ kernels (csrc/ops/cpu/roi_align_kernel.cpp with
roi_align_common.h, roi_pool_kernel.cpp) as explicit Python loops, in float64, on tiny sizes.
"""
import importlib
import math

import pytest
import torch

from fasterrcnn.ops.roi_align import (
    MultiScaleRoIAlign,
    RoIAlign,
    RoIPool,
    infer_scale,
    map_levels,
    roi_align,
    roi_pool,
)

_FLT_MAX = 3.4028234663852886e38  # the kernel's starting maximum is -FLT_MAX


# ----------------------------------------------------------------------------------------------
# Loop references (one statement per kernel line)
# ----------------------------------------------------------------------------------------------
def _bilinear(feat, H, W, y, x):
    if not (y >= -1.0 and y <= H and x >= -1.0 and x <= W):
        return 0.0
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_high = y_low = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_high = x_low = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (
        hy * hx * feat[y_low][x_low]
        + hy * lx * feat[y_low][x_high]
        + ly * hx * feat[y_high][x_low]
        + ly * lx * feat[y_high][x_high]
    )


def reference_roi_align(input, rois, oh, ow, spatial_scale, sampling_ratio, aligned):
    N, C, H, W = input.shape
    data = input.double().tolist()
    out = torch.zeros(len(rois), C, oh, ow, dtype=torch.float64)
    for k, roi in enumerate(rois.double().tolist()):
        b = int(roi[0])
        offset = 0.5 if aligned else 0.0
        start_w = roi[1] * spatial_scale - offset
        start_h = roi[2] * spatial_scale - offset
        end_w = roi[3] * spatial_scale - offset
        end_h = roi[4] * spatial_scale - offset
        roi_w, roi_h = end_w - start_w, end_h - start_h
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / oh, roi_w / ow
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / oh)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / ow)
        count = max(grid_h * grid_w, 1)
        for c in range(C):
            for ph in range(oh):
                for pw in range(ow):
                    total = 0.0
                    for iy in range(grid_h):
                        y = start_h + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = start_w + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += _bilinear(data[b][c], H, W, y, x)
                    out[k, c, ph, pw] = total / count
    return out


def _c_round(v):
    return math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)


def reference_roi_pool(input, rois, oh, ow, spatial_scale):
    """Returns (output, argmax flat index h*W+w or -1) like the kernel."""
    N, C, H, W = input.shape
    data = input.double().tolist()
    out = torch.zeros(len(rois), C, oh, ow, dtype=torch.float64)
    arg = torch.full((len(rois), C, oh, ow), -1, dtype=torch.long)
    for k, roi in enumerate(rois.double().tolist()):
        b = int(roi[0])
        sw, sh = _c_round(roi[1] * spatial_scale), _c_round(roi[2] * spatial_scale)
        ew, eh = _c_round(roi[3] * spatial_scale), _c_round(roi[4] * spatial_scale)
        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bin_h, bin_w = roi_h / oh, roi_w / ow
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(ph * bin_h) + sh, 0), H)
                he = min(max(math.ceil((ph + 1) * bin_h) + sh, 0), H)
                ws = min(max(math.floor(pw * bin_w) + sw, 0), W)
                we = min(max(math.ceil((pw + 1) * bin_w) + sw, 0), W)
                empty = he <= hs or we <= ws
                for c in range(C):
                    best, idx = (0.0 if empty else -_FLT_MAX), -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if data[b][c][h][w] > best:
                                best, idx = data[b][c][h][w], h * W + w
                    out[k, c, ph, pw] = best
                    arg[k, c, ph, pw] = idx
    return out, arg


def random_rois(generator, num, batch, height, width, spatial_scale, margin=0.3):
    """Boxes in image pixels covering tiny, huge and partly-outside cases."""
    img_h, img_w = height / spatial_scale, width / spatial_scale
    rois = []
    for k in range(num):
        kind = k % 4
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        if kind == 0:  # tiny (sub-pixel on the feature map)
            x1, y1 = u[0] * img_w, u[1] * img_h
            x2, y2 = x1 + u[2] * 0.8 / spatial_scale, y1 + u[3] * 0.8 / spatial_scale
        elif kind == 1:  # huge, beyond the map on every side
            x1, y1 = -u[0] * img_w * margin, -u[1] * img_h * margin
            x2, y2 = img_w * (1 + u[2] * margin), img_h * (1 + u[3] * margin)
        else:  # anywhere, partly outside
            x1 = (u[0] * (1 + 2 * margin) - margin) * img_w
            y1 = (u[1] * (1 + 2 * margin) - margin) * img_h
            x2 = x1 + u[2] * img_w
            y2 = y1 + u[3] * img_h
        rois.append([k % batch, x1, y1, x2, y2])
    return torch.tensor(rois, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------
# roi_align
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_roi_align_hand_computed(sampling_ratio):
    x = torch.arange(25.0).view(1, 1, 5, 5)
    rois = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    # aligned=False: bins of 0.5 px from (1, 1); 2x2 samples at +0.125 / +0.375 -> centre (1.25, 1.25)
    # -> 5 * 1.25 + 1.25 = 7.5, then +0.5 per column.
    out = roi_align(x, rois, 4, 1.0, sampling_ratio, aligned=False)
    assert torch.equal(out[0, 0, 0], torch.tensor([7.5, 8.0, 8.5, 9.0]))
    assert torch.equal(out[0, 0, :, 0], torch.tensor([7.5, 10.0, 12.5, 15.0]))
    # aligned=True: the box starts at (0.5, 0.5) -> first bin centre (0.75, 0.75) -> 4.5.
    out = roi_align(x, rois, 4, 1.0, sampling_ratio, aligned=True)
    assert torch.equal(out[0, 0, 0], torch.tensor([4.5, 5.0, 5.5, 6.0]))
    ref = reference_roi_align(x, rois, 4, 4, 1.0, sampling_ratio, True)
    assert torch.equal(out.double(), ref)


def test_roi_align_zero_height_roi_adaptive_gives_zeros_and_zero_grad():
    # aligned=True keeps the 0 height, so the adaptive grid is ceil(0 / oh) = 0 samples: the kernel
    # outputs 0 (count = max(0, 1)).  With a fixed sampling_ratio the samples all lie on y = y1
    # and the output is not zero; with aligned=False the height is forced to 1.
    x = torch.arange(25.0).view(1, 1, 5, 5).requires_grad_()
    rois = torch.tensor([[0.0, 1.0, 2.0, 3.0, 2.0]])
    out = roi_align(x, rois, 2, 1.0, -1, aligned=True)
    assert torch.equal(out, torch.zeros(1, 1, 2, 2))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros(1, 1, 5, 5))
    fixed = roi_align(x.detach(), rois, 2, 1.0, 2, aligned=True)
    # y = 2 - 0.5 = 1.5 -> rows 1 and 2 half each; x samples inside [0.5, 2.5].
    assert torch.equal(fixed.double(), reference_roi_align(x.detach(), rois, 2, 2, 1.0, 2, True))
    assert fixed.abs().sum() > 0


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
def test_roi_align_matches_loop_reference(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(1 + sampling_ratio + 10 * aligned)
    cases = [((2, 2, 5, 7), 1.0), ((3, 1, 6, 4), 0.5), ((1, 2, 4, 5), 1 / 16)]
    for shape, scale in cases:
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        rois = random_rois(g, 9, shape[0], shape[2], shape[3], scale)
        ref = reference_roi_align(x, rois, 3, 2, scale, sampling_ratio, aligned)
        out = roi_align(x, rois, (3, 2), scale, sampling_ratio, aligned)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        out32 = roi_align(x.float(), rois.float(), (3, 2), scale, sampling_ratio, aligned)
        torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5)


def test_roi_align_large_roi_adaptive_grid_matches_reference():
    # Adaptive grids that differ a lot between RoIs (1 to 12 samples per bin).
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64)
    rois = torch.tensor(
        [[0, 0.0, 0.0, 40.0, 30.0], [1, 2.0, 3.0, 2.5, 3.2], [1, -5.0, -4.0, 15.0, 12.0], [0, 3.0, 1.0, 9.0, 8.0]],
        dtype=torch.float64,
    )
    for aligned in (False, True):
        ref = reference_roi_align(x, rois, 3, 3, 1.0, -1, aligned)
        torch.testing.assert_close(roi_align(x, rois, 3, 1.0, -1, aligned), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_roi_align_gradcheck(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 3.1], [1, -1.2, 1.1, 2.4, 6.3], [1, 2.2, 0.4, 2.9, 1.7]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 1.0, sampling_ratio, aligned), (x,))


def test_roi_align_grad_matches_loop_reference_adjoint():
    # Adaptive grids: the gradient is the transpose of the (linear) forward map.
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1, 1, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.2, 0.1, 4.9, 3.7], [0, 1.0, 1.0, 1.5, 1.2]], dtype=torch.float64)
    out = roi_align(x, rois, 2, 1.0, -1, False)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    expected = torch.zeros(20, dtype=torch.float64)
    for i in range(20):
        e = torch.zeros(20, dtype=torch.float64)
        e[i] = 1
        expected[i] = (reference_roi_align(e.view(1, 1, 4, 5), rois, 2, 2, 1.0, -1, False) * grad_out).sum()
    torch.testing.assert_close(grad.view(-1), expected, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# roi_pool
# ----------------------------------------------------------------------------------------------
def test_roi_pool_hand_computed():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    # Box [1, 1, 3, 3] -> cells 1..3 (3x3 inclusive) in 2x2 bins: rows [1, 3) and [2, 4) etc.
    out = roi_pool(x, torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]]), 2)
    assert torch.equal(out, torch.tensor([[[[12.0, 13.0], [17.0, 18.0]]]]))
    # C rounding: 0.5 rounds away from zero -> 1; -0.5 -> -1 (clipped to 0).
    out = roi_pool(x, torch.tensor([[0.0, -0.5, 0.5, 0.5, 0.5]]), 1)
    assert torch.equal(out, torch.tensor([[[[6.0]]]]))
    # Bins clipped away (box right of the map) are empty: 0 and no gradient.
    xg = x.clone().requires_grad_()
    out = roi_pool(xg, torch.tensor([[0.0, 3.0, 0.0, 9.0, 1.0]]), (1, 2))
    assert torch.equal(out, torch.tensor([[[[9.0, 0.0]]]]))  # bins x in [3, 7) -> 3..4 and [7, 10) -> empty
    out.sum().backward()
    expected = torch.zeros(25)
    expected[9] = 1.0
    assert torch.equal(xg.grad.view(-1), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roi_pool_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    cases = [((2, 2, 5, 7), 1.0), ((3, 1, 6, 4), 0.5), ((1, 2, 9, 12), 1 / 16)]
    for shape, scale in cases:
        x = torch.randn(*shape, generator=g, dtype=torch.float64)
        x[0, 0, 1] = x[0, 0, 1, 0]  # ties: the first pixel in row-major order must win
        rois = random_rois(g, 12, shape[0], shape[2], shape[3], scale)
        ref, arg = reference_roi_pool(x, rois, 3, 2, scale)
        for dtype in (torch.float64, torch.float32):
            xx = x.to(dtype).clone().requires_grad_()
            out = roi_pool(xx, rois.to(dtype), (3, 2), scale)
            assert torch.equal(out.double(), ref.to(dtype).double())
            grad_out = torch.randn(out.shape, generator=g, dtype=dtype)
            out.backward(grad_out)
            expected = _expected_roi_pool_grad(shape, rois, arg, grad_out)
            torch.testing.assert_close(xx.grad.double(), expected, rtol=1e-6, atol=1e-6)


def test_roi_pool_gradcheck():
    x = torch.randperm(2 * 2 * 6 * 7, generator=torch.Generator().manual_seed(4)).double().view(2, 2, 6, 7)
    x = (x / 10).requires_grad_()  # distinct values: no ties, gradcheck's steps do not change the arg-max
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 4.0], [1, 2.0, 1.0, 6.0, 5.0], [1, 3.0, 3.0, 3.0, 3.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, (2, 3), 1.0), (x,), eps=1e-3)


def _tied_features(generator, shape):
    """Values in quarters with whole rows of zeros: many ties, -0.0 among them."""
    x = (torch.randn(*shape, generator=generator, dtype=torch.float64) * 4).round() / 4
    x[..., ::3, :] = 0.0
    x[..., 1::4] = -x[..., 1::4]  # -0.0 where the row was zeroed
    return x


def _expected_roi_pool_grad(shape, rois, arg, grad_out):
    """The kernel's backward from the loop reference's arg-max (flat h*W + w, -1 for empty bins)."""
    expected = torch.zeros(shape, dtype=torch.float64).view(shape[0], shape[1], -1)
    for k, b in enumerate(rois[:, 0].long().tolist()):
        for c in range(shape[1]):
            for i, a in enumerate(arg[k, c].reshape(-1).tolist()):
                if a >= 0:
                    expected[b, c, a] += grad_out[k, c].reshape(-1)[i].double()
    return expected.view(shape)


def test_roi_pool_negative_zero_ties_with_zero():
    # The kernel's `>` does not tell -0.0 from +0.0: the first of them is the maximum.
    rois = torch.tensor([[0.0, 0.0, 0.0, 2.0, 1.0]])
    for dtype in (torch.float32, torch.float64):
        xx = torch.tensor([[[[-1.0, -0.0, 0.0], [0.0, -0.0, -2.0]]]], dtype=dtype, requires_grad=True)
        out = roi_pool(xx, rois.to(dtype), (1, 2), 1.0)  # bins x in [0, 2) and [1, 3), both rows
        out.backward(torch.tensor([[[[1.0, 2.0]]]], dtype=dtype))
        assert torch.equal(xx.grad, torch.tensor([[[[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]]]], dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_roi_pool_forward_only_equals_autograd_path(dtype):
    # Without a gradient to compute, roi_pool takes the maxima only: the same values, bit for bit.
    g = torch.Generator().manual_seed(10)
    x = _tied_features(g, (2, 5, 9, 12)).to(dtype)
    rois = random_rois(g, 16, 2, 9, 12, 0.5).to(dtype)
    expected = roi_pool(x.clone().requires_grad_(), rois, (3, 4), 0.5).detach()
    assert torch.equal(roi_pool(x, rois, (3, 4), 0.5), expected)
    with torch.no_grad():
        assert torch.equal(roi_pool(x.clone().requires_grad_(), rois, (3, 4), 0.5), expected)
    with torch.inference_mode():
        out = roi_pool(x, rois, (3, 4), 0.5)
    assert torch.equal(out, expected) and out.dtype == dtype and out.is_contiguous()


@pytest.mark.parametrize("nonfinite", [False, True])
@pytest.mark.parametrize("every_height", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_by_blocks_of_channels_matches_loop_reference(monkeypatch, dtype, every_height, nonfinite):
    # A tiny block budget: 20 channels go in blocks of 8, 8 and 4; tables of every height (two
    # look-ups per bin) or of powers of two (four).  nonfinite: NaN and -inf scattered, and image
    # 1's channels 5..12 all -inf or NaN (bins of value -FLT_MAX across two blocks).
    module = importlib.import_module("fasterrcnn.ops.roi_align")  # (the package exports a function of that name)
    monkeypatch.setattr(module, "_CPU_BLOCK_BYTES", 1)
    monkeypatch.setattr(module, "_every_height", lambda *args: every_height)
    g = torch.Generator().manual_seed(11)
    shape, scale = (2, 20, 7, 9), 0.5
    x = _tied_features(g, shape)
    if nonfinite:
        x[..., ::2, 1::3] = float("nan")
        x[..., 1::3, ::4] = -float("inf")
        x[1, 5:13] = -float("inf")
        x[1, 5:13, ::2] = float("nan")
    rois = random_rois(g, 10, 2, 7, 9, scale)
    ref, arg = reference_roi_pool(x, rois, 3, 2, scale)
    xx = x.to(dtype).requires_grad_()
    out = roi_pool(xx, rois.to(dtype), (3, 2), scale)
    assert torch.equal(out.double(), ref)
    assert torch.equal(roi_pool(xx.detach(), rois.to(dtype), (3, 2), scale).double(), ref)
    grad_out = torch.randint(-3, 4, out.shape, generator=g).to(dtype)  # small integers: exact sums
    out.backward(grad_out)
    assert torch.equal(xx.grad.double(), _expected_roi_pool_grad(shape, rois, arg, grad_out))


# ----------------------------------------------------------------------------------------------
# Common behaviour
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op", [roi_align, roi_pool])
def test_list_of_boxes_equals_roi_tensor(op):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 6, 7, generator=g)
    boxes = [torch.tensor([[0.5, 1.0, 4.0, 5.5]]), torch.tensor([[1.0, 0.0, 6.0, 3.0], [2.0, 2.0, 3.0, 5.0]])]
    rois = torch.tensor([[0, 0.5, 1.0, 4.0, 5.5], [1, 1.0, 0.0, 6.0, 3.0], [1, 2.0, 2.0, 3.0, 5.0]])
    assert torch.equal(op(x, boxes, 2), op(x, rois, 2))


@pytest.mark.parametrize("op", [roi_align, roi_pool])
def test_empty_rois(op):
    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    for rois in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)]):
        out = op(x, rois, (2, 3))
        assert out.shape == (0, 3, 2, 3) and out.dtype == x.dtype
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("op", [roi_align, roi_pool])
def test_bad_shapes_raise_value_error(op):
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="Tensor\\[K, 5\\]"):
        op(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="Tensor\\[K, 4\\]"):
        op(x, [torch.zeros(3, 5)], 2)
    with pytest.raises(ValueError, match="4-D"):
        op(x[0], torch.zeros(1, 5), 2)
    with pytest.raises(ValueError, match="batch indices"):
        op(x, torch.tensor([[1.0, 0.0, 0.0, 2.0, 2.0]]), 2)


@pytest.mark.parametrize("op", [roi_align, roi_pool])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtype_preserved_and_inputs_unchanged(op, dtype):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 5, 6, generator=g).to(dtype).requires_grad_()
    rois = torch.tensor([[0, 0.5, 1.0, 4.0, 3.5], [0, 1.0, 0.0, 5.0, 4.0]]).to(dtype)
    x_copy, rois_copy = x.detach().clone(), rois.clone()
    out = op(x, rois, 2)
    assert out.dtype == dtype and out.device == x.device and out.shape == (2, 2, 2, 2)
    out.float().sum().backward()
    assert x.grad.dtype == dtype
    assert torch.equal(x.detach(), x_copy) and torch.equal(rois, rois_copy)
    exact = op(x.detach().double(), rois.double(), 2)
    torch.testing.assert_close(out.double(), exact, rtol=2e-2, atol=2e-2)


def test_modules():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 2, 8, 8, generator=g)
    rois = torch.tensor([[0, 2.0, 3.0, 20.0, 25.0]])
    assert torch.equal(RoIAlign((2, 3), 0.25, 2, aligned=True)(x, rois), roi_align(x, rois, (2, 3), 0.25, 2, True))
    assert torch.equal(RoIPool(3, 0.25)(x, rois), roi_pool(x, rois, 3, 0.25))
    assert "sampling_ratio=2" in repr(RoIAlign(2, 0.25, 2))


# ----------------------------------------------------------------------------------------------
# MultiScaleRoIAlign
# ----------------------------------------------------------------------------------------------
def test_infer_scale():
    assert infer_scale((200, 304), (800, 1216)) == 0.25
    assert infer_scale((25, 38), (800, 1216)) == 1 / 32  # 38/1216 = 0.03125, 25/800 = 0.03125
    assert infer_scale((13, 19), (800, 1216)) == 1 / 64  # log2 rounds to the nearest power
    with pytest.raises(ValueError, match="power-of-two"):
        infer_scale((100, 19), (800, 1216))


def test_level_assignment():
    def box(side):
        return torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])

    sides = [224.0, 112.0, 448.0, 4.0, 2000.0, 223.9, 111.99]
    levels = map_levels([torch.cat([box(s) for s in sides])], k_min=2, k_max=5)
    # 224 -> 4, 112 -> 3, 448 -> 5, tiny -> clamped to 2, huge -> clamped to 5, just below -> one lower.
    assert levels.tolist() == [2, 1, 3, 0, 3, 1, 0]


def test_multiscale_equals_per_level_roi_align():
    g = torch.Generator().manual_seed(10)
    feats = {
        "0": torch.randn(2, 3, 32, 40, generator=g),  # stride 4 of a 128 x 160 batch
        "1": torch.randn(2, 3, 16, 20, generator=g),
        "skip": torch.randn(2, 3, 8, 10, generator=g),
        "2": torch.randn(2, 3, 8, 10, generator=g),  # stride 16
    }
    boxes = [
        torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 5.0, 120.0, 100.0]]),
        torch.tensor([[5.0, 5.0, 60.0, 60.0], [1.0, 2.0, 150.0, 127.0], [3.0, 3.0, 4.0, 4.0]]),
    ]
    image_shapes = [(128, 150), (120, 160)]
    pooler = MultiScaleRoIAlign(["0", "1", "2"], 3, 2, canonical_scale=56, canonical_level=3)
    out = pooler(feats, boxes, image_shapes)
    assert out.shape == (5, 3, 3, 3)
    levels = map_levels(boxes, 2, 4, 56, 3)
    # sqrt areas 20, ~102.2, 55, ~136.5, 1 -> k = floor(3 + log2(s / 56)) = 1, 3, 2, 4, -3 -> clamped to [2, 4]
    assert levels.tolist() == [0, 1, 0, 2, 0]
    rois = torch.tensor(
        [[0, 0.0, 0.0, 20.0, 20.0], [0, 10.0, 5.0, 120.0, 100.0], [1, 5.0, 5.0, 60.0, 60.0], [1, 1.0, 2.0, 150.0, 127.0], [1, 3.0, 3.0, 4.0, 4.0]]
    )
    names, scales = ["0", "1", "2"], [0.25, 0.125, 0.0625]
    for k in range(5):
        level = levels[k].item()
        expected = roi_align(feats[names[level]], rois[k : k + 1], 3, scales[level], 2, aligned=False)
        assert torch.equal(out[k : k + 1], expected)


def test_multiscale_single_level_is_plain_roi_align_and_default_canonical():
    g = torch.Generator().manual_seed(11)
    feats = {"feat": torch.randn(1, 2, 38, 63, generator=g), "other": torch.randn(1, 2, 19, 32, generator=g)}
    boxes = [torch.tensor([[10.0, 20.0, 300.0, 200.0], [0.0, 0.0, 999.0, 599.0]])]
    out = MultiScaleRoIAlign(["feat"], 7, 2)(feats, boxes, [(600, 1000)])
    assert torch.equal(out, roi_align(feats["feat"], boxes, 7, 1 / 16, 2, aligned=False))
    two = MultiScaleRoIAlign(["feat", "other"], 7, 2)(feats, boxes, [(600, 1000)])
    # Default canonical 224 at level 4, levels 4..5: sqrt areas ~228 -> 4, ~774 -> 5.
    assert torch.equal(two[0], out[0])
    assert torch.equal(two[1:], roi_align(feats["other"], [boxes[0][1:]], 7, 1 / 32, 2))


def test_multiscale_gradient_and_layouts():
    # The levels' results are scattered into one NCHW-contiguous tensor; gradients flow back to
    # every level as through separate roi_align calls, and channels-last features (what the
    # backbones give) pool to the same numbers as NCHW ones.
    g = torch.Generator().manual_seed(12)
    feats = {"0": torch.randn(1, 4, 32, 40, generator=g), "1": torch.randn(1, 4, 16, 20, generator=g)}
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 5.0, 120.0, 100.0], [4.0, 8.0, 30.0, 40.0]])]
    pooler = MultiScaleRoIAlign(["0", "1"], 3, 2, canonical_scale=56, canonical_level=3)
    leaves = {k: v.clone().requires_grad_() for k, v in feats.items()}
    out = pooler(leaves, boxes, [(128, 160)])
    assert out.is_contiguous()
    weight = torch.randn(out.shape, generator=g)
    (out * weight).sum().backward()
    levels = map_levels(boxes, 2, 3, 56, 3).tolist()
    assert sorted(set(levels)) == [0, 1]
    for level, name in enumerate(["0", "1"]):
        leaf = feats[name].clone().requires_grad_()
        idx = [k for k, lv in enumerate(levels) if lv == level]
        pooled = roi_align(leaf, [boxes[0][idx]], 3, 0.25 / 2**level, 2)
        (pooled * weight[idx]).sum().backward()
        torch.testing.assert_close(leaves[name].grad, leaf.grad, rtol=0, atol=1e-6)
    channels_last = {k: v.contiguous(memory_format=torch.channels_last) for k, v in feats.items()}
    assert torch.equal(pooler(channels_last, boxes, [(128, 160)]), out.detach())
    single = roi_align(channels_last["0"], boxes, 3, 0.25, 2)
    assert single.is_contiguous(memory_format=torch.channels_last)  # a view of the pooled rows, no copy
    assert torch.equal(single, roi_align(feats["0"], boxes, 3, 0.25, 2))


def test_multiscale_box_of_no_level_pools_to_zeros():
    # A box with negative or NaN area maps to no level (its level index is not a number): its
    # output stays zero, as in torchvision, never uninitialised memory.  Deterministic mode fills
    # uninitialised tensors with NaN, so an uninitialised result cannot pass by chance.
    g = torch.Generator().manual_seed(13)
    feats = {"0": torch.randn(1, 2, 32, 40, generator=g), "1": torch.randn(1, 2, 16, 20, generator=g)}
    boxes = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 10.0, 50.0], [float("nan"), 0.0, 5.0, 5.0]])]
    pooler = MultiScaleRoIAlign(["0", "1"], 2, 2, canonical_scale=56, canonical_level=3)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out = pooler(feats, boxes, [(128, 160)])
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(out[1:], torch.zeros(2, 2, 2, 2))
    assert torch.equal(out[:1], roi_align(feats["0"], [boxes[0][:1]], 2, 0.25, 2))


def test_multiscale_repr_is_torchvisions():
    pooler = MultiScaleRoIAlign(["0", "1"], 7, 2, canonical_scale=56, canonical_level=3)
    assert repr(pooler) == "MultiScaleRoIAlign(featmap_names=['0', '1'], output_size=(7, 7), sampling_ratio=2)"
    assert repr(MultiScaleRoIAlign(["0"], [7, 5], 0)) == "MultiScaleRoIAlign(featmap_names=['0'], output_size=(7, 5), sampling_ratio=0)"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_nan_and_minus_inf_as_the_kernel(dtype):
    # The kernel's maximum starts at -FLT_MAX and grows through `>` only: NaN is skipped, a bin of
    # only -inf / NaN gives -FLT_MAX and no gradient, an empty bin gives 0 and no gradient.
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[[[nan, 2.0, -inf, -inf], [1.0, nan, -inf, nan]]]], dtype=dtype)
    rois = torch.tensor([[0.0, 0.0, 0.0, 3.0, 1.0], [0.0, 7.0, 0.0, 9.0, 1.0]], dtype=dtype)  # the 2nd is off the map
    for requires_grad in (False, True):
        xx = x.clone().requires_grad_(requires_grad)
        out = roi_pool(xx, rois, (1, 2), 1.0)  # bins x in [0, 2) and [2, 4) of both rows
        expected = torch.tensor([[[[2.0, -_FLT_MAX]]], [[[0.0, 0.0]]]], dtype=dtype)
        assert torch.equal(out.detach(), expected)
        if requires_grad:
            out.backward(torch.tensor([[[[1.0, 5.0]]], [[[7.0, 9.0]]]], dtype=dtype))
            assert torch.equal(xx.grad, torch.tensor([[[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], dtype=dtype))
    ref, arg = reference_roi_pool(x, rois, 1, 2, 1.0)
    assert torch.equal(ref.to(dtype), expected) and arg.view(-1).tolist() == [1, -1, -1, -1]


def test_roi_pool_values_at_or_below_lowest_float_pass_no_gradient():
    # float64 values at or below -FLT_MAX never exceed the kernel's starting maximum.
    x = torch.tensor([[[[-1e300, -_FLT_MAX, -3.0e38]]]], dtype=torch.float64, requires_grad=True)
    out = roi_pool(x, torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 2.0, 0.0]], dtype=torch.float64), 1)
    assert out.view(-1).tolist() == [-_FLT_MAX, -3.0e38]
    out.sum().backward()
    assert x.grad.view(-1).tolist() == [0.0, 0.0, 1.0]
