import pytest
import torch

from fasterrcnn.ops import box_area, box_convert, box_iou, clip_boxes_to_image, remove_small_boxes


def test_box_area_values_and_dtype():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.5, 5.0], [2.0, 2.0, 2.0, 7.0]], dtype=torch.float64)
    area = box_area(boxes)
    assert area.dtype == torch.float64
    assert torch.equal(area, torch.tensor([6.0, 2.0, 0.0], dtype=torch.float64))
    assert torch.equal(box_area(boxes.half()), torch.tensor([6.0, 2.0, 0.0]))  # float32, as torchvision


def test_box_area_widens_small_types_as_torchvision():
    # A 100 x 100 int8 box has area 10000 (int8 wraps it to 16); uint8 differences must not wrap
    # either (x2 < x1 gives a negative area, as in float); float16 areas above 65504 are finite.
    big = torch.tensor([[0, 0, 100, 100], [10, 20, 5, 120]])
    for dtype in (torch.int8, torch.int16, torch.uint8):
        area = box_area(big.to(dtype))
        assert area.dtype == torch.int32 and area.tolist() == [10000, -500]
    for dtype in (torch.int32, torch.int64):
        assert box_area(big.to(dtype)).dtype == dtype
    for dtype in (torch.float16, torch.bfloat16):
        area = box_area(torch.tensor([[0.0, 0.0, 300.0, 400.0]], dtype=dtype))
        assert area.dtype == torch.float32 and area.tolist() == [120000.0]


def test_box_iou_small_integer_types_do_not_overflow():
    a = torch.tensor([[0, 0, 100, 100]])
    b = torch.tensor([[50, 0, 120, 100]])  # intersection 5000, union 10000 + 7000 - 5000 = 12000
    for dtype in (torch.int8, torch.int16, torch.uint8):
        iou = box_iou(a.to(dtype), b.to(dtype))
        assert iou.dtype == torch.float32 and iou.item() == torch.tensor(5 / 12, dtype=torch.float32).item()


def test_box_iou_hand_computed_table():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([
        [1.0, 1.0, 3.0, 3.0],  # overlap 1, union 7
        [0.0, 0.0, 2.0, 2.0],  # a[0] itself
        [2.0, 0.0, 4.0, 2.0],  # touches a[0] along an edge: intersection 0
        [10.0, 10.0, 11.0, 11.0],  # disjoint
        [0.0, 0.0, 1.0, 1.0],  # inside a[0]: 1/4
        [1.0, 1.0, 1.0, 1.0],  # zero area inside a[0]
    ], dtype=torch.float64)
    expected = torch.tensor([
        [1 / 7, 1.0, 0.0, 0.0, 1 / 4, 0.0],
        # a[1] = [0,0,4,1] area 4: vs b0 inter 0 (y overlap 0); vs b1 inter 2, union 6; vs b2 inter 2 union 6;
        # vs b4 inter 1 union 4
        [0.0, 2 / 6, 2 / 6, 0.0, 1 / 4, 0.0],
    ], dtype=torch.float64)
    iou = box_iou(a, b)
    assert iou.shape == (2, 6)
    assert iou.dtype == torch.float64
    torch.testing.assert_close(iou, expected, rtol=0, atol=1e-15)


def test_box_iou_zero_area_never_nan():
    point = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    iou = box_iou(point, point)
    assert not torch.isnan(iou).any()
    assert torch.equal(iou, torch.zeros(3, 3))


def test_box_iou_gradient_finite_for_zero_area_boxes():
    boxes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]], requires_grad=True)
    box_iou(boxes, boxes).sum().backward()
    assert torch.isfinite(boxes.grad).all()


def test_box_iou_gradcheck():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.1], [0.3, 0.2, 3.1, 1.7]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.1, 0.9, 3.2, 3.3], [0.5, 0.4, 2.5, 1.9], [-1.0, -0.5, 1.2, 1.3]],
                     dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(box_iou, (a, b))


def test_box_iou_half_precision_keeps_dtype():
    a = torch.tensor([[0.0, 0.0, 400.0, 400.0]])  # area 160000 overflows float16; IoU is computed in float32
    b = torch.tensor([[0.0, 0.0, 400.0, 200.0]])
    for dtype in (torch.float16, torch.bfloat16):
        iou = box_iou(a.to(dtype), b.to(dtype))
        assert iou.dtype == dtype
        assert iou.item() == 0.5


