"""Sliced inference and test-time augmentation (TTA) of one image with a FasterRCNN in eval mode.

``detect_image(model, image, options, device=...)`` returns the image's detections
``{"boxes" [K, 4], "labels" [K], "scores" [K]}`` (CPU, by decreasing score), boxes xyxy in the pixels
of ``image``, a ``Tensor[3, H, W]`` on the CPU: uint8 (0..255, e.g. ``data.images.load_image_uint8``)
or float in [0, 1].

**Slicing** (``options.slice = SIZE``). The image is covered by windows of SIZE pixels overlapping by
``options.overlap`` (``ops.tiles.tile_windows``: edge windows shifted inside the image, never padded).
The tiles are cut from the image at full resolution and go through the model ``options.tile_batch``
at a time (the model resizes each tile to its input size, as any image, so a 640 tile of a model with
an 800-pixel input is enlarged by 1.25); their boxes are shifted by the window's corner into image
pixels. With ``options.full_image`` (the default) one more pass sees the whole image at the model's
input size, for the objects larger than a tile. The passes' detections are then merged class-wise
(``options.merge``, ``ops.merge.merge_detections``): ``"nmm"`` (the default), greedy non-maximum
merging with intersection over the smaller box > 0.5, joins the parts of an object cut by a tile edge
into its enclosing box; ``"nms"`` keeps the best-scored of boxes with IoU > 0.5 (see docs/small-objects.md
for the measured comparison). When one window covers the whole image (``SIZE >=`` both sides) the tile
pass is the full-image pass: the image is detected once, exactly as without slicing.

Memory: a tile is converted to float on its own; the full-image pass of a uint8 image uses a float
copy reduced by a power of two (``data.images.reduction_factor``) built strip by strip
(``reduced_float``). So besides the uint8 image only one batch of float tiles and one reduced image
exist: a 12000 x 12000 image (432 MB as uint8) never becomes a 1.7 GB float tensor.

**TTA** (``options.tta``). Every pass (the whole image, or each tile) runs the model on
``TTA_PASSES``: the input as it is, its horizontal flip, and the input enlarged by 1.25 (the model's
``min_size`` / ``max_size`` times 1.25 for that pass); flipped boxes are flipped back, and the passes'
detections are fused by weighted box fusion (``ops.merge.weighted_box_fusion``, IoU > 0.55), chosen
over box voting by measurement (docs/small-objects.md). It costs about 1 + 1 + 1.25 ** 2 = 3.6 forward
passes. The model's input size is changed for the enlarged pass and restored after it: one
``detect_image`` at a time per model (``serve`` holds a lock around its detector).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fasterrcnn.data.transforms import hflip_boxes
from fasterrcnn.errors import ConfigError
from fasterrcnn.ops.boxes import clip_boxes_to_image
from fasterrcnn.ops.merge import MERGE_RULES, box_voting, merge_detections, weighted_box_fusion
from fasterrcnn.ops.tiles import tile_windows

__all__ = ["TTA_PASSES", "InferenceOptions", "check_probabilities", "detect_image", "load_uint8", "reduced_float"]

# Test-time augmentation: (scale of the model's input size, horizontal flip) of each pass.
TTA_PASSES = ((1.0, False), (1.0, True), (1.25, False))
TTA_FUSIONS = ("wbf", "voting")
TTA_FUSION_IOU = 0.55  # weighted box fusion's IoU threshold (the paper's and ensemble_boxes' default)
MERGE_THRESHOLD = 0.5  # across tiles: IoS for "nmm", IoU for "nms"
_STRIP_BYTES = 8 * 2**20  # float bytes of a strip of the image reduced for the full-image pass


@dataclass(frozen=True)
class InferenceOptions:
    """How ``detect_image`` looks at an image (see the module docstring).

    ``slice``: tile size in pixels (None: no slicing); ``overlap``: fraction of a tile shared with its
    neighbour, in [0, 1); ``full_image``: with ``slice``, one more pass over the whole image;
    ``tta``: test-time augmentation; ``merge``: ``"nmm"`` or ``"nms"`` across tiles; ``tile_batch``:
    tiles per forward pass; ``fusion``: how TTA's passes are fused, ``"wbf"`` (weighted box fusion) or
    ``"voting"`` (``ops.merge.box_voting``)."""

    slice: int | None = None
    overlap: float = 0.2
    full_image: bool = True
    tta: bool = False
    merge: str = "nmm"
    tile_batch: int = 4
    fusion: str = "wbf"

    def __post_init__(self):
        if self.slice is not None and (isinstance(self.slice, bool) or not isinstance(self.slice, int) or self.slice < 32):
            raise ConfigError(f"slice must be a tile size of at least 32 pixels, got {self.slice!r}")
        if not (isinstance(self.overlap, (int, float)) and 0.0 <= self.overlap < 1.0):
            raise ConfigError(f"overlap must be a fraction in [0, 1), got {self.overlap!r}")
        if self.merge not in MERGE_RULES:
            raise ConfigError(f"merge must be one of {', '.join(MERGE_RULES)}, got {self.merge!r}")
        if self.fusion not in TTA_FUSIONS:
            raise ConfigError(f"fusion must be one of {', '.join(TTA_FUSIONS)}, got {self.fusion!r}")
        if isinstance(self.tile_batch, bool) or not isinstance(self.tile_batch, int) or self.tile_batch < 1:
            raise ConfigError(f"tile_batch must be a whole number >= 1, got {self.tile_batch!r}")

    @property
    def plain(self) -> bool:
        """One forward pass over the whole image (no slicing, no TTA)."""
        return self.slice is None and not self.tta


def check_probabilities(probabilities: bool, options: InferenceOptions) -> None:
    """Class probabilities are the box head's softmax row of one RoI: only plain inference has one per box
    (tiles and augmented passes merge or fuse boxes of several passes). ConfigError otherwise."""
    if probabilities and not options.plain:
        raise ConfigError("class probabilities go with plain inference: sliced and test-time-augmented detections merge boxes of several passes")


def reduced_float(image: Tensor, factor: int) -> Tensor:
    """``image`` [3, H, W] uint8 -> float32 [3, ceil(H / factor), ceil(W / factor)] in [0, 1], each pixel the
    mean of its ``factor`` x ``factor`` block (partial blocks at the edges: the mean of their pixels),
    computed strip by strip: no float copy of the whole image is made."""
    if image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    height, width = image.shape[-2:]
    if factor == 1:
        return image.float().div_(255)
    out = torch.empty((3, math.ceil(height / factor), math.ceil(width / factor)), dtype=torch.float32)
    rows = max(factor, _STRIP_BYTES // (12 * width) // factor * factor)
    for top in range(0, height, rows):
        strip = image[:, top : top + rows].float()  # [3, rows, W]
        pooled = F.avg_pool2d(strip[None], factor, ceil_mode=True)[0]  # [3, ceil(rows / f), ceil(W / f)]
        out[:, top // factor : top // factor + pooled.shape[1]] = pooled.div_(255)
    return out


@contextmanager
def _input_scale(model: torch.nn.Module, scale: float):
    """The model's resize to ``scale`` times its input size for the block (restored after it)."""
    if scale == 1.0:
        yield
        return
    transform = model.transform
    with transform.resizing_to(round(transform.min_size * scale), round(transform.max_size * scale)):
        yield


