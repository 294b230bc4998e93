"""``fasterrcnn train``: parse, call ``runs.train``, print."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import add_amp, add_common, add_data, class_list, nonnegative_int, positive_float, positive_int, print_skipped

# flag -> TrainConfig field, for the flags that set one (None: not given)
TRAIN_FLAGS = {
    "grad_clip": "grad_clip_norm",
    "eval_every": "eval_every",
    "patience": "patience",
    "checkpoint_every": "checkpoint_every",
    "keep_checkpoints": "keep_checkpoints",
    "log_every": "log_every",
    "amp_dtype": "amp_dtype",
}
TRAIN_SWITCHES = {"amp": ("amp", True), "sync_bn": ("sync_bn", True), "no_scale_lr": ("scale_lr", False), "fit_anchors": ("fit_anchors", True)}


def add_parser(commands) -> None:
    p = commands.add_parser(
        "train",
        help="train a detector",
        description="Train a Faster R-CNN. Writes DIR/config.json, DIR/checkpoints/{last,best,iter_XXXXXXX}.pt, "
        "DIR/metrics.jsonl, TensorBoard events in DIR/tb/, DIR/results.csv and DIR/results.png (one row / point per "
        "evaluation) and the last evaluation's DIR/confusion_matrix.png, DIR/per_class.csv and DIR/samples.jpg. DIR must be new or empty (--resume "
        "continues the run in it, --overwrite replaces it) and is locked while training. Configuration precedence: "
        "preset < --config FILE < --set key=value < explicit flags. Several GPUs or machines: start it with "
        "'torchrun --nproc_per_node=N -m fasterrcnn train ...' (--batch-size is per process; see the README).",
    )
    add_data(
        p, split_default=None, split_help="trainval, which means train for YOLO data without a trainval entry",
        data_help="; default: the data a run's config.json given as --config (or the --resume run's) records",
    )  # fmt: skip
    p.add_argument("--preset", help="model + training preset, e.g. tiny, vgg16, resnet50_fpn (required unless --resume or the --config file names one)")
    p.add_argument("--output", required=True, metavar="DIR", help="the run's folder (created; new or empty unless --resume / --overwrite)")
    p.add_argument("--val-data", metavar="PATH", help="validation set (VOC root, COCO JSON or YOLO data.yaml); default: the --val-split of --data when it has one")
    p.add_argument("--val-split", help="split of --val-data or --data to validate on (default: test for VOC, val for YOLO)")
    p.add_argument("--val-images", metavar="DIR", help="COCO only: the folder of the --val-data JSON's images")
    p.add_argument("--no-val", action="store_true", help="do not evaluate during or after training")
    p.add_argument(
        "--metric", choices=("voc", "voc07", "coco"),
        help="validation metric: voc (VOC AP@0.5, area), voc07 (11-point) or coco (AP@[.5:.95]) (default: voc for VOC and YOLO data, coco for COCO data)",
    )  # fmt: skip
    p.add_argument("--classes", metavar="A,B,C", help="VOC: the class names, in label order (default: the 20 VOC classes, or the sorted names found)")
    p.add_argument("--drop-empty", action="store_true", help="COCO and YOLO: leave out training images without trainable (non-crowd) objects (default: kept, as negatives)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=positive_int, metavar="N", help="train for N passes over the data")
    length.add_argument("--max-iters", type=positive_int, metavar="N", help="train for N iterations (batches)")
    length.add_argument(
        "--time", type=positive_float, metavar="MINUTES",
        help="train for MINUTES of wall-clock time (validation and checkpoints included): the iterations that fit are "
        "estimated from the measured speed, warm-up and LR steps keep their fractions of the run (train.time)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, metavar="N", help="images per iteration")
    p.add_argument("--lr", type=positive_float, metavar="X", help="base learning rate (after warm-up)")
    p.add_argument("--grad-clip", type=positive_float, metavar="X", help="clip the gradients' global L2 norm to X")
    p.add_argument("--seed", type=nonnegative_int, metavar="N", help="seed of data order, flips, sampling and weight init")
    p.add_argument("--eval-every", type=nonnegative_int, metavar="N", help="validate every N iterations (0: only at the end; default with a validation set: about 10 times per run); best.pt keeps the best")
    p.add_argument(
        "--patience", type=positive_int, metavar="N",
        help="stop when the validation metric has not improved for N evaluations; best.pt keeps the best (train.patience)",
    )  # fmt: skip
    p.add_argument(
        "--image-size", type=positive_int, metavar="N",
        help="resize images so that their long side is N pixels (short side up to N): sets model.min_size and model.max_size to N",
    )  # fmt: skip
    p.add_argument("--checkpoint-every", type=positive_int, metavar="N", help="write checkpoints/last.pt and iter_XXXXXXX.pt every N iterations")
    p.add_argument("--keep-checkpoints", type=nonnegative_int, metavar="N", help="periodic iter_XXXXXXX.pt kept, the newest (default: 3; last.pt and best.pt always)")
    p.add_argument("--log-every", type=positive_int, metavar="N", help="iterations per metrics.jsonl record")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt (a longer run or --time is allowed; other changed settings are refused)")
    start.add_argument("--overwrite", action="store_true", help="delete the training run already in --output and start over (other files are never touched)")
    p.add_argument("--config", metavar="FILE", help='JSON file {"preset": NAME, "model": {...}, "train": {...}} of ModelConfig / TrainConfig fields')
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one field, e.g. --set model.rpn_nms_thresh=0.6 --set train.lr_steps=[800,1000] "
        "(VALUE is parsed as JSON, else taken as a string); repeatable",
    )  # fmt: skip
    p.add_argument(
        "--backbone-weights", metavar="NAME|FILE",
        help="ImageNet weights to start the backbone from: vgg16, resnet50, resnet101, mobilenet_v3_large (read from "
        "the cache, see --download) or a torchvision-layout file; without it such backbones start untrained (a warning says so)",
    )  # fmt: skip
    p.add_argument(
        "--download", action="store_true",
        help="let --backbone-weights NAME download a registered file missing from the cache (same as FASTERRCNN_DOWNLOAD=1)",
    )  # fmt: skip
    add_amp(
        p,
        "mixed precision: autocast in --amp-dtype (NMS, box coding and losses stay float32) (train.amp)",
        "bf16 (CUDA or CPU) or fp16 (CUDA, with a gradient scaler) (default: bf16; train.amp_dtype)",
    )
    p.add_argument(
        "--sync-bn", action="store_true",
        help="several processes: BatchNorm statistics over the global batch (SyncBatchNorm), for backbones with trainable BatchNorm such as tiny (train.sync_bn)",
    )  # fmt: skip
    p.add_argument(
        "--no-scale-lr", action="store_true",
        help="several processes (torchrun): use --lr as given; by default the learning rate is multiplied by "
        "the number of processes, as the global batch is --batch-size x processes (train.scale_lr)",
    )  # fmt: skip
    p.add_argument(
        "--slice", type=positive_int, metavar="SIZE",
        help="sliced training: each sample is a random SIZE x SIZE tile of its image at full resolution (boxes clipped; "
        "a box with less than 30%% of its area or 2 px a side in the tile is dropped), for 'predict/eval --slice SIZE'",
    )  # fmt: skip
    p.add_argument(
        "--fit-anchors", action="store_true",
        help="choose the anchor sizes and ratios from the training boxes (k-means on their shapes, as YOLOv5's autoanchor) "
        "before training; recorded in the run's config (train.fit_anchors)",
    )  # fmt: skip
    add_common(p)
    p.set_defaults(func=run)


def overrides_of(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """``--set`` items, then the flags that set a field (explicit flags win), as ``{"model": {...}, "train": {...}}``."""
    from fasterrcnn.config import parse_overrides

    overrides = parse_overrides(args.set)
    overrides["train"].update({field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None})
    overrides["train"].update({field: value for flag, (field, value) in TRAIN_SWITCHES.items() if getattr(args, flag)})
    if args.image_size is not None:  # ultralytics' imgsz: one number for the short and the long side
        overrides["model"].update(min_size=args.image_size, max_size=args.image_size)
    return overrides


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.evaluator import headline
    from fasterrcnn.runs import TrainingData, ValidationData, train

    data = TrainingData(args.data, args.split, args.images, class_list(args.classes), args.drop_empty, args.on_bad_image, args.slice)
    val = False if args.no_val else ValidationData(args.val_data, args.val_split, args.val_images, args.metric)
    result = train(
        data, args.output, val=val, preset=args.preset, config=args.config, overrides=overrides_of(args),
        resume=args.resume, overwrite=args.overwrite, epochs=args.epochs, max_iters=args.max_iters, time=args.time,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, backbone_weights=args.backbone_weights,
        download=True if args.download else None, device=args.device, num_workers=args.num_workers, progress=not args.quiet,
    )  # fmt: skip
    if not distributed.is_main_process():
        return 0
    if result.metrics is not None:
        name, value = headline(result.metrics)
        on = f" on {result.metrics['split']}" if "split" in result.metrics else ""
        print(f"validation {name} ({result.metrics.get('metric')}){on} at iteration {result.iteration}: {value:.4f}; best {result.best_metric:.4f}")
    print(f"wrote {', '.join(path.name + ('/' if path.is_dir() else '') for path in result.files)} in {result.run_dir}")
    print_skipped(result.skipped, "trained on")
    return 0
