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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fasterrcnn.data.specs import TrainingData, ValidationData
from fasterrcnn.errors import ConfigError
from fasterrcnn.runs.folder import RunFolder

__all__ = ["RESUMABLE_CHANGES", "TrainResult", "TrainingData", "ValidationData", "train"]

# TrainConfig fields that may differ on resume: they change how long the run is, or what it writes and
# when, not the trajectory of the weights up to the checkpoint.
RESUMABLE_CHANGES = (
    "max_iters", "epochs", "time", "eval_every", "patience", "checkpoint_every", "keep_checkpoints", "log_every", "max_nonfinite_steps",
)  # fmt: skip


@dataclass(frozen=True)
class TrainResult:
    """What a run left: its folder, ``last.pt`` (and ``best.pt`` when validated), where it ended, its metrics and
    ``files``: the run's files and folders in ``run_dir`` (``runs.folder.RUN_ENTRIES``), by name."""

    run_dir: Path
    last: Path
    best: Path | None
    iteration: int
    metrics: dict[str, Any] | None  # the last validation's, None without a validation set
    best_metric: float | None
    skipped: int  # bad images left out under on_bad_image="skip"
    files: tuple[Path, ...] = ()


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
    """``resolve_run_config``'s configs, and the training fields the user set (in the file or the overrides)."""
    from fasterrcnn.config import load_config_file, resolve

    nested = _nest(overrides)
    train = nested["train"]
    if "max_iters" in train and "epochs" not in train:
        train["epochs"] = None  # a length given in iterations replaces one in epochs
    if ("max_iters" in train or "epochs" in train) and "time" not in train:
        train["time"] = None  # ... and a time budget
    file = load_config_file(config_file) if config_file is not None else None
    name, model_config, train_config = resolve(preset, base=base, file=file, overrides=nested, base_source=base_source, file_source=config_file)
    user_set = {f.name for f in fields(train_config) if f.name in train or f.name in (file or {}).get("train", {})}
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


EVALUATIONS_PER_RUN = 10  # a validated run's default: results.csv / results.png get about this many points


def default_eval_every(config, num_images: int, world_size: int = 1) -> int:
    """``eval_every`` of a validated run that does not set it: about ``EVALUATIONS_PER_RUN`` evaluations over
    the run's length (``max_iters``, or ``epochs`` x batches), never more often than the ``log_every`` records;
    0 (at the end only) under a time budget, whose length is not known before it starts."""
    import math

    if config.time is not None:
        return 0
    batches = math.ceil(num_images / (config.batch_size * world_size))
    length = config.max_iters if config.epochs is None else config.epochs * batches
    return max(math.ceil(length / EVALUATIONS_PER_RUN), config.log_every)


@dataclass(frozen=True)
class _Setup:
    """How a run starts: its configuration sources, the resumed checkpoint, and where it runs."""

    preset: str | None
    config_file: str | Path | None
    overrides: Mapping[str, Any]
    resume: bool
    backbone_weights: str | Path | None
    download: bool | None
    device: str
    num_workers: int
    quiet: bool
    overwrite: bool = False


@dataclass
class _Configs:
    """The resolved configurations (``resolve``), the fields the user set, and a resumed run's checkpoint."""

    preset: str
    model: Any  # ModelConfig
    train: Any  # TrainConfig
    user_set: set[str]
    checkpoint: Any = None  # engine.checkpoint.Checkpoint of a resumed run, until its state is loaded
    changes: dict[str, list] = field(default_factory=dict)
    anchor_fit: str | None = None  # the anchors' fit to the boxes, printed after the start line (modeling.anchor_fit)


def recorded_data(config_file: str | Path) -> dict[str, Any] | None:
    """The data a run's own ``config.json`` records (``{"train": describe(), "val": describe() or None, "metric"}``,
    see ``data.protocol``), None for a config file without it. DataError naming a malformed file."""
    from fasterrcnn.reading import CONFIG_BYTES, load_json

    path = Path(config_file)
    if path.suffix.lower() != ".json":
        return None
    record = load_json(path, CONFIG_BYTES, "run configuration")
    record = record.get("data") if isinstance(record, dict) else None
    return record if isinstance(record, dict) and isinstance(record.get("train"), dict) and "path" in record["train"] else None


