"""Configuration: frozen dataclasses with documented defaults, named presets, and their validation.

A preset is a pair (``ModelConfig``, ``TrainConfig``). Modules never read this file: the model
builder turns a ``ModelConfig`` into explicit keyword arguments, the trainer does the same with
``TrainConfig``. Configs round-trip through plain dicts (``to_dict`` / ``from_dict``) so that they
can be stored in checkpoints (``weights_only=True``) and in ``config.json``.

``num_classes`` always counts foreground classes only; the model adds the background class 0.

Validation happens here, once, however a configuration arrives (command-line flags, ``--set``,
config files, Python callers, checkpoints). ``check_config`` checks every field's type (a bool is
not an int, an int is a float, tuples of the right length), finite numbers, its range or allowed
names, and the relations between fields (thresholds in order, anchors that fit the backbone ...).
All problems are reported in one ``ConfigError`` line, each as ``section.field = value: rule``,
followed by ``(in FILE)`` when the value was read from a file. ``resolve`` builds a run's configs
from its layers: the preset (or, on resume, the checkpoint's config) < a config file < overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.reading import CONFIG_BYTES, JSONError, loads_json, parse_yaml, read_text, yaml_loader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Caffe convention of the paper's VGG16: BGR channel order, 0-255 values, mean subtraction.
CAFFE_BGR_MEAN = (102.9801, 115.9465, 122.7717)

# Names the model builder and the trainer accept. modeling/ and detector.py hold the same names
# (tests/test_config_validation.py checks that they agree).
PIXEL_FORMATS = ("rgb01", "caffe_bgr255")
BOX_POOLERS = ("roi_pool", "roi_align", "multiscale_roi_align")
AMP_DTYPES = ("bf16", "fp16")
LR_SCHEDULES = ("step", "cosine")
SEED_MAX = 2**64 - 1  # torch.manual_seed takes seeds in [0, 2**64 - 1] (negative ones alias large ones)
# Upper bounds of sizes that allocate memory in proportion (a typo such as 1e8 would end in an allocation failure):
MAX_CLASSES = 100_000  # num_classes (LVIS: 1203, ImageNet-21k: 21841)
MAX_IMAGE_SIDE = 8192  # min_size, max_size: pixels of the model's input side (a 8192x8192 input is 800 MB of float32)
MAX_REPRESENTATION_SIZE = 16_384  # representation_size: the box head's width (VGG16's fc6: 4096)
MAX_PER_IMAGE = 1_000_000  # proposals, sampled boxes and detections per image (the paper: 12000 proposals)
MAX_BATCH_SIZE = 4096  # images per batch
MAX_TIME = 14_400.0  # train.time in minutes: 10 days


@dataclass(frozen=True)
class BackboneFacts:
    """What validation knows of a backbone of ``modeling/backbones`` (the tests build each one to check it).

    feature_maps: maps the RPN runs on, each with its own tuple of anchor sizes (FPN's "pool" level counts);
    trainable_layers: the largest ``trainable_backbone_layers``;
    box_head_width: the one ``representation_size`` its box head has (ResNet C4: res5), None when any width is allowed.
    """

    feature_maps: int
    trainable_layers: int
    box_head_width: int | None = None


BACKBONES: dict[str, BackboneFacts] = {
    "vgg16": BackboneFacts(feature_maps=1, trainable_layers=5),
    "resnet50": BackboneFacts(feature_maps=1, trainable_layers=5, box_head_width=2048),
    "resnet101": BackboneFacts(feature_maps=1, trainable_layers=5, box_head_width=2048),
    "resnet50_fpn": BackboneFacts(feature_maps=5, trainable_layers=5),
    "mobilenet_v3_large_fpn": BackboneFacts(feature_maps=3, trainable_layers=6),
    "tiny": BackboneFacts(feature_maps=1, trainable_layers=4),
}


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
    image_mean: tuple[float, float, float] = CAFFE_BGR_MEAN  # per channel, in the order of pixel_format (BGR for caffe_bgr255)
    image_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
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
    box_score_temperature: float = 1.0  # class logits / T before the softmax (`fasterrcnn calibrate` fits T); 1: as trained
    box_score_map: tuple[float, float] | None = None  # (a, b): final score s -> sigmoid(a logit(s) + b) (`fasterrcnn calibrate` fits it); None: as trained
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
    lr_schedule: str = "step"  # "step": x lr_gamma at each of lr_steps; "cosine": half a cosine to 0 at the run's end (lr_steps unused)
    max_iters: int = 70000
    epochs: int | None = None  # when set, max_iters = epochs * batches per epoch (overrides max_iters)
    time: float | None = None  # minutes of training (validation, checkpoints included), None: no budget; warm-up and lr_steps keep their fractions of the run on the iterations that fit
    grad_clip_norm: float | None = None  # clip the global gradient L2 norm to this; None: no clipping
    hflip_prob: float = 0.5
    # Augmentation beyond the flip (data/transforms.py); None: off
    scale_jitter: tuple[float, float] | None = None  # per batch, the short side (and max_size) x a factor drawn in [low, high]
    color_jitter: tuple[float, float, float, float] | None = None  # brightness, contrast, saturation, hue strengths (torchvision's ColorJitter)
    ema_decay: float | None = None  # exponential moving average of the weights (validation, checkpoints, export); None: off
    fit_anchors: bool = False  # before training: anchor sizes and ratios by k-means on the training boxes (modeling/anchor_fit.py)
    seed: int = 0  # data order, flips and the model's sampling are a function of (seed, epoch, iteration)
    log_every: int = 20  # iterations per metrics.jsonl / TensorBoard train record (losses averaged)
    checkpoint_every: int = 1000  # iterations between checkpoints/last.pt + iter_XXXXXXX.pt (and at the end)
    keep_checkpoints: int = 3  # periodic iter_XXXXXXX.pt kept, the newest (last.pt and best.pt always are)
    eval_every: int = 0  # iterations between validation runs (0: only at the end); best.pt by mAP / AP
    patience: int | None = None  # stop after this many evaluations without a better mAP / AP (best.pt stays); None: never
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
    """Build and check ``cls`` (ModelConfig or TrainConfig) from a dict of some of its fields (JSON lists become tuples).

    Raises ConfigError for unknown or invalid fields, naming ``source`` (the file the dict came from) when given.
    """
    section = _SECTIONS[cls]
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping of {section} fields, got {type(data).__name__}{_in(source)}")
    _check_known(cls, data, source)
    config = cls(**{k: _coerce(v) for k, v in data.items()})
    check_config(config, source=source)
    return config


def check_score_threshold(value) -> float:
    """``value`` if it is a score threshold (a number in [0, 1]; not NaN), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"score threshold must be a number in [0, 1], got {value!r}")
    return float(value)