def test_box_iou_empty_shapes():
    assert box_iou(torch.zeros(0, 4), torch.zeros(3, 4)).shape == (0, 3)
    assert box_iou(torch.zeros(2, 4), torch.zeros(0, 4)).shape == (2, 0)
    assert box_area(torch.zeros(0, 4, dtype=torch.float64)).shape == (0,)
    assert box_area(torch.zeros(0, 4, dtype=torch.float64)).dtype == torch.float64


def test_clip_boxes_to_image():
    boxes = torch.tensor([[-1.0, -2.0, 5.0, 30.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    clipped = clip_boxes_to_image(boxes, (20, 4))  # (height, width)
    assert clipped.dtype == torch.float64
    assert torch.equal(clipped, torch.tensor([[0.0, 0.0, 4.0, 20.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    batched = torch.tensor([[[-1.0, -1.0, 50.0, 50.0]] * 3] * 2)  # [2, 3, 4]
    out = clip_boxes_to_image(batched, (10, 20))
    assert out.shape == (2, 3, 4)
    assert torch.equal(out, torch.tensor([0.0, 0.0, 20.0, 10.0]).expand(2, 3, 4))
    assert clip_boxes_to_image(torch.zeros(0, 4), (5, 5)).shape == (0, 4)


def test_remove_small_boxes():
    boxes = torch.tensor([
        [0.0, 0.0, 2.0, 2.0],  # 2 x 2: kept
        [0.0, 0.0, 0.5, 5.0],  # narrow
        [0.0, 0.0, 5.0, 0.5],  # flat
        [1.0, 1.0, 2.0, 2.0],  # exactly min_size: kept
    ])
    keep = remove_small_boxes(boxes, 1.0)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, torch.tensor([0, 3]))
    empty = remove_small_boxes(torch.zeros(0, 4), 1.0)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_box_convert_exact_values():
    xyxy = torch.tensor([[1.0, 2.0, 4.0, 6.0]], dtype=torch.float64)
    xywh = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    cxcywh = torch.tensor([[2.5, 4.0, 3.0, 4.0]], dtype=torch.float64)
    formats = {"xyxy": xyxy, "xywh": xywh, "cxcywh": cxcywh}
    for fin, src in formats.items():
        for fout, dst in formats.items():
            out = box_convert(src, fin, fout)
            assert out.dtype == torch.float64
            assert torch.equal(out, dst), (fin, fout)


def test_box_convert_round_trips():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 500
    boxes = torch.cat((xy, xy + torch.rand(50, 2, generator=g, dtype=torch.float64) * 100), dim=1)
    for fmt in ("xywh", "cxcywh"):
        back = box_convert(box_convert(boxes, "xyxy", fmt), fmt, "xyxy")
        torch.testing.assert_close(back, boxes, rtol=0, atol=1e-12)
    assert box_convert(torch.zeros(0, 4), "xyxy", "cxcywh").shape == (0, 4)
    with pytest.raises(ValueError, match="unknown box format"):
        box_convert(boxes, "xyxy", "yxyx")


def test_inputs_not_modified():
    a = torch.tensor([[-1.0, 0.0, 5.0, 3.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    a0, b0 = a.clone(), b.clone()
    box_area(a)
    box_iou(a, b)
    clip_boxes_to_image(a, (2, 2))
    remove_small_boxes(a, 0.5)
    for fmt in ("xyxy", "xywh", "cxcywh"):
        box_convert(a, "xyxy", fmt)
        box_convert(a, fmt, "xyxy")
    assert torch.equal(a, a0) and torch.equal(b, b0)
    assert box_convert(a, "xyxy", "xyxy").data_ptr() != a.data_ptr()


def test_bad_shapes_raise_value_error():
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        box_area(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="boxes2"):
        box_iou(torch.zeros(3, 4), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        clip_boxes_to_image(torch.zeros(3, 3), (4, 4))
    with pytest.raises(ValueError):
        remove_small_boxes(torch.zeros(2, 4, 1), 1.0)
    with pytest.raises(ValueError):
        box_convert(torch.zeros(4), "xyxy", "xywh")


def test_box_iou_mixed_and_integer_dtypes():
    a = torch.tensor([[0, 0, 2, 2]])
    b = torch.tensor([[1, 1, 3, 3]])
    iou = box_iou(a, b)
    assert iou.dtype == torch.float32 and iou.item() == torch.tensor(1 / 7, dtype=torch.float32).item()
    mixed = box_iou(a.float(), b.double())
    assert mixed.dtype == torch.float64 and mixed.item() == 1 / 7