def _recorded(training: TrainingData, validation: ValidationData | None, source) -> tuple[TrainingData, ValidationData | None]:
    """``training`` and ``validation`` with what they leave unset (None) taken from the data that ``source`` (a
    run's config.json) records; ``training.split`` then defaults to ``trainval``."""
    from dataclasses import replace

    recorded = recorded_data(source) if source is not None and Path(source).is_file() else None
    if training.path is None:
        if recorded is None:
            raise ConfigError("give the training data (--data), or a run's config.json (--config) that records it")
        train = recorded["train"]
        training = replace(training, path=train["path"], split=training.split or train.get("split"), images=training.images or train.get("images"))
        val = recorded.get("val")
        if validation is not None and validation.path is None and isinstance(val, dict):
            validation = replace(
                validation, path=val["path"], split=validation.split or val.get("split"),
                images=validation.images or val.get("images"), metric=validation.metric or recorded.get("metric"),
            )  # fmt: skip
    return replace(training, split=training.split or "trainval"), validation


def _nest(overrides: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Overrides as ``config.resolve`` takes them, ``{"model": {...}, "train": {...}}``: given so (as the CLI's
    ``config.parse_overrides`` gives them), or as dotted keys ``{"train.lr": 0.01}``."""
    nested: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for key, value in (overrides or {}).items():
        if key in nested and isinstance(value, Mapping):
            nested[key].update(value)
            continue
        section, dot, name = str(key).partition(".")
        if not dot or section not in nested or not name:
            raise ConfigError(f"override {key!r}: expected model.FIELD or train.FIELD")
        nested[section][name] = value
    return nested


def train(
    data: str | Path | TrainingData | None,
    output: str | Path,
    *,
    val: str | Path | ValidationData | bool | None = None,
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
    device: str = "auto",
    num_workers: int = 0,
    quiet: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a Faster R-CNN on ``data`` into the run folder ``output``.

    ``data``: a VOC root, a COCO instances JSON or a YOLO data.yaml, or a ``TrainingData`` naming its split, COCO
    images folder, VOC classes, bad-image policy or tile size (``TrainingData("VOC2007", split="train")``).
    ``val``: the validation set, a path or a ``ValidationData`` (split, images, metric); None: the evaluation split
    of ``data`` when it has one (VOC ``test``, YOLO ``val``); False: no validation.
    ``data`` None (or a ``TrainingData`` without a path): the data that ``config`` (a run's ``config.json``), or with
    ``resume`` the run's own config.json, records: its training set (path, split, images), and unless ``val`` names
    one or is False, its validation set and metric; what is given here wins.

    ``overrides``: ``{"model": {...}, "train": {...}}`` or ``{"train.lr": 0.01, ...}`` (module docstring).
    ``output`` must be new or empty; ``resume`` continues the run in it from ``checkpoints/last.pt``;
    ``overwrite`` deletes an earlier run's files there (only the files a run writes, and only once the new
    run's configuration, data and model were accepted). The folder is locked while training.
    ``backbone_weights``: a file, or the name of a registered ImageNet file (``fasterrcnn.pretrained``),
    downloaded into the cache when ``download`` allows it (None: when ``FASTERRCNN_DOWNLOAD=1``).
    The run's length: ``epochs``, ``max_iters`` or ``time`` (minutes of wall-clock training, see the module
    docstring), at most one of them; none: the configuration's.
    The console lines also go to ``log.txt`` in the run folder; ``quiet`` prints nothing (the lines go only
    there); ``progress`` False prints plain lines instead of progress bars (as when the output is no terminal).
    Any exception during training first writes ``last.pt`` (``engine.trainer.TrainingFailed``).
    Started by torchrun, every process calls it (data parallel); rank 0 owns the folder.
    Returns a ``TrainResult``.
    """
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.logging import console_log

    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder, --overwrite deletes it: choose one")
    folder = RunFolder(output)
    training = data if isinstance(data, TrainingData) else TrainingData(data)
    validation = None if val is False else val if isinstance(val, ValidationData) else ValidationData(None if val is True else val)
    training, validation = _recorded(training, validation, config if config is not None else folder.config_file if resume else None)
    length = {key: value for key, value in (("epochs", epochs), ("max_iters", max_iters), ("time", time)) if value is not None}
    if len(length) > 1:
        raise ConfigError(f"give the run's length as epochs, max_iters or time, not several (got {', '.join(length)})")
    nested = _nest(overrides)
    nested["train"].update({k: v for k, v in {"batch_size": batch_size, "lr": lr, "seed": seed, **length}.items() if v is not None})
    setup = _Setup(preset, config, nested, resume, backbone_weights, download, device, num_workers, quiet or not progress, overwrite)
    distributed.init_distributed(device)  # torchrun: join the process group (a no-op otherwise)
    if not distributed.is_main_process():  # rank 0 owns the folder; the others train beside it
        return _train(folder, training, validation, setup, None)
    with folder.lock():
        folder.prepare(resume=resume, overwrite=overwrite)
        with console_log(folder.path / "log.txt", echo=not quiet) as log:
            return _train(folder, training, validation, setup, log)


def _train(folder: RunFolder, training: TrainingData, validation: ValidationData | None, setup: _Setup, log) -> TrainResult:
    """resolve -> data -> model -> trainer -> record, then train. ``log``: the console's ``engine.logging.ConsoleLog``
    (rank 0), started once the run is accepted."""
    from fasterrcnn.engine import distributed

    device = distributed.init_distributed(setup.device)
    configs = _resolve_configs(folder, setup)
    dataset, val_dataset = _datasets(training, validation, configs, setup)
    metric = (validation.metric if validation is not None else None) or (val_dataset if val_dataset is not None else dataset).default_metric
    model = _model(configs, setup)
    if setup.overwrite and distributed.is_main_process():  # the new run is accepted: only now the earlier one's files go
        folder.clear()
    trainer = _trainer(model, dataset, val_dataset, metric, configs, folder, setup, device)
    if distributed.is_main_process():
        log.start()  # the run is accepted: its lines go to log.txt from here (the start line first)
        _record(folder, trainer, dataset, val_dataset, metric, configs, setup, device)
        if configs.anchor_fit is not None:
            print(configs.anchor_fit, flush=True)
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
        files=tuple(folder.path / name for name in folder.run_files()),
    )