def replace(config, **overrides):
    """``dataclasses.replace`` with a clear ConfigError for unknown fields (values are not checked: see ``check_config``)."""
    _check_known(type(config), overrides, None)
    return dataclasses.replace(config, **overrides)


# -- Validation ----------------------------------------------------------------------------------------
# A rule takes a value of the field's type and returns what is wrong with it ("must be >= 1") or None.
_Rule = Callable[[Any], "str | None"]


def _at_least(low) -> _Rule:
    return lambda v: None if v >= low else f"must be >= {low}"


def _at_most(high) -> _Rule:
    return lambda v: None if v <= high else f"must be <= {high}"


def _above(low) -> _Rule:
    return lambda v: None if v > low else f"must be > {low}"


def _within(low, high, *, open_low: bool = False, open_high: bool = False) -> _Rule:
    def rule(v):
        fits = (v > low if open_low else v >= low) and (v < high if open_high else v <= high)
        return None if fits else f"must be in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"

    return rule


def _one_of(names: tuple[str, ...]) -> _Rule:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


def _each(rule: _Rule) -> _Rule:
    """``rule`` for every number of a tuple (tuples of tuples too): "every value must be > 0"."""

    def flat(v):
        return [x for item in v for x in flat(item)] if isinstance(v, tuple) else [v]

    def check(v):
        problem = next((p for p in map(rule, flat(v)) if p), None)
        return None if problem is None else f"every value {problem}"

    return check


