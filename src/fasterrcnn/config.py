"""Configuration: frozen dataclasses with documented defaults, and named presets.

A preset is a pair (``ModelConfig``, ``TrainConfig``). Modules never read this file: the model
builder turns a ``ModelConfig`` into explicit keyword arguments, the trainer does the same with
``TrainConfig``. Configs round-trip through plain dicts (``to_dict`` / ``from_dict``) so that they
can be stored in checkpoints (``weights_only=True``) and in ``config.json``.

``num_classes`` always counts foreground classes only; the model adds the background class 0.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasterrcnn.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Caffe convention of the paper's VGG16: BGR channel order, 0-255 values, mean subtraction.
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and inference hyper-parameters. Defaults are the paper's (VGG16, Ren et al.)."""

    backbone: str = "vgg16"  # "vgg16", "resnet50", "resnet101" (C4), "resnet50_fpn", "mobilenet_v3_large_fpn", "tiny"
    num_classes: int = 20  # FOREGROUND classes only; the predictor has num_classes + 1 outputs (0 = background)
    trainable_backbone_layers: int | None = None  # None: the backbone's documented default

    # Transform (modeling/transform.py)
    min_size: int = 600
    max_size: int = 1000
    pixel_format: str = "caffe_bgr255"  # "rgb01" (mean/std on RGB in [0, 1]) or "caffe_bgr255"
    image_mean: tuple[float, ...] = CAFFE_BGR_MEAN
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    size_divisible: int = 16

    # Anchors (modeling/anchors.py): one tuple of sizes and of ratios per feature map
    anchor_sizes: tuple[tuple[float, ...], ...] = ((128.0, 256.0, 512.0),)
    aspect_ratios: tuple[tuple[float, ...], ...] = ((0.5, 1.0, 2.0),)

    # Region Proposal Network (modeling/rpn.py)
    rpn_pre_nms_top_n_train: int = 12000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    rpn_min_size: float = 16.0  # proposals smaller than this (transformed-image pixels) are dropped
    rpn_ignore_cross_boundary: bool = True  # the paper ignores anchors crossing the border in training
    rpn_smooth_l1_beta: float = 1.0 / 9.0  # sigma = 3 in the paper's code

    # RoI heads (modeling/roi_heads.py)
    box_pooler: str = "roi_pool"  # "roi_pool" | "roi_align" | "multiscale_roi_align"
    box_pool_size: int = 7
    box_sampling_ratio: int = 2  # RoIAlign only (<= 0: adaptive, as torchvision)
    box_aligned: bool = False  # RoIAlign only: half-pixel offset (detectron2's ROIAlignV2)
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_bg_iou_low: float = 0.1  # background proposals have IoU in [box_bg_iou_low, box_bg_iou_thresh)
    box_batch_size_per_image: int = 128
    box_positive_fraction: float = 0.25
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.3
    box_detections_per_img: int = 100
    box_min_size: float = 1e-2
    box_smooth_l1_beta: float = 1.0
    representation_size: int | None = 4096  # width of the fully connected box head (VGG fc6/fc7, two-MLP); None: the backbone's
    box_head_ranks: tuple[int, int] | None = None  # truncated SVD of fc6 / fc7 (modeling/low_rank.py, `fasterrcnn compress`); None: full


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and schedule. Defaults are the paper's (SGD, lr 0.001, momentum 0.9, wd 0.0005)."""

    batch_size: int = 1  # images per process per iteration
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 0.0005
    warmup_iters: int = 500
    warmup_factor: float = 1.0 / 3.0  # lr multiplier at iteration 0, rising linearly to 1
    lr_steps: tuple[int, ...] = (50000,)  # iterations at which lr is multiplied by lr_gamma
    lr_gamma: float = 0.1
    max_iters: int = 70000
    epochs: int | None = None  # when set, max_iters = epochs * batches per epoch (overrides max_iters)
    grad_clip_norm: float | None = None  # clip the global gradient L2 norm to this; None: no clipping
    hflip_prob: float = 0.5
    seed: int = 0  # data order, flips and the model's sampling are a function of (seed, epoch, iteration)
    log_every: int = 20  # iterations per metrics.jsonl / TensorBoard train record (losses averaged)
    checkpoint_every: int = 1000  # iterations between checkpoints/last.pt + iter_XXXXXXX.pt (and at the end)
    keep_checkpoints: int = 3  # periodic iter_XXXXXXX.pt kept, the newest (last.pt and best.pt always are)
    eval_every: int = 0  # iterations between validation runs (0: only at the end); best.pt by mAP / AP
    max_nonfinite_steps: int = 5  # stop after this many consecutive steps with a NaN / inf loss
    # Several processes (torchrun, engine/distributed.py): global batch = batch_size x processes.
    scale_lr: bool = True  # linear scaling: the optimizer's lr is lr x processes (False: lr as given)
    sync_bn: bool = False  # several processes: BatchNorm statistics over the global batch (SyncBatchNorm)
    amp: bool = False  # mixed precision: autocast in amp_dtype (NMS, box coding and losses stay float32)
    amp_dtype: str = "bf16"  # "bf16" (CUDA or CPU) or "fp16" (CUDA only, with a GradScaler)


