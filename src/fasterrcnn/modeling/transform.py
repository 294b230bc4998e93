"""From a list of images to one padded batch, and detections back to original pixels.

Shape shorthand:
    N   images;  H x W  an image's size;  H' x W'  after resizing;  Hp x Wp  the padded batch
    K   boxes of an image

Same semantics as torchvision's ``GeneralizedRCNNTransform``: each image is normalized, then
resized so that its short side is ``min_size`` unless its long side would exceed ``max_size``
(bilinear, ``recompute_scale_factor=True``), then the batch is zero-padded at the bottom/right to
a multiple of ``size_divisible``. Boxes are ``(x1, y1, x2, y2)`` pixels; they are scaled by the
ratio of new to old size per axis.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fasterrcnn.config import PIXEL_FORMATS


@dataclass
class ImageList:
    """A padded batch ``tensors`` [N, 3, Hp, Wp] and the size (h, w) of every image inside it."""

    tensors: Tensor
    image_sizes: list[tuple[int, int]]


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale boxes [K, 4] from an image of ``original_size`` (h, w) to one of ``new_size`` (float32 ratios, as torchvision)."""
    ratio_h = torch.tensor(new_size[0], dtype=torch.float32, device=boxes.device) / torch.tensor(original_size[0], dtype=torch.float32, device=boxes.device)
    ratio_w = torch.tensor(new_size[1], dtype=torch.float32, device=boxes.device) / torch.tensor(original_size[1], dtype=torch.float32, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def resize_image(image: Tensor, min_size: int, max_size: int) -> Tensor:
    """Resize [3, H, W] -> [3, H', W'] with scale = min(min_size / min(H, W), max_size / max(H, W)) (float32 math)."""
    im_shape = torch.tensor(image.shape[-2:])
    scale = torch.min(float(min_size) / torch.min(im_shape).to(torch.float32), float(max_size) / torch.max(im_shape).to(torch.float32))
    return F.interpolate(image[None], size=None, scale_factor=scale.item(), mode="bilinear", recompute_scale_factor=True, align_corners=False)[0]


class GeneralizedRCNNTransform(nn.Module):
    """Normalize, resize and batch images (and resize their target boxes); map detections back.

    pixel_format "rgb01": ``(image - mean) / std`` on RGB in [0, 1] (ImageNet backbones);
    "caffe_bgr255": channels flipped to BGR, multiplied by 255, then ``(image - mean) / std``
    (the paper's Caffe VGG16, std 1).
    """

    def __init__(self, min_size: int, max_size: int, image_mean, image_std, *, pixel_format: str = "rgb01", size_divisible: int = 32):
        super().__init__()
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
        self.min_size = int(min_size)
        self.max_size = int(max_size)
        self.image_mean = tuple(float(m) for m in image_mean)
        self.image_std = tuple(float(s) for s in image_std)
        self.pixel_format = pixel_format
        self.size_divisible = int(size_divisible)

    @contextmanager
    def resizing_to(self, min_size: int, max_size: int) -> Iterator[None]:
        """Resize to ``min_size`` / ``max_size`` inside the block (a batch's scale jitter, a test-time scale);
        the configured sizes again after it."""
        saved = self.min_size, self.max_size
        self.min_size, self.max_size = min_size, max_size
        try:
            yield
        finally:
            self.min_size, self.max_size = saved

    def normalize(self, image: Tensor) -> Tensor:
        """[3, H, W] RGB in [0, 1] -> normalized [3, H, W] (a new tensor).

        One new tensor, then in-place steps (the same operations in the same order, so the same
        values): a full-size image costs one copy, not three.
        """
        if not image.is_floating_point():  # torchvision's error (an integer image has no [0, 1] range to normalize)
            raise TypeError(f"Expected input images to be of floating type (in range [0, 1]), but found type {image.dtype} instead")
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        if self.pixel_format == "caffe_bgr255":
            out = image.flip(0).mul_(255.0).sub_(mean[:, None, None])
        else:
            out = image - mean[:, None, None]
        return out.div_(std[:, None, None])

    def batch_images(self, images: list[Tensor]) -> Tensor:
        """Zero-pad images [3, H', W'] (top-left aligned) to one [N, 3, Hp, Wp], Hp and Wp multiples of size_divisible.

        The batch is laid out channels-last (strides of [N, Hp, Wp, 3]); convolutions keep that
        layout, which makes the backbone and the RPN head 25-40 % faster on CPU, and the RoI
        poolers read channels-last features without a copy.
        """
        stride = float(self.size_divisible)
        hp = int(math.ceil(max(img.shape[1] for img in images) / stride) * stride)
        wp = int(math.ceil(max(img.shape[2] for img in images) / stride) * stride)
        batched = images[0].new_zeros((len(images), images[0].shape[0], hp, wp)).contiguous(memory_format=torch.channels_last)
        for i, img in enumerate(images):
            batched[i, :, : img.shape[1], : img.shape[2]].copy_(img)
        return batched

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        """Images [3, H, W] -> ImageList; targets' "boxes" resized (new dicts; the inputs are not modified)."""
        out_images, out_targets = [], None if targets is None else []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            image = resize_image(self.normalize(image), self.min_size, self.max_size)
            out_images.append(image)
            if targets is not None:
                target = dict(targets[i])
                target["boxes"] = resize_boxes(target["boxes"], (h, w), tuple(image.shape[-2:]))
                out_targets.append(target)
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in out_images]
        return ImageList(self.batch_images(out_images), image_sizes), out_targets

    def postprocess(self, detections: list[dict[str, Tensor]], image_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Scale each detection's "boxes" from the resized image back to the original image."""
        out = []
        for det, size, orig in zip(detections, image_sizes, original_sizes):
            det = dict(det)
            det["boxes"] = resize_boxes(det["boxes"], size, orig)
            out.append(det)
        return out