def _levels(v) -> str | None:
    return None if v and all(v) else "must hold at least one tuple (one per feature map), none of them empty"


def _increasing(v) -> str | None:
    return None if all(a < b for a, b in zip(v, v[1:])) else "must be increasing"


def _seed(v) -> str | None:
    return None if 0 <= v <= SEED_MAX else "must be in [0, 2**64 - 1] (the seeds torch.manual_seed takes)"


_UNIT_INTERVAL = _within(0, 1)  # IoU thresholds, NMS thresholds, probabilities
_FRACTION = _within(0, 1, open_low=True)
_SCORE_THRESHOLD = _within(0, 1, open_high=True)  # scores are in (0, 1): a threshold of 1 keeps nothing

# Every field with its rules beyond its type (checked first: see _fits); () means any value of the type.
_MODEL_RULES: dict[str, tuple[_Rule, ...]] = {
    "backbone": (_one_of(tuple(BACKBONES)),),
    "num_classes": (_at_least(1), _at_most(MAX_CLASSES)),
    "trainable_backbone_layers": (_at_least(0),),  # and at most the backbone's stages (_model_relations)
    "min_size": (_at_least(1), _at_most(MAX_IMAGE_SIDE)),
    "max_size": (_at_least(1), _at_most(MAX_IMAGE_SIDE)),
    "pixel_format": (_one_of(PIXEL_FORMATS),),
    "image_mean": (),
    "image_std": (_each(_above(0)),),  # a divisor
    "size_divisible": (_at_least(1), _at_most(MAX_IMAGE_SIDE)),
    "anchor_sizes": (_levels, _each(_above(0))),
    "aspect_ratios": (_levels, _each(_above(0))),  # height / width
    "rpn_pre_nms_top_n_train": (_at_least(1), _at_most(MAX_PER_IMAGE)),  # per feature map
    "rpn_post_nms_top_n_train": (_at_least(1), _at_most(MAX_PER_IMAGE)),  # per image, may exceed pre (fewer boxes survive then)
    "rpn_pre_nms_top_n_test": (_at_least(1), _at_most(MAX_PER_IMAGE)),
    "rpn_post_nms_top_n_test": (_at_least(1), _at_most(MAX_PER_IMAGE)),
    "rpn_nms_thresh": (_UNIT_INTERVAL,),
    "rpn_fg_iou_thresh": (_UNIT_INTERVAL,),
    "rpn_bg_iou_thresh": (_UNIT_INTERVAL,),
    "rpn_batch_size_per_image": (_at_least(1), _at_most(MAX_PER_IMAGE)),
    "rpn_positive_fraction": (_FRACTION,),
    "rpn_score_thresh": (_SCORE_THRESHOLD,),
    "rpn_min_size": (_at_least(0),),
    "rpn_ignore_cross_boundary": (),
    "rpn_smooth_l1_beta": (_at_least(0),),  # 0: L1
    "box_pooler": (_one_of(BOX_POOLERS),),
    "box_pool_size": (_at_least(1), _at_most(64)),
    "box_sampling_ratio": (),  # <= 0: adaptive
    "box_aligned": (),
    "box_fg_iou_thresh": (_UNIT_INTERVAL,),
    "box_bg_iou_thresh": (_UNIT_INTERVAL,),
    "box_bg_iou_low": (_UNIT_INTERVAL,),
    "box_batch_size_per_image": (_at_least(1), _at_most(MAX_PER_IMAGE)),
    "box_positive_fraction": (_FRACTION,),
    "box_reg_weights": (_each(_above(0)),),  # decoding divides by them
    "box_score_thresh": (_SCORE_THRESHOLD,),
    "box_nms_thresh": (_UNIT_INTERVAL,),
    "box_detections_per_img": (_at_least(1), _at_most(MAX_PER_IMAGE)),
    "box_min_size": (_at_least(0),),
    "box_smooth_l1_beta": (_at_least(0),),
    "box_score_temperature": (_above(0),),
    "box_score_map": (lambda v: None if v[0] > 0 else "its slope a (the first value) must be > 0: the map must keep the score order",),
    "representation_size": (_at_least(1), _at_most(MAX_REPRESENTATION_SIZE)),
    "box_head_ranks": (_each(_at_least(1)),),  # upper bounds depend on the layers: modeling/low_rank.py checks them
}