def _resolve_configs(folder: RunFolder, setup: _Setup) -> _Configs:
    """The run's configurations: the preset (or a resumed run's checkpoint) < the config file < the overrides."""
    from fasterrcnn.engine.checkpoint import Checkpoint

    checkpoint, base = None, None
    if setup.resume:
        checkpoint = Checkpoint.read(folder.checkpoints.last)  # read once: its config, then its state
        checkpoint.require_training(folder.checkpoints.last)
        base = checkpoint.config
    source = folder.checkpoints.last if setup.resume else None
    preset, model_config, train_config, user_set = _resolve(setup.preset, base, source, setup.config_file, setup.overrides)
    return _Configs(preset, model_config, train_config, user_set, checkpoint)


def _datasets(training: TrainingData, validation: ValidationData | None, configs: _Configs, setup: _Setup):
    """The training and validation data sets (the latter None); the configurations follow them: the number of
    classes, the default ``eval_every``, and a resumed run's changes (refused unless resumable)."""
    from fasterrcnn.config import replace, to_dict
    from fasterrcnn.data.transforms import training_transforms
    from fasterrcnn.engine import distributed

    classes, checkpoint = None, configs.checkpoint
    if checkpoint is not None and checkpoint.label_to_category_id is None:
        classes = list(checkpoint.class_names)
    augment = training_transforms(configs.train.hflip_prob, configs.train.color_jitter)  # flip, colour jitter
    reduce_to = (configs.model.min_size, configs.model.max_size)  # a huge image is decoded reduced to about this
    dataset = training.dataset(augment, classes, reduce_to)
    val_dataset = None if validation is None else validation.dataset(training, dataset.classes, reduce_to)
    configs.model = replace(configs.model, num_classes=len(dataset.classes))
    if not setup.resume:  # the anchors' fit to the boxes (fitted with train.fit_anchors), recorded in the model's config
        from fasterrcnn.modeling.anchor_fit import check_anchors

        configs.model, configs.anchor_fit = check_anchors(dataset, configs.model, fit=configs.train.fit_anchors)
    if val_dataset is not None and not setup.resume and "eval_every" not in configs.user_set:
        configs.train = replace(configs.train, eval_every=default_eval_every(configs.train, len(dataset), distributed.get_world_size()))
    if checkpoint is not None:
        configs.changes = _resume_changes(checkpoint.config, {"model": to_dict(configs.model), "train": to_dict(configs.train)})
    return dataset, val_dataset


