"""What a valid configuration is: each field's rules beyond its type, and the relations between fields.

A rule takes a value of the field's type and returns what is wrong with it ("must be >= 1") or None;
``validation`` checks the types first and applies these rules to the values that have the right type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fasterrcnn.config.schema import (
    AMP_DTYPES,
    BACKBONES,
    BOX_POOLERS,
    LR_SCHEDULES,
    MAX_BATCH_SIZE,
    MAX_CLASSES,
    MAX_IMAGE_SIDE,
    MAX_PER_IMAGE,
    MAX_REPRESENTATION_SIZE,
    MAX_TIME,
    PIXEL_FORMATS,
    SEED_MAX,
    ModelConfig,
    TrainConfig,
)

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


_RULES = {ModelConfig: _MODEL_RULES, TrainConfig: _TRAIN_RULES}
_RELATIONS = {ModelConfig: _model_relations, TrainConfig: _train_relations}