_TRAIN_RULES: dict[str, tuple[_Rule, ...]] = {
    "batch_size": (_at_least(1), _at_most(MAX_BATCH_SIZE)),
    "lr": (_above(0),),
    "momentum": (_within(0, 1, open_high=True),),
    "weight_decay": (_at_least(0),),
    "warmup_iters": (_at_least(0),),
    "warmup_factor": (_FRACTION,),
    "lr_steps": (_each(_at_least(1)), _increasing),  # steps past max_iters are allowed (never reached)
    "lr_gamma": (_above(0),),
    "lr_schedule": (_one_of(LR_SCHEDULES),),
    "max_iters": (),  # >= 1 unless epochs is set (_train_relations)
    "epochs": (_at_least(1),),
    "time": (_above(0), _at_most(MAX_TIME)),  # at most 10 days
    "grad_clip_norm": (_above(0),),
    "hflip_prob": (_UNIT_INTERVAL,),
    "scale_jitter": (_each(_above(0)),),  # low <= high: _train_relations
    "color_jitter": (_each(_at_least(0)),),  # hue at most 0.5: _train_relations
    "ema_decay": (_within(0, 1, open_low=True, open_high=True),),
    "fit_anchors": (),
    "seed": (_seed,),
    "log_every": (_at_least(1),),
    "checkpoint_every": (_at_least(1),),
    "keep_checkpoints": (_at_least(0),),
    "eval_every": (_at_least(0),),
    "patience": (_at_least(1),),
    "max_nonfinite_steps": (_at_least(1),),
    "scale_lr": (),
    "sync_bn": (),
    "amp": (),
    "amp_dtype": (_one_of(AMP_DTYPES),),
}


def _model_relations(c: ModelConfig, clean: Callable[..., bool]) -> Iterator[tuple[str, str]]:
    """(field, rule) for each broken relation between fields; ``clean(*names)``: those fields passed their own rules."""
    if clean("min_size", "max_size") and c.max_size < c.min_size:
        yield "max_size", f"must be >= min_size ({c.min_size})"
    if clean("rpn_fg_iou_thresh", "rpn_bg_iou_thresh") and c.rpn_fg_iou_thresh < c.rpn_bg_iou_thresh:
        yield "rpn_fg_iou_thresh", f"must be >= rpn_bg_iou_thresh ({c.rpn_bg_iou_thresh})"
    if clean("box_fg_iou_thresh", "box_bg_iou_thresh") and c.box_bg_iou_thresh > c.box_fg_iou_thresh:
        yield "box_bg_iou_thresh", f"must be <= box_fg_iou_thresh ({c.box_fg_iou_thresh})"
    if clean("box_bg_iou_low", "box_bg_iou_thresh") and c.box_bg_iou_low > c.box_bg_iou_thresh:
        yield "box_bg_iou_low", f"must be <= box_bg_iou_thresh ({c.box_bg_iou_thresh})"
    if clean("anchor_sizes", "aspect_ratios"):
        if len(c.aspect_ratios) != len(c.anchor_sizes):
            yield "aspect_ratios", f"must hold one tuple per tuple of anchor_sizes ({len(c.anchor_sizes)}), got {len(c.aspect_ratios)}"
        else:
            per_cell = [len(s) * len(r) for s, r in zip(c.anchor_sizes, c.aspect_ratios)]
            if len(set(per_cell)) > 1:  # the RPN head is shared by all feature maps
                yield "anchor_sizes", f"every feature map needs the same number of anchors per cell (sizes x ratios), got {per_cell}"
    facts = BACKBONES.get(c.backbone) if clean("backbone") else None
    if facts is None:
        return
    if clean("anchor_sizes") and len(c.anchor_sizes) != facts.feature_maps:
        yield "anchor_sizes", f"must hold one tuple of sizes per feature map of backbone {c.backbone} ({facts.feature_maps}), got {len(c.anchor_sizes)}"
    if clean("box_pooler") and facts.feature_maps > 1 and c.box_pooler != "multiscale_roi_align":
        yield "box_pooler", f"backbone {c.backbone} has several feature maps: use multiscale_roi_align"
    layers = c.trainable_backbone_layers
    if clean("trainable_backbone_layers") and layers is not None and layers > facts.trainable_layers:
        yield "trainable_backbone_layers", f"must be in 0..{facts.trainable_layers} for backbone {c.backbone}"
    width = facts.box_head_width
    if clean("representation_size") and width is not None and c.representation_size not in (None, width):
        yield "representation_size", f"must be {width} or null for backbone {c.backbone} (the width of its box head)"