def _forward(model: torch.nn.Module, tensors: list[Tensor], options: InferenceOptions, autocast) -> list[dict[str, Tensor]]:
    """Detections of each float image of ``tensors`` (on the model's device) in its pixels, on the CPU;
    with ``options.tta`` the detections of ``TTA_PASSES`` fused by ``options.fusion``."""
    tta = options.tta
    passes = TTA_PASSES if tta else ((1.0, False),)
    found: list[list[dict[str, Tensor]]] = [[] for _ in tensors]
    for scale, flip in passes:
        inputs = [t.flip(-1) for t in tensors] if flip else tensors
        with _input_scale(model, scale), autocast:
            outputs = model(inputs)
        for per_image, tensor, output in zip(found, tensors, outputs):
            boxes = output["boxes"].float().cpu()
            if flip:
                boxes = hflip_boxes(boxes, tensor.shape[-1])
            per_image.append({"boxes": boxes, "scores": output["scores"].float().cpu(), "labels": output["labels"].cpu()})
    if not tta:
        return [per_image[0] for per_image in found]
    fused = []
    for per_image in found:
        boxes, scores, labels = (torch.cat([d[k] for d in per_image]) for k in ("boxes", "scores", "labels"))
        if options.fusion == "wbf":
            boxes, scores, labels = weighted_box_fusion(boxes, scores, labels, passes=len(passes), threshold=TTA_FUSION_IOU)
        else:
            boxes, scores, labels = box_voting(boxes, scores, labels)
        fused.append({"boxes": boxes, "scores": scores, "labels": labels})
    return fused


def _above(detection: dict[str, Tensor], score_threshold: float) -> dict[str, Tensor]:
    keep = detection["scores"] >= score_threshold
    return {key: value[keep] for key, value in detection.items()}


