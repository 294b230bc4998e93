"""Configuration validation (the fasterrcnn.config package): one-line errors naming the key and the file, for every way a config arrives."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fasterrcnn import config as cfg
from fasterrcnn.config import rules, schema
from fasterrcnn.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    check_config,
    config_from_checkpoint,
    from_dict,
    load_config_file,
    parse_overrides,
    resolve,
    to_dict,
)
from fasterrcnn.errors import ConfigError, DataError


def error_of(section: str, **fields) -> str:
    """The message resolve gives for the vgg16 preset with ``fields`` overridden in ``section``."""
    with pytest.raises(ConfigError) as e:
        resolve("vgg16", overrides={section: fields})
    message = str(e.value)
    assert "\n" not in message
    return message


# -- The cases that ended in tracebacks (or in a broken checkpoint) ------------------------------------
@pytest.mark.parametrize(
    "section, fields, message",
    [
        ("model", dict(pixel_format="hsv"), "model.pixel_format = 'hsv': must be one of rgb01, caffe_bgr255"),
        ("model", dict(rpn_fg_iou_thresh=0.1), "model.rpn_fg_iou_thresh = 0.1: must be >= rpn_bg_iou_thresh (0.3)"),
        ("model", dict(min_size=0), "model.min_size = 0: must be >= 1"),
        ("model", dict(size_divisible=0), "model.size_divisible = 0: must be >= 1"),
        ("model", dict(box_pool_size=0), "model.box_pool_size = 0: must be >= 1"),
        ("train", dict(momentum=-1), "train.momentum = -1: must be in [0, 1)"),
        ("train", dict(lr=float("inf")), "train.lr = inf: must be a finite number"),
        ("train", dict(lr=float("nan")), "train.lr = nan: must be a finite number"),
        ("train", dict(seed=99999999999999999999999), "train.seed = 99999999999999999999999: must be in [0, 2**64 - 1] (the seeds torch.manual_seed takes)"),
        ("train", dict(seed=-1), "train.seed = -1: must be in [0, 2**64 - 1] (the seeds torch.manual_seed takes)"),
        ("model", dict(box_detections_per_img=-1), "model.box_detections_per_img = -1: must be >= 1"),
    ],
)
def test_reported_cases_are_one_line_errors(section, fields, message):
    assert error_of(section, **fields) == message


def test_seed_bounds_are_torchs():
    torch.manual_seed(cfg.SEED_MAX)
    with pytest.raises((RuntimeError, ValueError)):
        torch.manual_seed(cfg.SEED_MAX + 1)
    torch.manual_seed(0)
    assert resolve("tiny", overrides={"train": {"seed": cfg.SEED_MAX}})[2].seed == cfg.SEED_MAX


# -- Every preset is valid; every field has a rule ---------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    preset = PRESETS[name]
    check_config(preset.model)
    check_config(preset.train)
    assert resolve(name) == (name, preset.model, preset.train)
    assert from_dict(ModelConfig, to_dict(preset.model)) == preset.model  # the checkpoint / config.json round trip
    assert from_dict(TrainConfig, to_dict(preset.train)) == preset.train


def test_every_field_has_a_rule():
    assert list(rules._MODEL_RULES) == [f.name for f in dataclasses.fields(ModelConfig)]
    assert list(rules._TRAIN_RULES) == [f.name for f in dataclasses.fields(TrainConfig)]


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_every_field_is_type_checked(cls):
    section = schema._SECTIONS[cls]
    for f in dataclasses.fields(cls):
        wrong = 7 if isinstance(getattr(cls(), f.name), str) else "x"
        with pytest.raises(ConfigError) as e:
            check_config(dataclasses.replace(cls(), **{f.name: wrong}))
        assert str(e.value).startswith(f"{section}.{f.name} = {wrong!r}: must be "), str(e.value)
        assert ";" not in str(e.value)  # relations that involve a badly typed field are not checked


# -- Types ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_classes=True), "model.num_classes = True: must be an integer"),
        (dict(min_size=600.0), "model.min_size = 600.0: must be an integer"),
        (dict(rpn_ignore_cross_boundary=1), "model.rpn_ignore_cross_boundary = 1: must be true or false"),
        (dict(image_mean=(1.0, 2.0)), "model.image_mean = (1.0, 2.0): must be a tuple of 3 finite numbers"),
        (dict(image_std=(1.0, float("nan"), 1.0)), "model.image_std = (1.0, nan, 1.0): must be a tuple of 3 finite numbers"),
        (dict(box_reg_weights=[10.0, 10.0, 5.0, 5.0]), "model.box_reg_weights = [10.0, 10.0, 5.0, 5.0]: must be a tuple of 4 finite numbers"),
        (dict(anchor_sizes=((32.0, "64"),)), "model.anchor_sizes = ((32.0, '64'),): must be a tuple of tuples of finite numbers"),
        (dict(anchor_sizes=(32.0, 64.0)), "model.anchor_sizes = (32.0, 64.0): must be a tuple of tuples of finite numbers"),
        (dict(box_head_ranks=(8,)), "model.box_head_ranks = (8,): must be a tuple of 2 integers or null"),
        (dict(box_score_map=(1.0, float("nan"))), "model.box_score_map = (1.0, nan): must be a tuple of 2 finite numbers or null"),
        (dict(representation_size=1.5), "model.representation_size = 1.5: must be an integer or null"),
        (dict(rpn_min_size=10**400), f"model.rpn_min_size = {str(10**400)[:60]}... (401 characters): must be a finite number"),
    ],
)
def test_type_errors(fields, message):
    with pytest.raises(ConfigError) as e:
        check_config(dataclasses.replace(ModelConfig(), **fields))
    assert str(e.value) == message


def test_ints_are_floats_and_null_is_allowed_where_annotated():
    check_config(TrainConfig(lr=1, grad_clip_norm=None, epochs=None, warmup_factor=1))
    check_config(ModelConfig(image_mean=(0, 0, 0), representation_size=None, trainable_backbone_layers=None, box_head_ranks=(16, 8)))
    check_config(ModelConfig(box_score_map=(0.5, -2)))  # a negative offset is fine: only the slope keeps the order


# -- Ranges --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "section, fields, message",
    [
        ("model", dict(backbone="resnet18"), "model.backbone = 'resnet18': must be one of vgg16, resnet50, resnet101, resnet50_fpn, mobilenet_v3_large_fpn, tiny"),
        ("model", dict(box_pooler="roi_max"), "model.box_pooler = 'roi_max': must be one of roi_pool, roi_align, multiscale_roi_align"),
        ("model", dict(num_classes=0), "model.num_classes = 0: must be >= 1"),
        ("model", dict(image_std=(1.0, 0.0, 1.0)), "model.image_std = (1.0, 0.0, 1.0): every value must be > 0"),
        ("model", dict(anchor_sizes=((),)), "model.anchor_sizes = ((),): must hold at least one tuple (one per feature map), none of them empty"),
        ("model", dict(aspect_ratios=((0.5, -1.0, 2.0),)), "model.aspect_ratios = ((0.5, -1.0, 2.0),): every value must be > 0"),
        ("model", dict(rpn_nms_thresh=1.5), "model.rpn_nms_thresh = 1.5: must be in [0, 1]"),
        ("model", dict(rpn_positive_fraction=0.0), "model.rpn_positive_fraction = 0.0: must be in (0, 1]"),
        ("model", dict(box_score_thresh=1.0), "model.box_score_thresh = 1.0: must be in [0, 1)"),
        ("model", dict(rpn_post_nms_top_n_test=0), "model.rpn_post_nms_top_n_test = 0: must be >= 1"),
        ("model", dict(box_smooth_l1_beta=-0.5), "model.box_smooth_l1_beta = -0.5: must be >= 0"),
        ("model", dict(box_head_ranks=(16, 0)), "model.box_head_ranks = (16, 0): every value must be >= 1"),
        ("model", dict(box_score_map=[0.0, 1.0]), "model.box_score_map = (0.0, 1.0): its slope a (the first value) must be > 0: the map must keep the score order"),
        ("model", dict(box_score_map=[-2, 0.5]), "model.box_score_map = (-2, 0.5): its slope a (the first value) must be > 0: the map must keep the score order"),
        ("model", dict(representation_size=0), "model.representation_size = 0: must be >= 1"),
        ("model", dict(trainable_backbone_layers=-1), "model.trainable_backbone_layers = -1: must be >= 0"),
        ("train", dict(warmup_factor=0), "train.warmup_factor = 0: must be in (0, 1]"),
        ("train", dict(warmup_factor=1.5), "train.warmup_factor = 1.5: must be in (0, 1]"),
        ("train", dict(lr_steps=[0, 10]), "train.lr_steps = (0, 10): every value must be >= 1"),
        ("train", dict(lr_steps=[10, 10]), "train.lr_steps = (10, 10): must be increasing"),
        ("train", dict(lr_gamma=0), "train.lr_gamma = 0: must be > 0"),
        ("train", dict(weight_decay=-1e-4), "train.weight_decay = -0.0001: must be >= 0"),
        ("train", dict(amp_dtype="fp8"), "train.amp_dtype = 'fp8': must be one of bf16, fp16"),
        ("train", dict(time=0), "train.time = 0: must be > 0"),
        ("train", dict(time=-1.5), "train.time = -1.5: must be > 0"),
        ("train", dict(time=float("inf")), "train.time = inf: must be a finite number or null"),
        ("train", dict(lr_schedule="linear"), "train.lr_schedule = 'linear': must be one of step, cosine"),
        ("train", dict(ema_decay=1.0), "train.ema_decay = 1.0: must be in (0, 1)"),
        ("train", dict(scale_jitter=[0.0, 1.2]), "train.scale_jitter = (0.0, 1.2): every value must be > 0"),
        ("train", dict(scale_jitter=[1.2, 0.8]), "train.scale_jitter = (1.2, 0.8): must be (low, high) with low <= high"),
        ("train", dict(color_jitter=[0.2, -0.1, 0.0, 0.0]), "train.color_jitter = (0.2, -0.1, 0.0, 0.0): every value must be >= 0"),
        ("train", dict(color_jitter=[0.2, 0.2, 0.2, 0.6]), "train.color_jitter = (0.2, 0.2, 0.2, 0.6): hue (the 4th value) must be <= 0.5 (half a turn of the colour wheel)"),
        ("train", dict(color_jitter=[0.2, 0.2]), "train.color_jitter = (0.2, 0.2): must be a tuple of 4 finite numbers or null"),
        ("train", dict(fit_anchors="yes"), "train.fit_anchors = 'yes': must be true or false"),
    ],
)
def test_range_errors(section, fields, message):
    assert error_of(section, **fields) == message


def test_the_trainers_former_rules_are_all_here():
    # Every value the trainer rejected (before config.py had the rules) is rejected here.
    bad = dict(batch_size=0, lr=0.0, max_iters=0, epochs=0, warmup_iters=-1, grad_clip_norm=0.0, hflip_prob=1.5,
               log_every=0, checkpoint_every=0, eval_every=-1, max_nonfinite_steps=0, amp_dtype="fp8")
    for name, value in bad.items():
        config = dataclasses.replace(TrainConfig(), **{name: value})
        with pytest.raises(ConfigError, match=rf"^train\.{name} = "):
            check_config(config)


# -- Relations ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "preset, fields, message",
    [
        ("vgg16", dict(max_size=500), "model.max_size = 500: must be >= min_size (600)"),
        ("vgg16", dict(box_bg_iou_thresh=0.6), "model.box_bg_iou_thresh = 0.6: must be <= box_fg_iou_thresh (0.5)"),
        ("vgg16", dict(box_bg_iou_low=0.55), "model.box_bg_iou_low = 0.55: must be <= box_bg_iou_thresh (0.5)"),
        ("vgg16", dict(aspect_ratios=[[1.0]] * 2), "model.aspect_ratios = ((1.0,), (1.0,)): must hold one tuple per tuple of anchor_sizes (1), got 2"),
        (
            "resnet50_fpn",
            dict(aspect_ratios=[[0.5, 1.0, 2.0]] * 4 + [[1.0]]),
            "model.anchor_sizes = ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)): every feature map needs the same "
            "number of anchors per cell (sizes x ratios), got [3, 3, 3, 3, 1]",
        ),
        (
            "resnet50_fpn",
            dict(anchor_sizes=[[32.0]] * 3, aspect_ratios=[[1.0]] * 3),
            "model.anchor_sizes = ((32.0,), (32.0,), (32.0,)): must hold one tuple of sizes per feature map of backbone resnet50_fpn (5), got 3",
        ),
        ("resnet50_fpn", dict(box_pooler="roi_align"), "model.box_pooler = 'roi_align': backbone resnet50_fpn has several feature maps: use multiscale_roi_align"),
        ("vgg16", dict(trainable_backbone_layers=6), "model.trainable_backbone_layers = 6: must be in 0..5 for backbone vgg16"),
        ("tiny", dict(trainable_backbone_layers=5), "model.trainable_backbone_layers = 5: must be in 0..4 for backbone tiny"),
        ("resnet50_c4", dict(representation_size=1024), "model.representation_size = 1024: must be 2048 or null for backbone resnet50 (the width of its box head)"),
    ],
)
def test_relation_errors(preset, fields, message):
    with pytest.raises(ConfigError) as e:
        resolve(preset, overrides={"model": fields})
    assert str(e.value) == message


def test_relations_that_hold():
    resolve("vgg16", overrides={"model": dict(rpn_fg_iou_thresh=0.3, box_bg_iou_low=0.5, max_size=600)})  # equal is fine
    resolve("resnet50_c4", overrides={"model": dict(representation_size=2048, trainable_backbone_layers=5)})
    resolve("tiny", overrides={"train": dict(max_iters=0, epochs=2), "model": dict(rpn_post_nms_top_n_test=1000)})  # post > pre
    resolve("vgg16", overrides={"train": dict(lr_steps=[], max_iters=10)})  # no decay; steps need not be reached


def test_all_problems_in_one_line_and_no_relation_on_a_bad_field():
    with pytest.raises(ConfigError) as e:
        resolve("vgg16", overrides={"model": dict(min_size="big", rpn_fg_iou_thresh="high"), "train": dict(lr=-1)})
    assert str(e.value) == (
        "model.min_size = 'big': must be an integer; model.rpn_fg_iou_thresh = 'high': must be a finite number; "
        "train.lr = -1: must be > 0"
    )


def test_backbone_change_checks_the_preset_anchors():
    # The preset's anchors are checked against the new backbone, and the message says which value to change.
    with pytest.raises(ConfigError, match=r"^model\.anchor_sizes = \(\(128\.0, 256\.0, 512\.0\),\): must hold one tuple of sizes per feature map of backbone mobilenet_v3_large_fpn \(3\), got 1; model\.box_pooler"):
        resolve("vgg16", overrides={"model": {"backbone": "mobilenet_v3_large_fpn"}})


# -- What validation knows agrees with the model builder ------------------------------------------------
def test_names_agree_with_the_model_builder():
    from fasterrcnn.device import AMP_DTYPES
    from fasterrcnn.modeling.backbones import BACKBONE_NAMES

    assert tuple(cfg.BACKBONES) == BACKBONE_NAMES
    assert cfg.AMP_DTYPES == tuple(AMP_DTYPES)


@pytest.mark.parametrize("name", sorted(cfg.BACKBONES))
def test_backbone_facts_agree_with_the_builder(name):
    from fasterrcnn.modeling.backbones import build_backbone

    facts = cfg.BACKBONES[name]
    with torch.device("meta"):  # shapes only: no weights are initialised
        parts = build_backbone(name, trainable_layers=facts.trainable_layers)
        assert len(parts.featmap_names) == facts.feature_maps
        if facts.box_head_width is not None:
            assert parts.box_head_out_channels == facts.box_head_width
            with pytest.raises(ConfigError):
                build_backbone(name, representation_size=facts.box_head_width // 2)
        with pytest.raises((ConfigError, ValueError), match="trainable_layers must be in 0"):
            build_backbone(name, trainable_layers=facts.trainable_layers + 1)


# -- Dicts, files, --set, layers ----------------------------------------------------------------------------
def test_from_dict_makes_tuples_and_names_the_source():
    config = from_dict(ModelConfig, {"anchor_sizes": [[32, 64]], "aspect_ratios": [[1.0]]})
    assert config.anchor_sizes == ((32, 64),) and config.aspect_ratios == ((1.0,),)
    with pytest.raises(ConfigError) as e:
        from_dict(ModelConfig, {"rpn_nms_tresh": 0.5, "no_such": 1}, source="run.json")
    assert str(e.value) == "model.no_such: unknown field (in run.json); model.rpn_nms_tresh: unknown field (did you mean rpn_nms_thresh?) (in run.json)"
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, {"lr": 0}, source="run.json")
    assert str(e.value) == "train.lr = 0: must be > 0 (in run.json)"
    with pytest.raises(ConfigError, match=r"^train: expected a mapping of train fields, got list \(in run.json\)$"):
        from_dict(TrainConfig, [1], source="run.json")


def test_parse_overrides():
    items = ["model.rpn_nms_thresh=0.6", "train.lr_steps=[800, 1000]", "model.pixel_format=rgb01", "train.epochs=null", "train.amp=true", "model.min_size=1=2"]
    assert parse_overrides(items) == {
        "model": {"rpn_nms_thresh": 0.6, "pixel_format": "rgb01", "min_size": "1=2"},
        "train": {"lr_steps": [800, 1000], "epochs": None, "amp": True},
    }
    for bad in ("lr=1", "train.lr", "optimizer.lr=1", "model.=1"):
        with pytest.raises(ConfigError, match=rf"^--set '{bad}': expected model.FIELD=VALUE or train.FIELD=VALUE$"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match=r"^model\.pixel_format = 'hsv': must be one of rgb01, caffe_bgr255$"):
        resolve("tiny", overrides=parse_overrides(["model.pixel_format=hsv"]))


def test_precedence_preset_file_overrides():
    file = {"preset": "tiny", "model": {"rpn_nms_thresh": 0.5, "min_size": 64}, "train": {"lr": 0.5, "momentum": 0.8}}
    name, model, train = resolve(None, file=file, file_source="run.json", overrides={"model": {"rpn_nms_thresh": 0.6}, "train": {"lr": 0.01}})
    assert name == "tiny"
    assert (model.rpn_nms_thresh, model.min_size, model.max_size) == (0.6, 64, PRESETS["tiny"].model.max_size)
    assert (train.lr, train.momentum) == (0.01, 0.8)
    assert resolve("vgg16", file=file)[0] == "vgg16"  # the argument wins over the file's preset
    with pytest.raises(ConfigError, match=r'^no preset: name one \(--preset NAME\) or put "preset" in the config file$'):
        resolve(None, file={"model": {}})
    with pytest.raises(ConfigError, match=r"^unknown preset 'vgg19'"):
        resolve("vgg19")


def test_each_bad_value_names_the_file_it_came_from():
    file = {"model": {"min_size": 0}, "train": {"momentum": 1.0}}
    with pytest.raises(ConfigError) as e:
        resolve("tiny", file=file, file_source="run.yaml", overrides={"train": {"lr": float("inf")}})
    assert str(e.value) == "model.min_size = 0: must be >= 1 (in run.yaml); train.lr = inf: must be a finite number; train.momentum = 1.0: must be in [0, 1) (in run.yaml)"
    # An override replaces the file's bad value: nothing left to report.
    assert resolve("tiny", file=file, file_source="run.yaml", overrides={"model": {"min_size": 64}, "train": {"momentum": 0.9}})[1].min_size == 64
    with pytest.raises(ConfigError, match=r"^model\.colour: unknown field \(in run\.yaml\)$"):
        resolve("tiny", file={"model": {"colour": 1}}, file_source="run.yaml")
    with pytest.raises(ConfigError, match=r"^unknown override section\(s\) optimizer \(expected model, train\)$"):
        resolve("tiny", overrides={"optimizer": {}})


def test_resume_layers_on_the_checkpoints_config(tmp_path):
    last = tmp_path / "last.pt"
    base = {"preset": "tiny", "model": to_dict(PRESETS["tiny"].model), "train": {**to_dict(PRESETS["tiny"].train), "lr": 0.3}}
    name, model, train = resolve(None, base=base, base_source=last, overrides={"train": {"max_iters": 5000}})
    assert (name, model, train.lr, train.max_iters) == ("tiny", PRESETS["tiny"].model, 0.3, 5000)
    with pytest.raises(ConfigError, match=r"^preset 'vgg16': the run to resume was trained with preset 'tiny'$"):
        resolve("vgg16", base=base, base_source=last)
    with pytest.raises(ConfigError, match=r"^preset 'vgg16' \(in run\.json\): the run to resume was trained with preset 'tiny'$"):
        resolve(None, base=base, base_source=last, file={"preset": "vgg16"}, file_source="run.json")
    base["model"]["box_detections_per_img"] = -1  # written by an older version that did not check
    with pytest.raises(ConfigError) as e:
        resolve(None, base=base, base_source=last)
    assert str(e.value) == f"model.box_detections_per_img = -1: must be >= 1 (in {last})"
    assert resolve(None, base=base, base_source=last, overrides={"model": {"box_detections_per_img": 100}})[1].box_detections_per_img == 100
    with pytest.raises(DataError, match=r"last\.pt: run configuration: missing train$"):
        resolve(None, base={"preset": "tiny", "model": {}}, base_source=last)


def test_json_and_yaml_config_files(tmp_path):
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"preset": "tiny", "model": {"anchor_sizes": [[16, 32, 64, 128]]}, "train": {"lr": 1e-4}}))
    yaml_file = tmp_path / "run.yml"
    yaml_file.write_text("preset: tiny\nmodel:\n  anchor_sizes: [[16, 32, 64, 128]]\ntrain:\n  lr: 1e-4  # a float, as in JSON\n")
    assert load_config_file(json_file) == load_config_file(yaml_file) == {"preset": "tiny", "model": {"anchor_sizes": [[16, 32, 64, 128]]}, "train": {"lr": 1e-4}}
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train:\n  lr: .inf\n  lr_gamma: -2.5e-1\n")
    with pytest.raises(ConfigError) as e:
        resolve("tiny", file=load_config_file(yaml_file), file_source=yaml_file)
    assert str(e.value) == f"train.lr = inf: must be a finite number (in {yaml_file}); train.lr_gamma = -0.25: must be > 0 (in {yaml_file})"
    json_file.write_text('{"train": {"lr": NaN}}')  # Python's json reads NaN: caught as a value, with the file
    with pytest.raises(ConfigError, match=r"^train\.lr = nan: must be a finite number \(in .*run\.json\)$"):
        resolve("tiny", file=load_config_file(json_file), file_source=json_file)


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("run.json", "{not json", "not valid JSON (line 1 column 2: Expecting property name enclosed in double quotes)"),
        ("run.json", "[1, 2]", "expected a mapping with keys preset, model, train, got list"),
        ("run.json", '{"preset": "tiny", "optimizer": {}}', "unknown key(s) optimizer (expected preset, model, train)"),
        ("run.json", '{"model": [1]}', "'model' must be a mapping of model fields"),
        ("run.json", '{"preset": 3}', "'preset' must be a preset name, got 3"),
        ("run.yaml", "", "expected a mapping with keys preset, model, train, got NoneType"),
        ("run.yaml", "model: {min_size: 1\n", "not valid YAML (line 2 column 1: expected ',' or '}', but got '<stream end>')"),
        # Tags that would build Python objects are refused: a config file is data, never code.
        ("run.yaml", 'preset: !!python/object/apply:os.system ["true"]\n', "not valid YAML (line 1 column 9: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system')"),
    ],
)
def test_malformed_config_files_name_the_file(tmp_path, name, text, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as e:
        load_config_file(path)
    assert str(e.value) == f"{path}: {problem}"


def test_missing_config_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.json: cannot read config file \(No such file or directory\)$"):
        load_config_file(tmp_path / "nope.json")


# -- Configs read from checkpoints ---------------------------------------------------------------------
def test_config_from_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    stored = {"preset": "tiny", "model": to_dict(PRESETS["tiny"].model), "train": to_dict(PRESETS["tiny"].train)}
    assert config_from_checkpoint(stored, path) == ("tiny", PRESETS["tiny"].model, PRESETS["tiny"].train)
    assert config_from_checkpoint({"model": stored["model"]}, path) == (None, PRESETS["tiny"].model, None)
    bad = {**stored, "model": {**stored["model"], "box_detections_per_img": -1}}
    with pytest.raises(DataError) as e:
        config_from_checkpoint(bad, path)
    assert str(e.value) == f"{path}: checkpoint holds an invalid configuration: model.box_detections_per_img = -1: must be >= 1"
    with pytest.raises(DataError, match=r"last\.pt: checkpoint configuration: missing model$"):
        config_from_checkpoint({"preset": "tiny"}, path)
    with pytest.raises(DataError, match=r"last\.pt: checkpoint configuration: expected a mapping"):
        config_from_checkpoint(None, path)


def test_detector_names_the_checkpoint_with_a_bad_config(tmp_path):
    from fasterrcnn.detector import Detector

    path = tmp_path / "model.pt"
    model = {**to_dict(PRESETS["tiny"].model), "num_classes": 1, "box_detections_per_img": -1}
    state = {"model": {}, "config": {"preset": "tiny", "model": model}, "class_names": ["dog"]}
    from fasterrcnn.engine.checkpoint import save_checkpoint

    save_checkpoint(path, state)
    with pytest.raises(DataError) as e:
        Detector.from_checkpoint(path)
    assert str(e.value) == f"{path}: checkpoint holds an invalid configuration: model.box_detections_per_img = -1: must be >= 1"
