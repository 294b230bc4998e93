"""Transform: torchvision's resize sizes, normalisation (ImageNet and Caffe), padding, inverse mapping."""

import pytest
import torch

from fasterrcnn.config import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD
from fasterrcnn.modeling.transform import GeneralizedRCNNTransform, resize_boxes, resize_image


@pytest.mark.parametrize(
    "shape, min_size, max_size, expected",
    [
        ((480, 640), 800, 1333, (800, 1066)),  # torchvision's fasterrcnn_resnet50_fpn on the parity image
        ((480, 640), 320, 640, (320, 426)),  # fasterrcnn_mobilenet_v3_large_320_fpn
        ((375, 500), 600, 1000, (600, 800)),  # a VOC image, the paper's scales
        ((300, 1500), 600, 1000, (200, 1000)),  # long side capped by max_size
        ((256, 256), 256, 384, (256, 256)),
    ],
)
def test_resize_sizes_as_torchvision(shape, min_size, max_size, expected):
    assert tuple(resize_image(torch.zeros(3, *shape), min_size, max_size).shape[-2:]) == expected


def test_normalize_imagenet_and_caffe():
    image = torch.zeros(3, 1, 2)
    image[:, 0, 0] = torch.tensor([1.0, 0.5, 0.0])
    rgb = GeneralizedRCNNTransform(2, 2, IMAGENET_MEAN, IMAGENET_STD, pixel_format="rgb01").normalize(image)
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0 - 0.406) / 0.225]))
    caffe = GeneralizedRCNNTransform(2, 2, CAFFE_BGR_MEAN, (1.0, 1.0, 1.0), pixel_format="caffe_bgr255").normalize(image)
    assert torch.allclose(caffe[:, 0, 0], torch.tensor([-102.9801, 127.5 - 115.9465, 255.0 - 122.7717]))
    assert torch.allclose(caffe[:, 0, 1], -torch.tensor(CAFFE_BGR_MEAN))
    assert image[0, 0, 0] == 1.0  # input untouched


def test_batch_padding_divisible_top_left():
    t = GeneralizedRCNNTransform(100, 1000, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size_divisible=32)
    a, b = torch.ones(3, 100, 150), 2 * torch.ones(3, 120, 90)
    batched = t.batch_images([a, b])
    assert batched.shape == (2, 3, 128, 160)
    assert torch.equal(batched[0, :, :100, :150], a) and batched[0, :, 100:].abs().sum() == 0 and batched[0, :, :, 150:].abs().sum() == 0
    assert torch.equal(batched[1, :, :120, :90], b) and batched[1, :, 120:].abs().sum() == 0 and batched[1, :, :, 90:].abs().sum() == 0
    # Laid out channels-last: the backbone's convolutions keep that layout (faster on CPU).
    assert batched.is_contiguous(memory_format=torch.channels_last) and not batched.is_contiguous()


def test_forward_resizes_targets_and_postprocess_inverts():
    t = GeneralizedRCNNTransform(200, 400, IMAGENET_MEAN, IMAGENET_STD, size_divisible=16)
    images = [torch.rand(3, 100, 150), torch.rand(3, 50, 300)]
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    targets = [{"boxes": boxes, "labels": torch.tensor([1])}, {"boxes": boxes.clone(), "labels": torch.tensor([2])}]
    image_list, out = t(images, targets)
    assert image_list.image_sizes == [(200, 300), (66, 400)]
    assert image_list.tensors.shape == (2, 3, 208, 400)
    assert torch.allclose(out[0]["boxes"], torch.tensor([[20.0, 40.0, 60.0, 80.0]]))
    assert torch.allclose(out[1]["boxes"], torch.tensor([[10 * 400 / 300, 20 * 66 / 50, 30 * 400 / 300, 40 * 66 / 50]]))
    assert torch.equal(targets[0]["boxes"], boxes)  # inputs not modified
    back = t.postprocess([{"boxes": o["boxes"]} for o in out], image_list.image_sizes, [(100, 150), (50, 300)])
    assert torch.allclose(back[0]["boxes"], boxes) and torch.allclose(back[1]["boxes"], boxes, atol=1e-5)


def test_resize_boxes_per_axis_ratio():
    out = resize_boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), (200, 300), (100, 600))
    assert torch.equal(out, torch.tensor([[20.0, 10.0, 60.0, 20.0]]))


def test_an_integer_image_is_a_type_error_as_in_torchvision():
    transform = GeneralizedRCNNTransform(16, 32, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    with pytest.raises(TypeError, match=r"^Expected input images to be of floating type \(in range \[0, 1\]\), but found type torch.uint8 instead$"):
        transform([torch.zeros(3, 8, 8, dtype=torch.uint8)])