@dataclass(frozen=True)
class Preset:
    """A named pair of configurations: ``model`` (architecture and inference) and ``train`` (optimisation and schedule)."""

    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


_TORCHVISION_FPN = dict(  # torchvision's FasterRCNN defaults (COCO: 90 foreground ids)
    num_classes=90,
    min_size=800,
    max_size=1333,
    pixel_format="rgb01",
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
    size_divisible=32,
    rpn_pre_nms_top_n_train=2000,
    rpn_post_nms_top_n_train=2000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_test=1000,
    rpn_min_size=1e-3,
    rpn_ignore_cross_boundary=False,
    box_pooler="multiscale_roi_align",
    box_sampling_ratio=2,
    box_bg_iou_low=0.0,
    box_batch_size_per_image=512,
    box_nms_thresh=0.5,
    box_smooth_l1_beta=1.0 / 9.0,
    representation_size=1024,
)

_C4 = dict(  # ResNet C4 (He et al. 2016, detectron2's C4): res2-res4 body at stride 16, res5 box head
    pixel_format="rgb01",
    image_mean=IMAGENET_MEAN,
    image_std=IMAGENET_STD,
    size_divisible=32,
    rpn_ignore_cross_boundary=False,
    rpn_min_size=0.0,
    box_pooler="roi_align",  # RoIAlign 14x14 (aligned) -> res5 (stride 2) -> 7x7 -> average pool
    box_pool_size=14,
    box_sampling_ratio=0,
    box_aligned=True,
    box_bg_iou_low=0.0,
    box_batch_size_per_image=512,
    box_nms_thresh=0.5,
    box_smooth_l1_beta=0.0,
    representation_size=None,
)

_C4_TRAIN = TrainConfig(batch_size=2, lr=0.005, momentum=0.9, weight_decay=1e-4, warmup_iters=1000, warmup_factor=0.001, lr_steps=(80000, 106667), max_iters=120000)