def _as_float(image: Tensor, device: torch.device) -> Tensor:
    """A tile (uint8 or float) as float32 in [0, 1] on ``device`` (uint8 moved first: 4x fewer bytes)."""
    if image.dtype == torch.uint8:
        return image.to(device).float().div_(255)
    return image.to(device, torch.float32)


@torch.inference_mode()
def detect_image(
    model: torch.nn.Module,
    image: Tensor,
    options: InferenceOptions,
    *,
    device: str | torch.device = "cpu",
    amp_dtype: torch.dtype | None = None,
    score_threshold: float = 0.0,
) -> dict[str, Tensor]:
    """Detections of ``model`` (eval mode, on ``device``) on ``image`` (see the module docstring); each pass's
    detections scoring below ``score_threshold`` are dropped before the passes are merged (fewer to merge)."""
    from fasterrcnn.data.images import DEFAULT_REDUCE_TO, reduction_factor
    from fasterrcnn.device import autocast_context
    from fasterrcnn.modeling.transform import GeneralizedRCNNTransform

    if image.ndim != 3 or image.shape[0] != 3 or not (image.dtype == torch.uint8 or image.is_floating_point()):
        raise ValueError(f"expected a uint8 or float Tensor[3, H, W], got {image.dtype} Tensor{list(image.shape)}")
    if options.tta and not isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform):
        raise ConfigError("test-time augmentation rescales the model's input: it needs a checkpoint's model, not an exported one")
    device = torch.device(device)
    autocast = autocast_context(device, amp_dtype) if amp_dtype is not None else nullcontext()
    height, width = image.shape[-2:]
    windows = tile_windows(height, width, options.slice, options.overlap) if options.slice is not None else None
    found: list[dict[str, Tensor]] = []
    if windows is not None and len(windows) > 1:
        for start in range(0, len(windows), options.tile_batch):
            batch = windows[start : start + options.tile_batch].tolist()
            tiles = [_as_float(image[:, y1:y2, x1:x2], device) for x1, y1, x2, y2 in batch]
            for (x1, y1, _, _), detection in zip(batch, _forward(model, tiles, options, autocast)):
                shift = torch.tensor([x1, y1, x1, y1], dtype=detection["boxes"].dtype)
                found.append(_above({**detection, "boxes": detection["boxes"] + shift}, score_threshold))
            del tiles
    if windows is None or len(windows) == 1 or options.full_image:  # the whole image at the model's input size
        if image.dtype == torch.uint8 and windows is not None and len(windows) == 1:  # no larger than a tile
            whole = _as_float(image, device)
        elif image.dtype == torch.uint8:
            transform = getattr(model, "transform", None)
            reduce_to = (transform.min_size, transform.max_size) if transform is not None else DEFAULT_REDUCE_TO
            whole = reduced_float(image, reduction_factor((height, width), *reduce_to)).to(device)
        else:
            whole = image.to(device, torch.float32)
        detection = _forward(model, [whole], options, autocast)[0]
        scale = torch.tensor([width / whole.shape[-1], height / whole.shape[-2]] * 2)
        boxes = detection["boxes"] * scale if whole.shape[-2:] != image.shape[-2:] else detection["boxes"]
        found.append(_above({**detection, "boxes": boxes}, score_threshold))
        del whole
    boxes, scores, labels = (torch.cat([d[k] for d in found]) for k in ("boxes", "scores", "labels"))
    if len(found) > 1:
        boxes, scores, labels = merge_detections(boxes, scores, labels, options.merge, MERGE_THRESHOLD)
        boxes = clip_boxes_to_image(boxes, (height, width))
    return {"boxes": boxes, "labels": labels, "scores": scores}


def load_uint8(image) -> Tensor:
    """An image for sliced inference as ``Tensor[3, H, W]``, full resolution, without a float copy: a path or
    binary file object decoded whole to uint8 (``data.images.load_image_uint8``, up to 150 megapixels; a
    file's position is restored), a PIL image or a uint8 NumPy array ``[H, W, 3]`` (RGB) viewed as uint8, a
    float ``Tensor[3, H, W]`` in [0, 1] as given."""
    import numpy as np
    from PIL import Image

    from fasterrcnn.data.images import is_file_object, load_image_uint8, position_kept, rgb_uint8

    if is_file_object(image):
        with position_kept(image):
            return load_image_uint8(image)
    if isinstance(image, (Image.Image, np.ndarray)):
        return rgb_uint8(image)
    if isinstance(image, Tensor):
        if not image.is_floating_point() or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a float Tensor[3, H, W] (RGB in [0, 1]), got {image.dtype} Tensor{list(image.shape)}")
        return image
    return load_image_uint8(image)  # a path
