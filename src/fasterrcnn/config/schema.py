"""The configuration's schema: frozen dataclasses with documented defaults, and the limits they are checked against.

``ModelConfig`` holds the architecture and inference hyper-parameters, ``TrainConfig`` the optimisation
and schedule. Modules never read this file: the model builder turns a ``ModelConfig`` into explicit
keyword arguments, the trainer does the same with ``TrainConfig``. Configs round-trip through plain
dicts (``to_dict`` here, ``validation.from_dict``) so that they can be stored in checkpoints
(``weights_only=True``) and in ``config.json``.

``num_classes`` always counts foreground classes only; the model adds the background class 0.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

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


# The section of a config file, of ``--set`` and of an error message that holds each dataclass's fields.
_SECTIONS = {ModelConfig: "model", TrainConfig: "train"}


def to_dict(config) -> dict[str, Any]:
    """A dataclass config as a dict of plain values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _coerce(value):
    # JSON has no tuples: lists (nested too) become tuples so that configs stay hashable.
    if isinstance(value, list):
        return tuple(_coerce(v) for v in value)
    return value