PRESETS: dict[str, Preset] = {
    # The paper (Ren et al. 2015, VGG16 on PASCAL VOC 07+12): the ModelConfig / TrainConfig defaults.
    "vgg16": Preset("vgg16", ModelConfig(), TrainConfig()),
    "resnet50_c4": Preset("resnet50_c4", ModelConfig(backbone="resnet50", **_C4), _C4_TRAIN),
    "resnet101_c4": Preset("resnet101_c4", ModelConfig(backbone="resnet101", **_C4), _C4_TRAIN),
    # torchvision's fasterrcnn_resnet50_fpn / fasterrcnn_mobilenet_v3_large(_320)_fpn (same detections, same files).
    "resnet50_fpn": Preset(
        "resnet50_fpn",
        ModelConfig(
            backbone="resnet50_fpn",
            anchor_sizes=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
            aspect_ratios=((0.5, 1.0, 2.0),) * 5,
            **_TORCHVISION_FPN,
        ),
        TrainConfig(batch_size=2, lr=0.0025, momentum=0.9, weight_decay=1e-4, warmup_iters=1000, warmup_factor=0.001, lr_steps=(60000, 80000), max_iters=90000),
    ),
    "mobilenet_v3_large_fpn": Preset(
        "mobilenet_v3_large_fpn",
        ModelConfig(
            backbone="mobilenet_v3_large_fpn",
            anchor_sizes=((32.0, 64.0, 128.0, 256.0, 512.0),) * 3,
            aspect_ratios=((0.5, 1.0, 2.0),) * 3,
            rpn_score_thresh=0.05,
            **_TORCHVISION_FPN,
        ),
        TrainConfig(batch_size=2, lr=0.0025, momentum=0.9, weight_decay=4e-5, warmup_iters=1000, warmup_factor=0.001, lr_steps=(60000, 80000), max_iters=90000),
    ),
    "mobilenet_v3_large_320_fpn": Preset(
        "mobilenet_v3_large_320_fpn",
        ModelConfig(
            backbone="mobilenet_v3_large_fpn",
            anchor_sizes=((32.0, 64.0, 128.0, 256.0, 512.0),) * 3,
            aspect_ratios=((0.5, 1.0, 2.0),) * 3,
            rpn_score_thresh=0.05,
            **{**_TORCHVISION_FPN, "min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150},
        ),
        TrainConfig(batch_size=2, lr=0.0025, momentum=0.9, weight_decay=4e-5, warmup_iters=1000, warmup_factor=0.001, lr_steps=(60000, 80000), max_iters=90000),
    ),
    # Small CNN trained from scratch on CPU: ~256 px synthetic shapes (objects ~20-120 px), demo.
    "tiny": Preset(
        "tiny",
        ModelConfig(
            backbone="tiny",
            num_classes=5,  # the synthetic shapes: circle, cross, square, star, triangle
            min_size=256,
            max_size=384,
            pixel_format="rgb01",
            image_mean=IMAGENET_MEAN,
            image_std=IMAGENET_STD,
            size_divisible=8,
            anchor_sizes=((16.0, 32.0, 64.0, 128.0),),
            aspect_ratios=((0.5, 1.0, 2.0),),
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=100,
            rpn_min_size=1e-3,
            rpn_ignore_cross_boundary=False,
            box_pooler="roi_align",
            box_pool_size=7,
            box_sampling_ratio=2,
            box_bg_iou_low=0.0,
            box_batch_size_per_image=64,
            box_nms_thresh=0.5,
            box_smooth_l1_beta=1.0 / 9.0,
            representation_size=256,
        ),
        TrainConfig(batch_size=4, lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_iters=100, warmup_factor=0.01, lr_steps=(900,), max_iters=1200, hflip_prob=0.5),
    ),
}

def get_preset(name: str) -> Preset:
    """Return the named preset, or raise ConfigError listing the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}") from None


def to_dict(config) -> dict[str, Any]:
    """A dataclass config as a dict of plain values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value):
    # JSON has no tuples: lists (nested too) become tuples so that configs stay hashable.
    if isinstance(value, list):
        return tuple(_coerce(v) for v in value)
    return value


def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None):
    """Build ``cls`` (ModelConfig or TrainConfig) from a dict; unknown keys raise ConfigError (naming ``source``)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f" (in {source})" if source is not None else ""
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}{where}")
    return cls(**{k: _coerce(v) for k, v in data.items()})


def replace(config, **overrides):
    """``dataclasses.replace`` with a clear ConfigError for unknown fields."""
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown {type(config).__name__} field(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **overrides)


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON config file as data (never executed); errors name the file."""
    from fasterrcnn.errors import DataError

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(path, f"cannot read config file ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON (line {e.lineno}: {e.msg})") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A config file ``{"preset": NAME, "model": {...}, "train": {...}}`` (JSON); errors name the file."""
    from fasterrcnn.errors import DataError

    config = load_json(path)
    if not isinstance(config, dict):
        raise DataError(path, "expected a JSON object with keys preset, model, train")
    unknown = sorted(set(config) - {"preset", "model", "train"})
    if unknown:
        raise DataError(path, f"unknown key(s) {', '.join(unknown)} (expected preset, model, train)")
    for section in ("model", "train"):
        if not isinstance(config.get(section, {}), dict):
            raise DataError(path, f"'{section}' must be a JSON object of {section} fields")
    return config