def _train_relations(c: TrainConfig, clean: Callable[..., bool]) -> Iterator[tuple[str, str]]:
    """(field, rule) for each broken relation between fields (see ``_model_relations``)."""
    if clean("max_iters", "epochs") and c.epochs is None and c.max_iters < 1:
        yield "max_iters", "must be >= 1 (or set epochs)"
    if clean("scale_jitter") and c.scale_jitter is not None and c.scale_jitter[0] > c.scale_jitter[1]:
        yield "scale_jitter", "must be (low, high) with low <= high"
    if clean("color_jitter") and c.color_jitter is not None and c.color_jitter[3] > 0.5:
        yield "color_jitter", "hue (the 4th value) must be <= 0.5 (half a turn of the colour wheel)"


_SECTIONS = {ModelConfig: "model", TrainConfig: "train"}
_RULES = {ModelConfig: _MODEL_RULES, TrainConfig: _TRAIN_RULES}
_RELATIONS = {ModelConfig: _model_relations, TrainConfig: _train_relations}
_TYPE_NAMES = {  # (singular, plural)
    bool: ("true or false", "booleans"),
    int: ("an integer", "integers"),
    float: ("a finite number", "finite numbers"),
    str: ("a string", "strings"),
    type(None): ("null", "nulls"),
}


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value, hint) -> bool:
    """Whether ``value`` has type ``hint``: bool is not an int, an int is a float, floats are finite, tuples have the right length."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, h) for v, h in zip(value, args))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond the float range
            return False
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint, plural: bool = False) -> str:
    """A type annotation in words: ``tuple[int, int] | None`` -> "a tuple of 2 integers or null"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h, plural) for h in args)
    if origin is tuple:
        count = "" if len(args) == 2 and args[1] is Ellipsis else f"{len(args)} "
        return f"{'tuples' if plural else 'a tuple'} of {count}{_describe(args[0], plural=True)}"
    return _TYPE_NAMES[hint][plural]


@dataclass(frozen=True)
class _Problem:
    section: str
    field: str
    value: Any
    rule: str

    def text(self, source: str | Path | None = None) -> str:
        return f"{self.section}.{self.field} = {_shown(self.value)}: {self.rule}{_in(source)}"


def _shown(value) -> str:
    """``repr(value)`` for an error message, cut after 60 characters (a value may be a file's worth of data)."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _in(source: str | Path | None) -> str:
    return "" if source is None else f" (in {source})"


def _problems(config) -> list[_Problem]:
    """Every problem of ``config``: each field's type, then its rules, then the relations between fields that passed."""
    cls = type(config)
    if cls not in _SECTIONS:
        raise TypeError(f"expected a ModelConfig or TrainConfig, got {cls.__name__}")
    section, rules, hints = _SECTIONS[cls], _RULES[cls], _hints(cls)
    problems = []
    for f in dataclasses.fields(cls):
        value = getattr(config, f.name)
        if not _fits(value, hints[f.name]):
            problems.append(_Problem(section, f.name, value, f"must be {_describe(hints[f.name])}"))
        elif value is not None:
            rule = next((p for p in (check(value) for check in rules[f.name]) if p), None)
            if rule is not None:
                problems.append(_Problem(section, f.name, value, rule))
    bad = {p.field for p in problems}
    for name, rule in _RELATIONS[cls](config, lambda *names: bad.isdisjoint(names)):
        problems.append(_Problem(section, name, getattr(config, name), rule))
    return problems


