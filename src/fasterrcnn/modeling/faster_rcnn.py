"""Faster R-CNN (Ren et al., NIPS 2015): transform -> backbone -> RPN -> RoI heads, trained end to end.

Shape shorthand:
    N   images;  H x W  an image's original size;  K  GT boxes of an image
    C   foreground classes (``num_classes``); labels 0 = background, 1..C = the dataset's classes
    D   detections of an image (at most ``box_detections_per_img``)

Submodule names are torchvision's (``transform``, ``backbone``, ``rpn.head.conv.0.0``,
``roi_heads.box_head``, ``roi_heads.box_predictor.cls_score`` ...), so that torchvision's
checkpoint files load with ``load_state_dict`` for the torchvision-architecture backbones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fasterrcnn import ops
from fasterrcnn.config import BOX_POOLERS, ModelConfig, check_config, get_preset, replace
from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.anchors import AnchorGenerator
from fasterrcnn.modeling.backbones.base import BackboneParts
from fasterrcnn.modeling.low_rank import low_rank_box_head
from fasterrcnn.modeling.prepack import FrozenBackbone
from fasterrcnn.modeling.roi_heads import FastRCNNPredictor, RoIHeads, SingleLevelRoIPool
from fasterrcnn.modeling.rpn import RegionProposalNetwork, RPNHead
from fasterrcnn.modeling.transform import GeneralizedRCNNTransform
from fasterrcnn.pretrained import IMAGENET_BACKBONE, resolve_weights


def _build_backbone(cfg: ModelConfig, weights_path: str | None) -> BackboneParts:
    from fasterrcnn.modeling.backbones import build_backbone

    return build_backbone(cfg.backbone, weights_path=weights_path, trainable_layers=cfg.trainable_backbone_layers, representation_size=cfg.representation_size, pool_size=cfg.box_pool_size)


def _build_box_roi_pool(cfg: ModelConfig, parts: BackboneParts) -> nn.Module:
    names = [n for n in parts.featmap_names if n != "pool"]  # FPN's extra max-pool level only feeds the RPN
    if cfg.box_pooler == "multiscale_roi_align":
        return ops.MultiScaleRoIAlign(names, cfg.box_pool_size, cfg.box_sampling_ratio)
    if len(names) != 1:
        raise ConfigError(f"box_pooler {cfg.box_pooler!r} needs one feature map, backbone {cfg.backbone!r} has {len(names)}; use 'multiscale_roi_align'")
    scale = 1.0 / parts.strides[parts.featmap_names.index(names[0])]
    if cfg.box_pooler == "roi_pool":
        return SingleLevelRoIPool(names[0], ops.RoIPool(cfg.box_pool_size, scale))
    if cfg.box_pooler == "roi_align":
        return SingleLevelRoIPool(names[0], ops.RoIAlign(cfg.box_pool_size, scale, cfg.box_sampling_ratio, aligned=cfg.box_aligned))
    raise ConfigError(f"unknown box_pooler {cfg.box_pooler!r}; choose one of: {', '.join(BOX_POOLERS)}")


class FasterRCNN(nn.Module):
    """The detector. ``num_classes`` counts FOREGROUND classes only (background 0 is added).

    ``model(images, targets=None)``: images is a list of float Tensor[3, H, W], RGB in [0, 1]
    (any sizes); targets a list of {"boxes": float Tensor[K, 4] (x1, y1, x2, y2) pixels,
    "labels": int64 Tensor[K] in 1..C} (other keys ignored). Training mode returns the losses
    {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}; eval mode a list
    of {"boxes" [D, 4] original pixels, "labels" [D] int64 1..C, "scores" [D]} by decreasing score.
    Inputs are never modified. ``generator`` (attribute or argument) drives all sampling: one
    ``torch.Generator`` for the batch, or a sequence of one CPU generator per image, with which an
    image's anchor and RoI samples depend only on that image and its generator, not on the other
    images of the batch (the trainer passes these, so that data-parallel processes sample each image
    as one process with the whole batch would).

    ``frozen_backbone`` (None by default; ``modeling.prepack.FrozenBackbone``, set by ``Detector(freeze_backbone=True)``)
    runs the backbone in the calls that are float32 CPU inference; every other call runs ``backbone``.
    ``backbone_memory_format`` (``torch.contiguous_format`` by default; ``channels_last_backbone()`` sets
    ``torch.channels_last``) is the memory order the backbone's input is given in, except while traced.

    Mixed precision: under ``torch.autocast`` the convolutions and linear layers run in the reduced
    precision, while anchors, box coding, proposal selection, NMS, RoI coordinates, the losses and
    the detections stay float32.
    """

    def __init__(self, transform: GeneralizedRCNNTransform, backbone: nn.Module, rpn: RegionProposalNetwork, roi_heads: RoIHeads, *, num_classes: int, config: ModelConfig | None = None):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.num_classes = num_classes
        self.config = config
        self.generator: torch.Generator | None = None
        self.frozen_backbone: FrozenBackbone | None = None  # float32 CPU inference through it when set (modeling.prepack)
        self.backbone_memory_format = torch.contiguous_format

    @classmethod
    def from_config(cls, model_config: ModelConfig, backbone_weights: str | os.PathLike | None = None, *, download: bool | None = None) -> "FasterRCNN":
        """Build the model of ``model_config``.

        ``backbone_weights``: the backbone's starting weights, a file path or the name of a registered
        ImageNet file (``fasterrcnn.pretrained.PRETRAINED``, e.g. "vgg16"), which is read from the cache
        and downloaded only when ``download`` allows it (None: when ``FASTERRCNN_DOWNLOAD=1``).
        None: random weights (see ``fasterrcnn.pretrained.warn_untrained_backbone``).
        """
        check_config(model_config)
        cfg = model_config
        if backbone_weights is not None:
            backbone_weights = str(resolve_weights(backbone_weights, download=download, kind=IMAGENET_BACKBONE, fits=cfg.backbone))
        parts = _build_backbone(cfg, backbone_weights)
        if cfg.box_head_ranks is not None:  # fc6 / fc7 from a backbone file are kept as their truncated SVD
            low_rank_box_head(parts.box_head, cfg.box_head_ranks, keep_weights=backbone_weights is not None)
        transform = GeneralizedRCNNTransform(cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std, pixel_format=cfg.pixel_format, size_divisible=cfg.size_divisible)
        anchor_generator = AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios)
        num_anchors = set(anchor_generator.num_anchors_per_location())
        if len(num_anchors) != 1:
            raise ConfigError("every feature level needs the same number of anchors per cell (the RPN head is shared)")
        rpn = RegionProposalNetwork(
            anchor_generator,
            RPNHead(parts.body.out_channels, num_anchors.pop()),
            fg_iou_thresh=cfg.rpn_fg_iou_thresh,
            bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            batch_size_per_image=cfg.rpn_batch_size_per_image,
            positive_fraction=cfg.rpn_positive_fraction,
            pre_nms_top_n=dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
            post_nms_top_n=dict(training=cfg.rpn_post_nms_top_n_train, testing=cfg.rpn_post_nms_top_n_test),
            nms_thresh=cfg.rpn_nms_thresh,
            score_thresh=cfg.rpn_score_thresh,
            min_size=cfg.rpn_min_size,
            ignore_cross_boundary=cfg.rpn_ignore_cross_boundary,
            smooth_l1_beta=cfg.rpn_smooth_l1_beta,
        )
        roi_heads = RoIHeads(
            _build_box_roi_pool(cfg, parts),
            parts.box_head,
            FastRCNNPredictor(parts.box_head_out_channels, cfg.num_classes + 1),
            fg_iou_thresh=cfg.box_fg_iou_thresh,
            bg_iou_thresh=cfg.box_bg_iou_thresh,
            bg_iou_low=cfg.box_bg_iou_low,
            batch_size_per_image=cfg.box_batch_size_per_image,
            positive_fraction=cfg.box_positive_fraction,
            bbox_reg_weights=cfg.box_reg_weights,
            score_thresh=cfg.box_score_thresh,
            nms_thresh=cfg.box_nms_thresh,
            detections_per_img=cfg.box_detections_per_img,
            min_size=cfg.box_min_size,
            smooth_l1_beta=cfg.box_smooth_l1_beta,
            temperature=cfg.box_score_temperature,
            score_map=cfg.box_score_map,
        )
        return cls(transform, parts.body, rpn, roi_heads, num_classes=cfg.num_classes, config=cfg)

    @classmethod
    def from_preset(cls, name: str, num_classes: int | None = None, backbone_weights: str | os.PathLike | None = None, *, download: bool | None = None, **overrides) -> "FasterRCNN":
        """The named preset's model; ``num_classes`` (foreground) and ``overrides`` replace ModelConfig fields.

        ``backbone_weights`` and ``download`` as in ``from_config``.
        """
        cfg = get_preset(name).model
        if num_classes is not None:
            overrides["num_classes"] = num_classes
        return cls.from_config(replace(cfg, **overrides), backbone_weights=backbone_weights, download=download)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None, generator: torch.Generator | Sequence[torch.Generator] | None = None):
        self.check_inputs(images, targets)
        generator = generator if generator is not None else self.generator
        if isinstance(generator, Sequence) and len(generator) != len(images):
            raise ValueError(f"{len(images)} images but {len(generator)} generators (one per image)")
        self.rpn.generator = self.roi_heads.generator = generator
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets if self.training else None)
        tensors = image_list.tensors  # [N, 3, H, W]
        if self.backbone_memory_format != torch.contiguous_format and not torch.jit.is_tracing():
            tensors = tensors.contiguous(memory_format=self.backbone_memory_format)
        frozen = self.frozen_backbone
        features = frozen(tensors) if frozen is not None and frozen.usable(tensors) else self.backbone(tensors)
        if isinstance(features, Tensor):
            features = {"0": features}
        proposals, rpn_losses = self.rpn(image_list, features, targets)
        detections, head_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def channels_last_backbone(self) -> "FasterRCNN":
        """Lays the backbone's weights and its input out channels-last (NHWC), in place; returns the model.

        For inference on the CPU (``Detector`` does it in float32): oneDNN's convolutions read and write
        NHWC directly, where NCHW tensors are reordered on every call, and the RoI pooling reads the NHWC
        feature maps without a copy. The results equal those of the NCHW model up to float rounding;
        the ``state_dict`` has the same keys and values (other strides). Measured in docs/deployment.md.
        """
        self.backbone.to(memory_format=torch.channels_last)
        self.backbone_memory_format = torch.channels_last
        return self

    def check_inputs(self, images, targets) -> None:
        """Raise ValueError naming the image index and the problem for malformed images or targets."""
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images must be a non-empty list of Tensor[3, H, W]")
        for i, img in enumerate(images):
            if not isinstance(img, Tensor) or not img.is_floating_point() or img.dim() != 3 or img.shape[0] != 3:
                what = f"{img.dtype} Tensor{list(img.shape)}" if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"image {i}: expected a float Tensor[3, H, W] (RGB in [0, 1]), got {what}")
            if img.shape[1] == 0 or img.shape[2] == 0:
                raise ValueError(f"image {i}: empty image of size {tuple(img.shape[1:])}")
            if not torch.isfinite(img).all():
                raise ValueError(f"image {i}: contains non-finite values (NaN or inf)")
        if not self.training:
            return
        if targets is None:
            raise ValueError("training mode needs targets (a list of dicts with 'boxes' and 'labels', one per image)")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            if not isinstance(t, dict) or "boxes" not in t or "labels" not in t:
                raise ValueError(f"image {i}: target must be a dict with 'boxes' and 'labels'")
            boxes, labels = t["boxes"], t["labels"]
            if not isinstance(boxes, Tensor) or not boxes.is_floating_point() or boxes.dim() != 2 or boxes.shape[1] != 4:
                what = f"{boxes.dtype} Tensor{list(boxes.shape)}" if isinstance(boxes, Tensor) else type(boxes).__name__
                raise ValueError(f"image {i}: boxes must be a float Tensor[K, 4], got {what}")
            if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (len(boxes),):
                what = f"{labels.dtype} Tensor{list(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
                raise ValueError(f"image {i}: labels must be an int64 Tensor[{len(boxes)}], got {what}")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"image {i}: boxes contain non-finite values")
            bad = torch.nonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).flatten()
            if len(bad):
                j = int(bad[0])
                raise ValueError(f"image {i}: box {j} {boxes[j].tolist()} has x2 <= x1 or y2 <= y1 (boxes are (x1, y1, x2, y2))")
            out = torch.nonzero((labels < 1) | (labels > self.num_classes)).flatten()
            if len(out):
                raise ValueError(f"image {i}: label {int(labels[out[0]])} is outside 1..{self.num_classes} (0 is background)")
