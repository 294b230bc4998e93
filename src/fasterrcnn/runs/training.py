"""``train``: a whole training run from Python, as ``fasterrcnn train`` does it.

    from fasterrcnn.runs import train
    result = train("VOCdevkit/VOC2007", "runs/voc07", preset="vgg16", epochs=16, backbone_weights="vgg16.pth")
    result = train("VOCdevkit/VOC2007", "runs/voc07", resume=True)          # continue it
    result = train("VOCdevkit/VOC2007", "runs/voc07_1h", preset="vgg16", time=60)  # an hour of training
    print(result.best_metric, result.last)

Configuration precedence: the preset (or, with ``resume``, the run's own configuration) < the ``config``
file < ``overrides`` (``{"train.lr": 0.01, "model.rpn_nms_thresh": 0.6}``) < the keyword arguments that
name a training field (``epochs``, ``max_iters``, ``time``, ``batch_size``, ``lr``, ``seed``).

Schedule: when a new run's length (max_iters, or epochs x batches per epoch) differs from the preset's
max_iters, the preset's warm-up and LR steps follow it (``engine.schedule.scale_schedule``: steps at the same
fractions, the warm-up shortened but never lengthened); a ``warmup_iters`` or ``lr_steps`` set in the config
file or the overrides is kept as given. ``time`` (minutes) trains for a wall-clock budget instead: the run
ends when it is spent, with warm-up and steps at their fractions of the iterations that fit (see
``engine.trainer``); the length settings then only give the schedule's fractions.

On ``resume`` only the settings in ``RESUMABLE_CHANGES`` may change (a longer run or time budget, other
logging and checkpoint intervals) and nothing is re-scaled (the checkpoint holds the placed schedule); the
changes are recorded in ``config.json`` under ``"changes"`` beside the original settings. Any other
difference is refused with the list of differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasterrcnn.errors import ConfigError
from fasterrcnn.runs.folder import RunFolder

__all__ = ["RESUMABLE_CHANGES", "TrainResult", "train"]

# TrainConfig fields that may differ on resume: they change how long the run is, or what it writes and
# when, not the trajectory of the weights up to the checkpoint.
RESUMABLE_CHANGES = ("max_iters", "epochs", "time", "eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "max_nonfinite_steps")


@dataclass(frozen=True)
class TrainResult:
    """What a run left: its folder, ``last.pt`` (and ``best.pt`` when validated), where it ended and its metrics."""

    run_dir: Path
    last: Path
    best: Path | None
    iteration: int
    metrics: dict[str, Any] | None  # the last validation's, None without a validation set
    best_metric: float | None
    skipped: int  # bad images left out under on_bad_image="skip"


def _nest(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """``{"train.lr": 0.01}`` -> ``{"model": {}, "train": {"lr": 0.01}}``."""
    nested: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for key, value in (overrides or {}).items():
        section, dot, name = str(key).partition(".")
        if not dot or section not in nested or not name:
            raise ConfigError(f"override {key!r}: expected model.FIELD or train.FIELD")
        nested[section][name] = value
    return nested


def resolve_run_config(
    preset: str | None,
    *,
    base: Mapping[str, Any] | None = None,
    base_source: str | Path | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
):
    """(preset name, ModelConfig, TrainConfig) from the preset or ``base`` (a checkpoint's config, read from
    ``base_source``) < ``config_file`` < ``overrides``, checked once (``config.resolve``)."""
    return _resolve(preset, base, base_source, config_file, overrides)[:3]


def _resolve(preset, base, base_source, config_file, overrides):
    """``resolve_run_config``'s configs, and the schedule fields the user set (in the file or the overrides)."""
    from fasterrcnn.config import load_config_file, resolve
    from fasterrcnn.engine.schedule import SCHEDULE_FIELDS

    nested = _nest(overrides)
    train = nested["train"]
    if "max_iters" in train and "epochs" not in train:
        train["epochs"] = None  # a length given in iterations replaces one in epochs
    if ("max_iters" in train or "epochs" in train) and "time" not in train:
        train["time"] = None  # ... and a time budget
    file = load_config_file(config_file) if config_file is not None else None
    name, model_config, train_config = resolve(preset, base=base, file=file, overrides=nested, base_source=base_source, file_source=config_file)
    user_set = [key for key in SCHEDULE_FIELDS if key in train or key in (file or {}).get("train", {})]
    return name, model_config, train_config, user_set