def check_config(config: ModelConfig | TrainConfig, *, source: str | Path | None = None) -> None:
    """Raise ConfigError listing every invalid field of ``config`` in one line.

    Each problem reads ``section.field = value: rule`` (e.g. ``model.pixel_format = 'hsv': must be
    one of rgb01, caffe_bgr255``), followed by ``(in SOURCE)`` when ``source`` (a file) is given;
    problems are joined by "; ".
    """
    problems = _problems(config)
    if problems:
        raise ConfigError("; ".join(p.text(source) for p in problems))


def _check_known(cls, data: dict, source: str | Path | None) -> None:
    """ConfigError for keys of ``data`` that are not fields of ``cls``, with the closest field name as a hint."""
    section, names = _SECTIONS[cls], [f.name for f in dataclasses.fields(cls)]
    problems = []
    for key in sorted(map(str, set(data) - set(names))):
        close = difflib.get_close_matches(key, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{section}.{key}: unknown field{hint}{_in(source)}")
    if problems:
        raise ConfigError("; ".join(problems))


# -- Building a run's configuration from its layers ------------------------------------------------------
_LAYOUT_KEYS = ("preset", "model", "train")
# What a run's config.json records besides its configuration (runs/training.py): read over by --config, so
# that `fasterrcnn train --config runs/x/config.json` repeats the run x.
_RUN_RECORD_KEYS = ("class_names", "data", "max_iters", "processes", "changes")


def _check_layout(data, source: str | Path | None, *, required: tuple[str, ...] = (), what: str = "") -> dict[str, Any]:
    """``data`` if it is ``{"preset": str, "model": {...}, "train": {...}}`` (keys optional unless ``required``).

    Otherwise DataError naming ``source`` (ConfigError without one); ``what`` starts the message.
    """

    def fail(problem: str) -> Exception:
        return DataError(source, what + problem) if source is not None else ConfigError(what + problem)

    if not isinstance(data, dict):
        raise fail(f"expected a mapping with keys {', '.join(_LAYOUT_KEYS)}, got {type(data).__name__}")
    unknown = sorted(map(str, set(data) - set(_LAYOUT_KEYS)))
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)} (expected {', '.join(_LAYOUT_KEYS)})")
    missing = [key for key in required if key not in data]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    if "preset" in data and not isinstance(data["preset"], str):
        raise fail(f"'preset' must be a preset name, got {_shown(data['preset'])}")
    for section in ("model", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise fail(f"'{section}' must be a mapping of {section} fields")
    return data


@functools.cache
def _yaml_loader():
    """``reading.yaml_loader``'s (plain data, no aliases), reading ``1e-4`` as a float as JSON does.

    YAML 1.1 wants a dot in a float (``1.0e-4``); without this resolver ``lr: 1e-4`` would be the string "1e-4".
    """
    yaml, base = yaml_loader()

    class Loader(base):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return yaml, Loader


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a config file ``{"preset": NAME, "model": {...}, "train": {...}}`` (every key optional) as data, never code.

    JSON, or YAML for ``.yaml`` / ``.yml`` files (PyYAML's safe loader). A run's own ``config.json`` is one
    too: what it records besides the configuration (class names, data, the run's length) is left out. The values are checked by
    ``resolve``, which names this file for each bad one; here an unreadable or malformed file is a
    DataError naming it.
    """
    path = Path(path)
    try:
        text = read_text(path, CONFIG_BYTES, "config file")
    except OSError as e:
        raise DataError(path, f"cannot read config file ({e.strerror or e})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            _, loader = _yaml_loader()
        except ImportError:
            raise DataError(path, "reading YAML needs PyYAML (pip install pyyaml); or write the file as JSON") from None
        data = parse_yaml(text, path, loader)
    else:
        try:
            data = loads_json(text)
        except JSONError as e:
            raise DataError(path, e.problem) from None
    if isinstance(data, dict) and set(_RUN_RECORD_KEYS) & set(data):
        data = {key: value for key, value in data.items() if key not in _RUN_RECORD_KEYS}
    return _check_layout(data, path)


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set`` items ``section.field=VALUE`` -> ``{"model": {...}, "train": {...}}``.

    VALUE is read as JSON (``0.6``, ``[800, 1000]``, ``true``, ``null``), else kept as a string
    (``rgb01``). Field names and values are checked by ``resolve``.
    """
    overrides: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or section not in overrides or not name:
            raise ConfigError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        try:
            value = loads_json(text)
        except JSONError as e:
            if not e.syntax:
                raise ConfigError(f"--set {key.strip()}: {e.problem}") from None
            value = text
        overrides[section][name] = value
    return overrides


def resolve(
    preset: str | None = None,
    *,
    base: dict[str, Any] | None = None,
    file: dict[str, Any] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base_source: str | Path | None = None,
    file_source: str | Path | None = None,
) -> tuple[str, ModelConfig, TrainConfig]:
    """A run's ``(preset name, ModelConfig, TrainConfig)`` from its layers, each overriding the one before.

    1. the preset's configs (``preset``, else the file's "preset"), or ``base`` when resuming: the
       ``config`` dict of the run's checkpoint (read from ``base_source``), whose preset must then match;
    2. ``file``: a config file's dict (``load_config_file``, read from ``file_source``);
    3. ``overrides``: ``{"model": {...}, "train": {...}}`` (``--set`` items, then command-line flags).

    The merged configs are checked once; each bad value is reported with the file it came from.
    Raises ConfigError (DataError for a ``file`` or ``base`` that is not such a dict).
    """
    file = _check_layout(file if file is not None else {}, file_source)
    overrides = overrides or {}
    unknown = sorted(map(str, set(overrides) - {"model", "train"}))
    if unknown:
        raise ConfigError(f"unknown override section(s) {', '.join(unknown)} (expected model, train)")
    if base is not None:
        base = _check_layout(base, base_source, required=_LAYOUT_KEYS, what="run configuration: ")
        name = base["preset"]
        for given, where in ((preset, ""), (file.get("preset"), _in(file_source))):
            if given is not None and given != name:
                raise ConfigError(f"preset {given!r}{where}: the run to resume was trained with preset {name!r}")
        first = (base, base_source)
    else:
        name = preset if preset is not None else file.get("preset")
        if name is None:
            raise ConfigError('no preset: name one (--preset NAME) or put "preset" in the config file')
        chosen = get_preset(name)
        first = ({"model": to_dict(chosen.model), "train": to_dict(chosen.train)}, None)

    configs, problems = [], []
    for cls in (ModelConfig, TrainConfig):
        section = _SECTIONS[cls]
        values: dict[str, Any] = {}
        origin: dict[str, str | Path | None] = {}  # field -> the file its value came from
        for layer, source in (first, (file, file_source), (overrides, None)):
            fields = layer.get(section, {})
            _check_known(cls, fields, source)
            values.update({k: _coerce(v) for k, v in fields.items()})
            origin.update(dict.fromkeys(fields, source))
        config = cls(**values)
        problems += [p.text(origin.get(p.field)) for p in _problems(config)]
        configs.append(config)
    if problems:
        raise ConfigError("; ".join(problems))
    model_config, train_config = configs
    return name, model_config, train_config


def config_from_checkpoint(config: dict[str, Any], path: str | Path) -> tuple[str | None, ModelConfig, TrainConfig | None]:
    """The ``(preset, ModelConfig, TrainConfig or None)`` stored in a checkpoint's ``config`` entry.

    A missing, malformed or invalid configuration is a DataError naming ``path``, the checkpoint.
    Files written by ``compress`` or by hand may hold no "train" section (None then) or no preset.
    """
    _check_layout(config, path, required=("model",), what="checkpoint configuration: ")
    try:
        model_config = from_dict(ModelConfig, config["model"])
        train_config = from_dict(TrainConfig, config["train"]) if "train" in config else None
    except ConfigError as e:
        raise DataError(path, f"checkpoint holds an invalid configuration: {e}") from None
    return config.get("preset"), model_config, train_config
