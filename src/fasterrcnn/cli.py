"""The ``fasterrcnn`` command: train, eval, predict, demo and serve.

    fasterrcnn train --data VOC_ROOT|COCO.json --preset tiny --output runs/x [--max-iters N] ...
    fasterrcnn eval --weights runs/x/checkpoints/best.pt --data VOC_ROOT --output runs/x/eval
    fasterrcnn eval --detections results.json --data VOC_ROOT --output eval/
    fasterrcnn predict --weights CKPT image.jpg images/ --output predictions/
    fasterrcnn demo --output demo_output
    fasterrcnn serve --weights CKPT [--host 127.0.0.1] [--port 8000]
    torchrun --nproc_per_node=4 -m fasterrcnn train ...   (data parallel: one process per GPU)

Errors the user must fix (missing or malformed files, bad options) end in one line
``fasterrcnn: error: <message>`` on stderr and exit code 2, never a traceback. torch and the rest
of the package are imported inside the commands, so ``--help`` is quick.

Configuration precedence (train): preset < ``--config FILE`` < ``--set key=value`` < explicit flags.
With ``--resume`` the checkpoint's configuration replaces the preset as the base.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from fasterrcnn.errors import ConfigError, DataError, FasterRCNNError

__all__ = ["main"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

# -- the demo's schedule ------------------------------------------------------------------------------------
# `fasterrcnn demo` must end in <= 10 minutes on 2 CPU cores with test mAP@0.5 >= 0.90. Its cost is
# about DEMO_TRAIN["max_iters"] x (seconds per iteration of the tiny preset at its batch size) plus
# one pass over the test images; the model's hyper-parameters are the tiny preset's (config.py).
DEMO_PRESET = "tiny"
DEMO_SEED = 0
DEMO_NUM_TRAIN = 400  # synthetic training images
DEMO_NUM_TEST = 100  # held-out test images (VOC mAP@0.5 is measured on them)
DEMO_IMAGE_SIZE = (256, 256)  # (height, width) of the synthetic images
DEMO_TRAIN = {  # TrainConfig overrides of the tiny preset for the demo
    "max_iters": 2000,
    "lr_steps": [1500],
    "checkpoint_every": 500,
    "log_every": 20,
}
DEMO_MODEL: dict = {}  # ModelConfig overrides of the tiny preset for the demo (none: the preset as it is)
DEMO_NUM_PICTURES = 8  # test images drawn with their detections
DEMO_SCORE_THRESHOLD = 0.5  # detections drawn in the pictures


# -- argument parsing -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``fasterrcnn <cmd>: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help=f"where to run: 'cpu', 'cuda', 'cuda:1', ... or 'auto' (CUDA when available, else CPU) (default: {default})",
    )


def _add_common(p: argparse.ArgumentParser, *, device_default: str = "auto") -> None:
    _add_device(p, device_default)
    p.add_argument(
        "--num-workers",
        type=_nonnegative_int,
        default=0,
        metavar="N",
        help="data-loading worker processes (default: 0, load in the main process)",
    )
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of progress bars")


INFERENCE_AMP_HELP = (
    "mixed precision: the forward pass under autocast in --amp-dtype; faster on GPUs and on CPUs with bf16 "
    "matrix units (AMX), slower on other CPUs; detections differ slightly from float32 ones",
    "bf16 (CUDA or CPU) or fp16 (CUDA) (default: bf16)",
)


def _add_amp(p: argparse.ArgumentParser, amp_help: str, dtype_help: str) -> None:
    p.add_argument("--amp", action="store_true", help=amp_help)
    p.add_argument("--amp-dtype", choices=("bf16", "fp16"), help=dtype_help)


def _inference_amp(args) -> str | None:
    """The ``amp`` of a Detector from ``--amp`` / ``--amp-dtype`` (eval, predict, serve)."""
    if args.amp_dtype is not None and not args.amp:
        raise ConfigError("--amp-dtype goes with --amp")
    return (args.amp_dtype or "bf16") if args.amp else None


def _add_data(p: argparse.ArgumentParser, *, split_default: str) -> None:
    p.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="a VOC root (with Annotations/, JPEGImages/, ImageSets/Main/) or a COCO instances JSON file; "
        "the format is detected",
    )
    p.add_argument(
        "--split",
        default=split_default,
        help=f"VOC split: ImageSets/Main/<SPLIT>.txt (default: {split_default}; ignored for COCO)",
    )
    p.add_argument(
        "--images",
        metavar="DIR",
        help="COCO only: the folder of the JSON's images (default: found next to the JSON)",
    )
    p.add_argument(
        "--on-bad-image",
        choices=("skip", "error"),
        default="skip",
        help="an image whose file or annotation is unusable (missing, empty, truncated, not an image, wrong size, "
        "malformed XML/JSON entry, duplicate id): 'skip' it with a warning naming the file and a count at the "
        "end, or stop with an 'error' naming it (default: skip)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fasterrcnn",
        description="Faster R-CNN object detection (Ren et al., NIPS 2015) in plain PyTorch: "
        "train, evaluate, predict, serve a web page, or run the CPU demo.",
        epilog="Run 'fasterrcnn <command> --help' for the options of a command.",
    )
    from fasterrcnn import __version__

    parser.add_argument("--version", action="version", version=f"fasterrcnn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    # train
    p = commands.add_parser(
        "train",
        help="train a detector",
        description="Train a Faster R-CNN. Writes DIR/config.json, DIR/checkpoints/{last,best,iter_XXXXXXX}.pt, "
        "DIR/metrics.jsonl, TensorBoard events in DIR/tb/ and DIR/loss.png. Configuration precedence: "
        "preset < --config FILE < --set key=value < explicit flags. Several GPUs or machines: start it with "
        "'torchrun --nproc_per_node=N -m fasterrcnn train ...' (--batch-size is per process; see the README).",
    )
    _add_data(p, split_default="trainval")
    p.add_argument("--preset", help="model + training preset, e.g. tiny, vgg16, resnet50_fpn (required unless --resume or the --config file names one)")
    p.add_argument("--output", required=True, metavar="DIR", help="the run's folder (created)")
    p.add_argument(
        "--val-data",
        metavar="PATH",
        help="validation set (VOC root or COCO JSON); default: the --val-split of the --data VOC root when it exists",
    )
    p.add_argument("--val-split", default="test", help="VOC split used for validation (default: test)")
    p.add_argument("--val-images", metavar="DIR", help="COCO only: the folder of the --val-data JSON's images")
    p.add_argument("--no-val", action="store_true", help="do not evaluate during or after training")
    p.add_argument(
        "--metric",
        choices=("voc", "voc07", "coco"),
        help="validation metric: voc (VOC AP@0.5, area), voc07 (11-point) or coco (AP@[.5:.95]) "
        "(default: voc for VOC data, coco for COCO data)",
    )
    p.add_argument("--classes", metavar="A,B,C", help="VOC: the class names, in label order (default: the 20 VOC classes, or the sorted names found)")
    p.add_argument(
        "--drop-empty", action="store_true",
        help="COCO: leave out training images without trainable (non-crowd) objects (default: kept, as negatives)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=_positive_int, metavar="N", help="train for N passes over the data")
    length.add_argument("--max-iters", type=_positive_int, metavar="N", help="train for N iterations (batches)")
    p.add_argument("--batch-size", type=_positive_int, metavar="N", help="images per iteration")
    p.add_argument("--lr", type=_positive_float, metavar="X", help="base learning rate (after warm-up)")
    p.add_argument("--grad-clip", type=_positive_float, metavar="X", help="clip the gradients' global L2 norm to X")
    p.add_argument("--seed", type=int, metavar="N", help="seed of data order, flips, sampling and weight init")
    p.add_argument("--eval-every", type=_nonnegative_int, metavar="N", help="validate every N iterations (0: only at the end); best.pt keeps the best")
    p.add_argument("--checkpoint-every", type=_positive_int, metavar="N", help="write checkpoints/last.pt and iter_XXXXXXX.pt every N iterations")
    p.add_argument("--log-every", type=_positive_int, metavar="N", help="iterations per metrics.jsonl record")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from checkpoints/last.pt")
    p.add_argument(
        "--config",
        metavar="FILE",
        help='JSON file {"preset": NAME, "model": {...}, "train": {...}} of ModelConfig / TrainConfig fields',
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set model.rpn_nms_thresh=0.6 --set train.lr_steps=[800,1000] "
        "(VALUE is parsed as JSON, else taken as a string); repeatable",
    )
    p.add_argument("--backbone-weights", metavar="FILE", help="backbone weights to start from (e.g. ImageNet, torchvision layout)")
    _add_amp(
        p,
        "mixed precision: autocast in --amp-dtype (NMS, box coding and losses stay float32) (train.amp)",
        "bf16 (CUDA or CPU) or fp16 (CUDA, with a gradient scaler) (default: bf16; train.amp_dtype)",
    )
    p.add_argument(
        "--sync-bn",
        action="store_true",
        help="several processes: BatchNorm statistics over the global batch (SyncBatchNorm), for backbones "
        "with trainable BatchNorm such as tiny (train.sync_bn)",
    )
    p.add_argument(
        "--no-scale-lr",
        action="store_true",
        help="several processes (torchrun): use --lr as given; by default the learning rate is multiplied by "
        "the number of processes, as the global batch is --batch-size x processes (train.scale_lr)",
    )
    _add_common(p)
    p.set_defaults(func=cmd_train)

    # eval
    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint or a detections file",
        description="Evaluate a checkpoint (--weights) or a results file (--detections) on a dataset. Prints a "
        "per-class AP table and writes DIR/metrics.json (mAP / AP, AP50, AP75 and per-class APs), "
        "DIR/pr_curves.png and, with --weights, DIR/detections.json. Started by torchrun, the processes share "
        "the images (one GPU each) and rank 0 writes.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="CKPT", help="a checkpoint written by 'fasterrcnn train'")
    source.add_argument("--detections", metavar="FILE", help="a COCO results JSON (list of image_id, category_id, bbox [x,y,w,h], score)")
    _add_data(p, split_default="test")
    p.add_argument(
        "--metric",
        choices=("voc", "voc07", "coco"),
        help="voc (VOC AP@0.5, area under the curve), voc07 (11-point) or coco (AP@[.5:.95] by pycocotools) "
        "(default: voc for VOC data, coco for COCO data)",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for metrics.json and pr_curves.png (created)")
    p.add_argument("--classes", metavar="A,B,C", help="--detections on VOC data: the class names in category-id order (default: inferred from the data)")
    p.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="images per forward pass (default: 1)")
    _add_amp(p, *INFERENCE_AMP_HELP)
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    # predict
    p = commands.add_parser(
        "predict",
        help="detect objects in images",
        description="Run a checkpoint on images. Writes DIR/<image stem>.jpg with boxes, class names and scores "
        "drawn, and DIR/detections.json (COCO results list, image_id = file stem, boxes in the image's pixels). "
        "An image at least twice as large as the model's input is decoded at 1/2, 1/4 ... of its size "
        "(its picture too), so that a 8000x6000 photo needs little memory. With --preset, --weights is a "
        "torchvision detection weights file instead (e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth with --preset "
        "resnet50_fpn --classes coco).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders whose images are all used")
    p.add_argument(
        "--weights", required=True, metavar="FILE",
        help="a checkpoint written by 'fasterrcnn train', or with --preset a torchvision detection state dict (.pth)",
    )
    p.add_argument(
        "--preset", metavar="NAME",
        help="read --weights as a torchvision detection file for this preset's model (resnet50_fpn, "
        "mobilenet_v3_large_fpn, mobilenet_v3_large_320_fpn); the class count is read from the file",
    )
    p.add_argument(
        "--classes", metavar="coco|A,B,C",
        help="with --preset: 'coco' (the built-in names of torchvision's 91-id COCO layout, label = COCO "
        "category id; the default) or the class names in label order",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures and detections.json (created)")
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="X", help="keep detections scoring >= X (default: 0.5)")
    _add_amp(p, *INFERENCE_AMP_HELP)
    _add_common(p)
    p.set_defaults(func=cmd_predict)

    # compress
    p = commands.add_parser(
        "compress",
        help="truncated SVD of a checkpoint's fc6 / fc7 (faster inference)",
        description="Replace the box head's fully connected fc6 and fc7 by their truncated SVDs (Fast R-CNN, "
        "section 3.1): each becomes two layers of the given rank, which cuts the box head's time at inference "
        "for a small loss of accuracy (evaluate the result with 'fasterrcnn eval'). Writes a checkpoint that "
        "'eval', 'predict' and 'serve' load as any other (its model config records the ranks). Needs a box head "
        "with fc6 and fc7: vgg16, the FPN presets and tiny.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="a checkpoint written by 'fasterrcnn train'")
    p.add_argument(
        "--ranks", nargs=2, type=_positive_int, default=(1024, 256), metavar=("FC6", "FC7"),
        help="singular values kept of fc6 and of fc7 (default: 1024 256, Fast R-CNN's for VGG16)",
    )
    p.add_argument("--output", required=True, metavar="CKPT", help="the compressed checkpoint to write")
    p.set_defaults(func=cmd_compress)

    # demo
    p = commands.add_parser(
        "demo",
        help="train and evaluate the tiny model on synthetic shapes (CPU, minutes)",
        description=f"Generate a synthetic VOC set ({DEMO_NUM_TRAIN} train / {DEMO_NUM_TEST} test images of "
        f"{DEMO_IMAGE_SIZE[1]}x{DEMO_IMAGE_SIZE[0]} px) in DIR/data, train the '{DEMO_PRESET}' preset on the CPU "
        f"for {DEMO_TRAIN['max_iters']} iterations in DIR/train, evaluate it on the test split (VOC mAP@0.5) in "
        f"DIR/eval and draw its detections on {DEMO_NUM_PICTURES} test images in DIR/predictions.",
    )
    p.add_argument("--output", default="demo_output", metavar="DIR", help="folder for everything the demo writes (default: demo_output)")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of progress bars")
    p.set_defaults(func=cmd_demo)

    # serve (its options and command live in serve.py; the web framework is imported only when it runs)
    from fasterrcnn.serve import add_serve_parser

    add_serve_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 / 143 interrupted by SIGINT / SIGTERM).

    ``train`` stopped by SIGINT or SIGTERM first writes ``checkpoints/last.pt`` at the current
    iteration and prints where it is and the command that resumes (``engine/interrupt.py``).
    """
    from fasterrcnn.engine.interrupt import TrainingInterrupted

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    _configure_logging()
    try:
        return args.func(args)
    except FasterRCNNError as e:
        message = " ".join(str(e).split())  # one line
        print(f"fasterrcnn: error: {message}", file=sys.stderr)
        return 2
    except TrainingInterrupted as e:
        hint = ""
        if args.command == "train":
            words = list(sys.argv[1:] if argv is None else argv)
            hint = "; resume with: " + shlex.join(["fasterrcnn", *words, *([] if args.resume else ["--resume"])])
        print(f"fasterrcnn: {e}{hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("fasterrcnn: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Leave torchrun's process group if the command joined one (``train`` and ``eval`` do, under torchrun)."""
    distributed = sys.modules.get("fasterrcnn.engine.distributed")  # never imported: no group was joined
    if distributed is not None:
        distributed.cleanup()


def _configure_logging() -> None:
    # Dataset warnings (clipped boxes ...) on stderr as "fasterrcnn: warning: ..." lines.
    import logging

    class StderrHandler(logging.StreamHandler):
        # the current sys.stderr at each message (not the one of the first call: tests swap it)
        stream = property(lambda self: sys.stderr, lambda self, value: None)

    logger = logging.getLogger("fasterrcnn")
    if not logger.handlers:
        handler = StderrHandler()
        handler.setFormatter(logging.Formatter("fasterrcnn: %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


# -- shared helpers ---------------------------------------------------------------------------------------
def _class_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise ConfigError(f"--classes {text!r}: expected comma-separated non-empty class names")
    if len(set(names)) != len(names):
        raise ConfigError(f"--classes {text!r}: a class name appears twice")
    return names


def _write_json(path: Path, data: Any) -> None:
    from fasterrcnn.io import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _json_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics dict without curves, NaN as null (JSON has no NaN)."""

    def clean(value):
        if isinstance(value, float):
            return value if value == value and abs(value) != float("inf") else None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return clean({k: v for k, v in metrics.items() if k not in ("pr_curves", "summary")})


# -- train ------------------------------------------------------------------------------------------------
def _parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    overrides: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or section not in overrides or not field:
            raise ConfigError(f"--set {item!r}: expected model.FIELD=VALUE or train.FIELD=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[section][field] = value
    return overrides


def _check_types(config) -> None:
    """Raise ConfigError when a field's value does not have the type its annotation says."""
    import dataclasses
    import types
    import typing

    hints = typing.get_type_hints(type(config))

    def fits(value, hint) -> bool:
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            return any(fits(value, h) for h in typing.get_args(hint))
        if hint is type(None):
            return value is None
        if hint is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        if origin is tuple:
            args = typing.get_args(hint)
            if not isinstance(value, tuple):
                return False
            if len(args) == 2 and args[1] is Ellipsis:
                return all(fits(v, args[0]) for v in value)
            return len(args) == len(value) and all(fits(v, h) for v, h in zip(value, args))
        if isinstance(hint, type):
            return isinstance(value, hint)
        return True

    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if not fits(value, hints[field.name]):
            raise ConfigError(
                f"{type(config).__name__}.{field.name} = {value!r} does not fit its type {hints[field.name]}"
            )


def resolve_config(args, base: dict[str, Any] | None = None):
    """(preset name, ModelConfig, TrainConfig) from preset / ``base`` < --config < --set < flags."""
    from fasterrcnn.config import ModelConfig, TrainConfig, from_dict, get_preset, load_json, to_dict

    file_config: dict[str, Any] = {}
    if args.config:
        file_config = load_json(args.config)
        if not isinstance(file_config, dict):
            raise DataError(args.config, "expected a JSON object with keys preset, model, train")
        unknown = sorted(set(file_config) - {"preset", "model", "train"})
        if unknown:
            raise DataError(args.config, f"unknown key(s) {', '.join(unknown)} (expected preset, model, train)")
        for section in ("model", "train"):
            if not isinstance(file_config.get(section, {}), dict):
                raise DataError(args.config, f"'{section}' must be a JSON object of {section} fields")
    if base is not None:
        preset_name = base["preset"]
        if args.preset and args.preset != preset_name:
            raise ConfigError(f"--preset {args.preset}: the run to resume was trained with preset {preset_name!r}")
        model, train = dict(base["model"]), dict(base["train"])
    else:
        preset_name = args.preset or file_config.get("preset")
        if not preset_name:
            raise ConfigError("--preset is required (or a --config file with a \"preset\")")
        preset = get_preset(str(preset_name))
        model, train = to_dict(preset.model), to_dict(preset.train)

    overrides = _parse_set(args.set)
    model.update(file_config.get("model", {}))
    train.update(file_config.get("train", {}))
    model.update(overrides["model"])
    train.update(overrides["train"])
    flags = {
        "lr": args.lr,
        "batch_size": args.batch_size,
        "grad_clip_norm": args.grad_clip,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
    }
    train.update({k: v for k, v in flags.items() if v is not None})
    switches = {"amp": ("amp", True), "sync_bn": ("sync_bn", True), "no_scale_lr": ("scale_lr", False)}
    train.update({field: value for name, (field, value) in switches.items() if getattr(args, name, False)})
    if getattr(args, "amp_dtype", None) is not None:
        train.update(amp_dtype=args.amp_dtype)
    if args.max_iters is not None:
        train.update(max_iters=args.max_iters, epochs=None)
    if args.epochs is not None:
        train.update(epochs=args.epochs)
    model_config, train_config = from_dict(ModelConfig, model), from_dict(TrainConfig, train)
    _check_types(model_config)
    _check_types(train_config)
    return str(preset_name), model_config, train_config


def _validation_set(args, train_dataset):
    """The validation dataset for ``train`` (or None), built with the training classes."""
    from fasterrcnn.data import build_dataset

    if args.no_val:
        return None
    if args.val_data:
        return build_dataset(
            args.val_data, split=args.val_split, images_dir=args.val_images, classes=train_dataset.classes,
            on_bad_image=args.on_bad_image,
        )  # fmt: skip
    data = Path(args.data)
    if data.is_dir() and args.val_split != args.split and (data / "ImageSets" / "Main" / f"{args.val_split}.txt").is_file():
        return build_dataset(data, split=args.val_split, classes=train_dataset.classes, on_bad_image=args.on_bad_image)
    return None


def cmd_train(args) -> int:
    """Train in this process, or in every process of a torchrun job (data parallel)."""
    import torch

    from fasterrcnn.config import replace, to_dict
    from fasterrcnn.data import RandomHorizontalFlip, build_dataset
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.checkpoint import load_checkpoint
    from fasterrcnn.engine.evaluator import default_metric, evaluate_model, headline
    from fasterrcnn.engine.trainer import Trainer
    from fasterrcnn.engine.validation import validation_losses
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    output = Path(args.output)
    last = output / "checkpoints" / "last.pt"
    base = None
    class_names = _class_list(args.classes)
    if args.resume:
        if not last.is_file():
            raise DataError(last, "no checkpoint to resume from (train without --resume first)")
        checkpoint = load_checkpoint(last)
        if not isinstance(checkpoint.get("config"), dict) or "train" not in checkpoint["config"]:
            raise DataError(last, "not a training checkpoint (missing config)")
        base = checkpoint["config"]
        if class_names is None and "label_to_category_id" not in checkpoint:
            class_names = list(checkpoint.get("class_names", [])) or None
        del checkpoint
    elif last.exists() and not getattr(args, "overwrite", False):
        raise ConfigError(f"{output} already holds a training run ({last}); pass --resume to continue it or choose another --output")
    preset_name, model_config, train_config = resolve_config(args, base)
    device = distributed.init_distributed(args.device)  # torchrun: this process's device, process group joined
    main_process, world_size = distributed.is_main_process(), distributed.get_world_size()

    flip = RandomHorizontalFlip(train_config.hflip_prob) if train_config.hflip_prob > 0 else None
    dataset = build_dataset(
        args.data, split=args.split, images_dir=args.images, classes=class_names, transforms=flip,
        on_bad_image=args.on_bad_image, drop_empty=args.drop_empty,
    )
    val_dataset = _validation_set(args, dataset)
    model_config = replace(model_config, num_classes=len(dataset.classes))
    metric = args.metric or default_metric(val_dataset if val_dataset is not None else dataset)
    label_to_category_id = getattr(dataset, "label_to_cat_id", None)

    torch.manual_seed(train_config.seed)  # weight initialisation
    model = FasterRCNN.from_config(model_config, backbone_weights=None if args.resume else args.backbone_weights)
    run_config = {"preset": preset_name, "model": to_dict(model_config), "train": to_dict(train_config)}

    evaluate = None
    if val_dataset is not None:

        def evaluate(model):
            metrics = evaluate_model(
                model,
                val_dataset,
                metric=metric,
                class_names=dataset.classes,
                label_to_category_id=label_to_category_id,
                num_workers=args.num_workers,
                device=device,
                progress=not args.quiet,
            )[1]
            # val_loss, val_loss_objectness, ...: logged and drawn beside the training losses
            losses = validation_losses(model, val_dataset, num_workers=args.num_workers, device=device, seed=train_config.seed, progress=not args.quiet)
            return {**metrics, **losses}

    trainer = Trainer(
        model,
        dataset,
        config=train_config,
        output_dir=output,
        run_config=run_config,
        class_names=dataset.classes,
        label_to_category_id=label_to_category_id,
        evaluate=evaluate,
        device=device,
        num_workers=args.num_workers,
        quiet=args.quiet,
    )
    if args.resume:
        trainer.resume(last)
    if not main_process:  # rank 0 writes and prints for the job
        trainer.train()
        return 0
    output.mkdir(parents=True, exist_ok=True)
    _write_json(
        output / "config.json",
        {
            **run_config,
            "class_names": list(dataset.classes),
            "data": {
                "train": str(args.data),
                "split": args.split,
                "images": args.images,
                "val": None if val_dataset is None else str(args.val_data or args.data),
                "val_split": None if val_dataset is None else args.val_split,
                "metric": metric if val_dataset is not None else None,
            },
            "max_iters": trainer.max_iters,
            "processes": world_size,
        },
    )
    print(
        f"training {preset_name} on {len(dataset)} images ({len(dataset.classes)} classes) for "
        f"{trainer.max_iters} iterations on {device}" + (f", resuming at {trainer.state.iteration}" if args.resume else "")
        + ("" if val_dataset is not None else "; no validation set"),
        flush=True,
    )
    if world_size > 1:
        base_lr = f"{train_config.lr:g}"
        rule = f"= {base_lr} x {world_size} (linear scaling; --no-scale-lr keeps {base_lr})" if train_config.scale_lr else "(not scaled: --no-scale-lr)"
        print(
            f"data parallel: {world_size} processes x {train_config.batch_size} images = global batch "
            f"{world_size * train_config.batch_size}; lr {trainer.lr:g} {rule}",
            flush=True,
        )
    summary = trainer.train()
    if summary["metrics"] is not None:
        name, value = headline(summary["metrics"])
        print(f"validation {name} ({metric}) at iteration {summary['iteration']}: {value:.4f}; best {summary['best_metric']:.4f}")
    print(f"checkpoints in {output / 'checkpoints'}, metrics in {output / 'metrics.jsonl'}, loss curves in {output / 'loss.png'}")
    _print_skipped(len(getattr(dataset, "skipped", ())) + len(trainer.loader.skipped), "trained on")
    return 0


def _print_skipped(count: int, what: str) -> None:
    """The count of images left out under ``--on-bad-image skip`` (each was named in a warning)."""
    if count:
        print(f"{count} bad image{'s' if count != 1 else ''} skipped, not {what} (named in the warnings above; "
              "--on-bad-image error stops at the first)")  # fmt: skip


# -- eval -------------------------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    """Evaluate in this process, or sharded over the processes of a torchrun job (rank 0 writes)."""
    from fasterrcnn.data import build_dataset
    from fasterrcnn.detector import Detector
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.evaluator import default_metric, evaluate_model, evaluate_results, format_per_class_table, headline
    from fasterrcnn.evaluation import load_results, save_results
    from fasterrcnn.evaluation.plots import plot_pr_curves

    output = Path(args.output)
    device = distributed.init_distributed(args.device)  # torchrun: this process's device, process group joined
    if args.detections and not distributed.is_main_process():
        return 0  # scoring a results file is rank 0's alone
    if args.weights:
        detector = Detector.from_checkpoint(args.weights, device=device, amp=_inference_amp(args))
        model, class_names, device = detector.model, list(detector.class_names), detector.device
        if args.classes is not None and _class_list(args.classes) != class_names:
            raise ConfigError(f"--classes differs from the checkpoint's classes ({', '.join(class_names)})")
        dataset = build_dataset(args.data, split=args.split, images_dir=args.images, classes=class_names, on_bad_image=args.on_bad_image)
        metric = args.metric or default_metric(dataset)
        results, metrics = evaluate_model(
            model,
            dataset,
            metric=metric,
            class_names=class_names,
            label_to_category_id=getattr(dataset, "label_to_cat_id", None),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            device=device,
            progress=not args.quiet,
            amp_dtype=detector.amp_dtype,
        )
        if not distributed.is_main_process():
            return 0  # its share of the detections went to rank 0, which writes everything
        output.mkdir(parents=True, exist_ok=True)
        save_results(output / "detections.json", results)
        source = {"weights": str(args.weights)}
    else:
        results = load_results(args.detections)
        dataset = build_dataset(
            args.data, split=args.split, images_dir=args.images, classes=_class_list(args.classes), on_bad_image=args.on_bad_image
        )
        metric = args.metric or default_metric(dataset)
        try:
            metrics = evaluate_results(results, dataset, metric=metric)
        except ValueError as e:
            hint = "" if args.classes or hasattr(dataset, "coco") else "; --classes gives the class list of the category ids"
            raise DataError(args.detections, f"does not fit {args.data} ({e}){hint}") from None
        source = {"detections": str(args.detections)}

    output.mkdir(parents=True, exist_ok=True)
    name, value = headline(metrics)
    record = {**_json_metrics(metrics), "metric": metric, **source, "data": str(args.data)}
    if hasattr(dataset, "split") and not hasattr(dataset, "coco"):
        record["split"] = args.split
    record["num_images"] = len(dataset)
    _write_json(output / "metrics.json", record)
    plot_pr_curves(
        metrics.get("pr_curves", {}),
        output / "pr_curves.png",
        title=f"{Path(args.data).name}: {name} {value:.4f} ({metric})",
        aps=metrics.get("per_class"),
    )
    print(format_per_class_table(metrics))
    print(f"{name} ({metric}): {value:.4f}; wrote {output / 'metrics.json'} and {output / 'pr_curves.png'}")
    _print_skipped(len(getattr(dataset, "skipped", ())), "evaluated")
    return 0


# -- predict ----------------------------------------------------------------------------------------------
def _image_files(inputs: list[str]) -> list[Path]:
    files: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(path, f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(path, "no such image file or folder")
    stems: dict[str, Path] = {}
    for path in files:
        if path.stem in stems and stems[path.stem] != path:
            raise ConfigError(f"{stems[path.stem]} and {path} have the same file stem; their outputs would collide")
        stems[path.stem] = path
    return list(stems.values())


def cmd_predict(args) -> int:
    import torch

    from fasterrcnn.detector import Detector, in_original_pixels
    from fasterrcnn.evaluation import detections_to_results, save_results
    from fasterrcnn.io import atomic_save
    from fasterrcnn.visualize import draw_detections

    files = _image_files(args.inputs)
    amp = _inference_amp(args)
    if args.preset is not None:
        classes = "coco" if args.classes in (None, "coco") else _class_list(args.classes)
        detector = Detector.from_torchvision(args.preset, args.weights, classes=classes, device=args.device, amp=amp)
    elif args.classes is not None:
        raise ConfigError("--classes goes with --preset: a checkpoint written by 'fasterrcnn train' holds its class names")
    else:
        detector = Detector.from_checkpoint(args.weights, device=args.device, amp=amp)
    model, class_names, device = detector.model, list(detector.class_names), detector.device
    label_to_category_id = detector.label_to_category_id
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = []
    for path in files:
        # An image much larger than the model's input is decoded at a reduced size (memory); its
        # picture is drawn at that size, its detections.json boxes are in the original pixels.
        image, size = detector.load(path)
        with torch.inference_mode(), detector.autocast():
            detection = model([image.to(device)])[0]
        keep = detection["scores"] >= args.score_threshold
        detection = {k: v[keep].cpu() for k, v in detection.items()}
        original = {**detection, "boxes": in_original_pixels(detection["boxes"], image, size)}
        results.extend(detections_to_results(path.stem, original, class_names, label_to_category_id))
        picture = draw_detections(image, detection["boxes"], detection["labels"], detection["scores"], class_names)
        atomic_save(output / f"{path.stem}.jpg", lambda f: picture.save(f, format="JPEG", quality=92))
        if not args.quiet:
            print(f"{path}: {len(detection['scores'])} detections")
    save_results(output / "detections.json", results)
    print(f"{len(results)} detections on {len(files)} images (score >= {args.score_threshold}); pictures and detections.json in {output}")
    return 0


# -- compress ---------------------------------------------------------------------------------------------
def cmd_compress(args) -> int:
    import torch

    from fasterrcnn.config import to_dict
    from fasterrcnn.detector import Detector
    from fasterrcnn.engine.checkpoint import load_checkpoint, save_checkpoint
    from fasterrcnn.modeling.low_rank import BOX_HEAD_LAYERS, compress_box_head

    if Path(args.output).resolve() == Path(args.weights).resolve():
        raise ConfigError("--output must differ from --weights (the trained checkpoint is kept)")
    state = load_checkpoint(args.weights)
    detector = Detector.from_checkpoint_state(state, args.weights, device="cpu")
    model = detector.model
    box_head = model.roi_heads.box_head
    before = {name: getattr(box_head, name, None) for name in BOX_HEAD_LAYERS}
    print(f"truncated SVD of {', '.join(BOX_HEAD_LAYERS)} to ranks {tuple(args.ranks)} ...", flush=True)
    compress_box_head(model, args.ranks)
    for name, layer in before.items():
        low_rank = getattr(box_head, name)
        with torch.no_grad():
            error = (low_rank.expand.weight @ low_rank.reduce.weight - layer.weight).norm() / layer.weight.norm()
        print(
            f"{name}: {layer.in_features} -> {layer.out_features}, rank {low_rank.rank}: multiply-adds per RoI "
            f"{layer.in_features * layer.out_features:,} -> {low_rank.rank * (layer.in_features + layer.out_features):,}, "
            f"relative weight error {error:.4f}"
        )
    compressed = {
        "model": model.state_dict(),
        "config": {**state["config"], "model": to_dict(model.config)},
        "class_names": list(detector.class_names),
    }
    if state.get("label_to_category_id") is not None:
        compressed["label_to_category_id"] = state["label_to_category_id"]
    save_checkpoint(args.output, compressed)
    print(f"wrote {args.output} (for eval, predict and serve; training does not resume from it)")
    return 0


# -- demo -------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from fasterrcnn.data import write_synthetic_voc

    output = Path(args.output)
    quiet = ["--quiet"] if args.quiet else []
    parser = build_parser()
    start = time.perf_counter()

    print(f"[1/4] writing {DEMO_NUM_TRAIN} + {DEMO_NUM_TEST} synthetic images to {output / 'data'}", flush=True)
    root = write_synthetic_voc(
        output / "data", num_train=DEMO_NUM_TRAIN, num_test=DEMO_NUM_TEST, image_size=DEMO_IMAGE_SIZE, seed=DEMO_SEED
    )
    train_dir, eval_dir, pictures_dir = output / "train", output / "eval", output / "predictions"

    print(f"[2/4] training the {DEMO_PRESET} preset on the CPU in {train_dir}", flush=True)
    train_args = ["train", "--data", str(root), "--split", "train", "--preset", DEMO_PRESET, "--output", str(train_dir)]
    train_args += ["--no-val", "--device", "cpu", "--seed", str(DEMO_SEED)]
    for section, overrides in (("model", DEMO_MODEL), ("train", DEMO_TRAIN)):
        train_args += [arg for key, value in overrides.items() for arg in ("--set", f"{section}.{key}={json.dumps(value)}")]
    targs = parser.parse_args(train_args + quiet)
    targs.overwrite = True  # the demo starts afresh in its own folder
    cmd_train(targs)

    print(f"[3/4] evaluating on the {DEMO_NUM_TEST} test images in {eval_dir}", flush=True)
    weights = train_dir / "checkpoints" / "last.pt"
    cmd_eval(
        parser.parse_args(
            ["eval", "--weights", str(weights), "--data", str(root), "--split", "test", "--metric", "voc"]
            + ["--output", str(eval_dir), "--device", "cpu"]
            + quiet
        )
    )

    print(f"[4/4] drawing detections on {DEMO_NUM_PICTURES} test images in {pictures_dir}", flush=True)
    test_ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[:DEMO_NUM_PICTURES]
    images = [str(root / "JPEGImages" / f"{image_id}.jpg") for image_id in test_ids]
    cmd_predict(
        parser.parse_args(
            ["predict", *images, "--weights", str(weights), "--output", str(pictures_dir)]
            + ["--score-threshold", str(DEMO_SCORE_THRESHOLD), "--device", "cpu", "--quiet"]
        )
    )
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    minutes, seconds = divmod(int(time.perf_counter() - start), 60)
    print(
        f"demo done in {minutes}:{seconds:02d}: test mAP@0.5 = {metrics['mAP']:.4f}; pictures in {pictures_dir}, "
        f"precision/recall curves in {eval_dir / 'pr_curves.png'}, training curves in {train_dir / 'loss.png'}"
    )
    return 0