def _model(configs: _Configs, setup: _Setup):
    """A new FasterRCNN of the model configuration (its weights initialised from the run's seed)."""
    import torch

    from fasterrcnn.engine import distributed
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN
    from fasterrcnn.pretrained import warn_untrained_backbone

    if not setup.resume and distributed.is_main_process():
        warn_untrained_backbone(configs.model.backbone, setup.backbone_weights)
    torch.manual_seed(configs.train.seed)  # weight initialisation
    backbone_weights = None if setup.resume else setup.backbone_weights
    return FasterRCNN.from_config(configs.model, backbone_weights=backbone_weights, download=setup.download)


def _validator(val_dataset, dataset, metric: str, configs: _Configs, setup: _Setup, device):
    """``evaluate(model) -> metrics`` of the trainer: the metric, the validation losses, the report and the split."""
    from fasterrcnn.data import split_name
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.evaluator import evaluate_model
    from fasterrcnn.engine.report import build_report
    from fasterrcnn.engine.validation import validation_losses

    num_workers, progress, seed = setup.num_workers, not setup.quiet, configs.train.seed
    split = split_name(val_dataset)  # beside every metric: which data it was measured on

    def evaluate(model):
        results, metrics = evaluate_model(
            model, val_dataset, metric=metric, class_names=dataset.classes,
            label_to_category_id=dataset.label_to_category_id, num_workers=num_workers, device=device, progress=progress,
        )  # fmt: skip
        # val_loss, val_loss_objectness, ...: logged and drawn beside the training losses
        losses = validation_losses(model, val_dataset, num_workers=num_workers, device=device, seed=seed, progress=progress)
        # confusion matrix, per-class table, samples: the trainer writes them and takes them out of the metrics
        report = build_report(results, val_dataset, metrics, class_names=dataset.classes) if distributed.is_main_process() else None
        return {**metrics, **losses, "split": split, "report": report}

    return evaluate


def _trainer(model, dataset, val_dataset, metric: str, configs: _Configs, folder: RunFolder, setup: _Setup, device):
    """The Trainer of the run (a resumed run's state loaded into it)."""
    from fasterrcnn.config import get_preset
    from fasterrcnn.engine.schedule import SCHEDULE_FIELDS
    from fasterrcnn.engine.trainer import Trainer

    evaluate = None if val_dataset is None else _validator(val_dataset, dataset, metric, configs, setup, device)
    trainer = Trainer(
        model, dataset, config=configs.train, output_dir=folder.path, preset=configs.preset, class_names=dataset.classes,
        label_to_category_id=dataset.label_to_category_id, evaluate=evaluate, device=device,
        num_workers=setup.num_workers, quiet=setup.quiet,
        # a new run's preset schedule follows its length; a resumed one keeps its checkpoint's
        schedule_length=None if setup.resume else get_preset(configs.preset).train.max_iters,
        fixed_schedule=[key for key in SCHEDULE_FIELDS if key in configs.user_set],
    )  # fmt: skip
    if configs.checkpoint is not None:
        trainer.resume(configs.checkpoint, folder.checkpoints.last)
        configs.checkpoint = None  # its tensors are in the model and the optimizer now
    return trainer


def _record(folder: RunFolder, trainer, dataset, val_dataset, metric: str, configs: _Configs, setup: _Setup, device) -> None:
    """config.json (settings, data, accepted changes), labels.jpg and the start lines: rank 0, before training."""
    from fasterrcnn.data import split_name
    from fasterrcnn.data.protocol import label_statistics
    from fasterrcnn.engine import distributed
    from fasterrcnn.evaluation.plots import plot_labels

    resume, train_config, world_size = setup.resume, configs.train, distributed.get_world_size()
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
    if configs.changes:
        record.setdefault("changes", []).append({"iteration": trainer.state.iteration, "changed": configs.changes})
    folder.write_config(record)
    if not resume:  # what the model will learn from, before it starts (as ultralytics' labels.jpg)
        plot_labels(*label_statistics(dataset), dataset.classes, folder.path / "labels.jpg")
    print(
        f"training {configs.preset} on {len(dataset)} images ({len(dataset.classes)} classes, {split_name(dataset)}) for "
        + (f"{train_config.time:g} minute{'' if train_config.time == 1 else 's'}" if train_config.time is not None else f"{trainer.max_iters} iterations")
        + f" on {device}" + (f", resuming at {trainer.state.iteration}" if resume else "")
        + (f"; validating on {split_name(val_dataset)} ({len(val_dataset)} images)" if val_dataset is not None else "; no validation set")
        + "".join(f"; {key} {old!r} -> {new!r}" for key, (old, new) in configs.changes.items()),
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