def _resume_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list]:
    """``{"train.max_iters": [old, new], ...}``; ConfigError listing every change that is not resumable."""
    changes = {
        f"{section}.{key}": [old[section].get(key), value]
        for section in ("model", "train")
        for key, value in new[section].items()
        if old[section].get(key) != value
    }
    refused = [key for key in changes if not (key.startswith("train.") and key[6:] in RESUMABLE_CHANGES)]
    if refused:
        listed = "; ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        allowed = ", ".join(RESUMABLE_CHANGES)
        raise ConfigError(
            f"--resume would change the run's settings: {listed}. Only {allowed} may change when resuming; "
            "start a new run (another --output, or --overwrite) for the others"
        )
    return changes


def _validation_set(data, split, val_data, val_split, val_images, classes, on_bad_image, reduce_to):
    """The validation data set (or None): ``val_data``, else the ``val_split`` of a VOC root when it exists, or
    of a YOLO ``data.yaml`` (its ``val`` entry when it has no ``val_split``)."""
    from fasterrcnn.data import build_dataset
    from fasterrcnn.data.yolo import find_data_yaml, read_data_yaml

    if val_data is not None:
        return build_dataset(val_data, split=val_split, images_dir=val_images, classes=classes, on_bad_image=on_bad_image, reduce_to=reduce_to)
    yaml_path = find_data_yaml(data)
    if yaml_path is not None:
        entries = read_data_yaml(yaml_path)
        for name in (val_split, "val"):
            if name != split and entries.get(name) not in (None, "", []):
                return build_dataset(data, split=name, classes=classes, on_bad_image=on_bad_image, reduce_to=reduce_to)
        return None
    data = Path(data)
    if data.is_dir() and val_split != split and (data / "ImageSets" / "Main" / f"{val_split}.txt").is_file():
        return build_dataset(data, split=val_split, classes=classes, on_bad_image=on_bad_image, reduce_to=reduce_to)
    return None


def train(
    data: str | Path,
    output: str | Path,
    *,
    preset: str | None = None,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    epochs: int | None = None,
    max_iters: int | None = None,
    time: float | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int | None = None,
    backbone_weights: str | Path | None = None,
    download: bool | None = None,
    split: str = "trainval",
    images: str | Path | None = None,
    classes: list[str] | None = None,
    drop_empty: bool = False,
    val_data: str | Path | None = None,
    val_split: str = "test",
    val_images: str | Path | None = None,
    validate: bool = True,
    metric: str | None = None,
    device: str = "auto",
    num_workers: int = 0,
    on_bad_image: str = "skip",
    quiet: bool = False,
) -> TrainResult:
    """Train a Faster R-CNN on ``data`` (a VOC root or a COCO instances JSON) into the run folder ``output``.

    ``output`` must be new or empty; ``resume`` continues the run in it from ``checkpoints/last.pt``;
    ``overwrite`` deletes an earlier run's files there first. The folder is locked while training.
    ``backbone_weights``: a file, or the name of a registered ImageNet file (``fasterrcnn.pretrained``),
    downloaded into the cache when ``download`` allows it (None: when ``FASTERRCNN_DOWNLOAD=1``).
    The run's length: ``epochs``, ``max_iters`` or ``time`` (minutes of wall-clock training, see the module
    docstring), at most one of them; none: the configuration's.
    Validation uses ``val_data`` (or the ``val_split`` of a VOC root) unless ``validate`` is False.
    Any exception during training first writes ``last.pt`` (``engine.trainer.TrainingFailed``).
    Started by torchrun, every process calls it (data parallel); rank 0 owns the folder.
    Returns a ``TrainResult``.
    """
    from fasterrcnn.engine import distributed

    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder, --overwrite deletes it: choose one")
    folder = RunFolder(output)
    length = {key: value for key, value in (("epochs", epochs), ("max_iters", max_iters), ("time", time)) if value is not None}
    if len(length) > 1:
        raise ConfigError(f"give the run's length as epochs, max_iters or time, not several (got {', '.join(length)})")
    flags = {"batch_size": batch_size, "lr": lr, "seed": seed, **length}
    overrides = {**(overrides or {}), **{f"train.{k}": v for k, v in flags.items() if v is not None}}
    options = dict(
        split=split, images=images, classes=classes, drop_empty=drop_empty, val_data=val_data, val_split=val_split,
        val_images=val_images, validate=validate, metric=metric, device=device, num_workers=num_workers,
        on_bad_image=on_bad_image, quiet=quiet, download=download,
    )  # fmt: skip
    distributed.init_distributed(device)  # torchrun: join the process group (a no-op otherwise)
    if not distributed.is_main_process():  # rank 0 owns the folder; the others train beside it
        return _train(folder, data, preset, config, overrides, resume, backbone_weights, options)
    with folder.lock():
        folder.prepare(resume=resume, overwrite=overwrite)
        return _train(folder, data, preset, config, overrides, resume, backbone_weights, options)


