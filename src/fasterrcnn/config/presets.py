"""Named presets: each a pair (``ModelConfig``, ``TrainConfig``): the paper's VGG16, ResNet C4, torchvision's FPN models, tiny.

Their values are tabulated on the documentation's Presets page (generated from ``PRESETS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fasterrcnn.config.schema import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, TrainConfig
from fasterrcnn.errors import ConfigError


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
_MOBILENET_FPN = dict(  # torchvision's fasterrcnn_mobilenet_v3_large_fpn: 3 levels, 15 anchors on each
    backbone="mobilenet_v3_large_fpn",
    anchor_sizes=((32.0, 64.0, 128.0, 256.0, 512.0),) * 3,
    aspect_ratios=((0.5, 1.0, 2.0),) * 3,
    rpn_score_thresh=0.05,
    **_TORCHVISION_FPN,
)
_MOBILENET_TRAIN = TrainConfig(batch_size=2, lr=0.0025, momentum=0.9, weight_decay=4e-5, warmup_iters=1000, warmup_factor=0.001, lr_steps=(60000, 80000), max_iters=90000)

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
    "mobilenet_v3_large_fpn": Preset("mobilenet_v3_large_fpn", ModelConfig(**_MOBILENET_FPN), _MOBILENET_TRAIN),
    # torchvision's low-resolution variant: 320 px inputs, 150 proposals at test time
    "mobilenet_v3_large_320_fpn": Preset(
        "mobilenet_v3_large_320_fpn",
        ModelConfig(**{**_MOBILENET_FPN, "min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150}),
        _MOBILENET_TRAIN,
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