def _train(folder: RunFolder, data, preset, config_file, overrides, resume, backbone_weights, options: dict) -> TrainResult:
    import torch

    from fasterrcnn.config import get_preset, replace, to_dict
    from fasterrcnn.data import build_dataset
    from fasterrcnn.data.transforms import training_transforms
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.checkpoint import Checkpoint
    from fasterrcnn.engine.evaluator import evaluate_model
    from fasterrcnn.engine.report import build_report
    from fasterrcnn.engine.trainer import Trainer
    from fasterrcnn.engine.validation import validation_losses
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN
    from fasterrcnn.pretrained import warn_untrained_backbone

    device = distributed.init_distributed(options["device"])
    main_process, world_size = distributed.is_main_process(), distributed.get_world_size()
    checkpoint, base, class_names = None, None, options["classes"]
    if resume:
        checkpoint = Checkpoint.read(folder.checkpoints.last)  # read once: its config, then its state
        checkpoint.require_training(folder.checkpoints.last)
        base = checkpoint.config
        if class_names is None and checkpoint.label_to_category_id is None:
            class_names = list(checkpoint.class_names)
    preset_name, model_config, train_config, user_schedule = _resolve(
        preset, base, folder.checkpoints.last if resume else None, config_file, overrides
    )

    flip = training_transforms(train_config.hflip_prob, train_config.color_jitter)
    on_bad_image = options["on_bad_image"]
    reduce_to = (model_config.min_size, model_config.max_size)  # a huge image is decoded reduced to about this
    dataset = build_dataset(
        data, split=options["split"], images_dir=options["images"], classes=class_names, transforms=flip,
        on_bad_image=on_bad_image, drop_empty=options["drop_empty"], reduce_to=reduce_to,
    )  # fmt: skip
    val_dataset = None
    if options["validate"]:
        val_dataset = _validation_set(
            data, options["split"], options["val_data"], options["val_split"], options["val_images"], dataset.classes,
            on_bad_image, reduce_to,
        )  # fmt: skip
    model_config = replace(model_config, num_classes=len(dataset.classes))
    if not resume:  # the anchors' fit to the boxes (fitted with train.fit_anchors), recorded in the model's config
        from fasterrcnn.modeling.anchor_fit import check_anchors

        model_config, fit = check_anchors(dataset, model_config, fit=train_config.fit_anchors)
        if fit is not None and main_process:
            print(fit, flush=True)
    changes = {}
    if checkpoint is not None:
        changes = _resume_changes(base, {"model": to_dict(model_config), "train": to_dict(train_config)})
    metric = options["metric"] or (val_dataset if val_dataset is not None else dataset).default_metric

    if not resume and main_process:
        warn_untrained_backbone(model_config.backbone, backbone_weights)
    torch.manual_seed(train_config.seed)  # weight initialisation
    model = FasterRCNN.from_config(model_config, backbone_weights=None if resume else backbone_weights, download=options["download"])
    evaluate = None
    if val_dataset is not None:
        num_workers, quiet = options["num_workers"], options["quiet"]

        def evaluate(model):
            results, metrics = evaluate_model(
                model, val_dataset, metric=metric, class_names=dataset.classes,
                label_to_category_id=dataset.label_to_category_id, num_workers=num_workers, device=device, progress=not quiet,
            )  # fmt: skip
            # val_loss, val_loss_objectness, ...: logged and drawn beside the training losses
            losses = validation_losses(model, val_dataset, num_workers=num_workers, device=device, seed=train_config.seed, progress=not quiet)
            # confusion matrix, per-class table, samples: the trainer writes them and takes them out of the metrics
            report = build_report(results, val_dataset, metrics, class_names=dataset.classes) if main_process else None
            return {**metrics, **losses, "report": report}

    trainer = Trainer(
        model, dataset, config=train_config, output_dir=folder.path, preset=preset_name, class_names=dataset.classes,
        label_to_category_id=dataset.label_to_category_id, evaluate=evaluate, device=device,
        num_workers=options["num_workers"], quiet=options["quiet"],
        # a new run's preset schedule follows its length; a resumed one keeps its checkpoint's
        schedule_length=None if resume else get_preset(preset_name).train.max_iters, fixed_schedule=user_schedule,
    )  # fmt: skip
    if checkpoint is not None:
        trainer.resume(checkpoint, folder.checkpoints.last)
        checkpoint = None  # its tensors are in the model and the optimizer now
    if main_process:
        record = folder.read_config() if resume else {}
        record.update(
            {key: value for key, value in trainer.checkpoint().config.items() if not resume or key not in record},
            class_names=list(dataset.classes),
            data={
                "train": dataset.describe(),
                "val": None if val_dataset is None else val_dataset.describe(),
                "metric": metric if val_dataset is not None else None,
            },
            max_iters=trainer.max_iters,
            processes=world_size,
        )
        if changes:
            record.setdefault("changes", []).append({"iteration": trainer.state.iteration, "changed": changes})
        folder.write_config(record)
        print(
            f"training {preset_name} on {len(dataset)} images ({len(dataset.classes)} classes) for "
            + (f"{train_config.time:g} minute{'' if train_config.time == 1 else 's'}" if train_config.time is not None else f"{trainer.max_iters} iterations")
            + f" on {device}" + (f", resuming at {trainer.state.iteration}" if resume else "")
            + ("" if val_dataset is not None else "; no validation set")
            + "".join(f"; {key} {old!r} -> {new!r}" for key, (old, new) in changes.items()),
            flush=True,
        )  # fmt: skip
        if world_size > 1:
            base_lr = f"{train_config.lr:g}"
            rule = f"= {base_lr} x {world_size} (linear scaling; --no-scale-lr keeps {base_lr})" if train_config.scale_lr else "(not scaled: --no-scale-lr)"
            print(
                f"data parallel: {world_size} processes x {train_config.batch_size} images = global batch "
                f"{world_size * train_config.batch_size}; lr {trainer.lr:g} {rule}",
                flush=True,
            )
    summary = trainer.train()
    best = folder.checkpoints.best
    return TrainResult(
        run_dir=folder.path,
        last=folder.checkpoints.last,
        best=best if best.is_file() else None,
        iteration=summary["iteration"],
        metrics=summary["metrics"],
        best_metric=summary["best_metric"],
        skipped=len(dataset.skipped) + len(trainer.loader.skipped),
    )
