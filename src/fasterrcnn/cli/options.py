"""Options and helpers shared by the commands: one definition of each flag, its type and its help."""

from __future__ import annotations

import argparse
import logging

from fasterrcnn.errors import ConfigError

__all__ = [
    "DATA_HELP", "Parser", "add_amp", "add_common", "add_data", "add_device", "add_inference", "add_overwrite", "add_precision",
    "add_torchvision_weights", "class_list", "inference_options", "inference_precision", "nonnegative_int", "positive_float",
    "positive_int", "print_skipped", "score_threshold", "torchvision_classes",
]  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``fasterrcnn <cmd>: error: ...``), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value}")
    return value


def score_threshold(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:  # NaN too
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {value}")
    return value


def add_device(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help=f"where to run: 'cpu', 'cuda', 'cuda:1', ... or 'auto' (CUDA when available, else CPU) (default: {default})",
    )


def add_common(p: argparse.ArgumentParser) -> None:
    add_device(p)
    p.add_argument(
        "--num-workers", type=nonnegative_int, default=0, metavar="N",
        help="data-loading worker processes (default: 0, load in the main process)",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of progress bars")


def add_overwrite(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what} (by default an existing file is never written over)")


def add_amp(p: argparse.ArgumentParser, amp_help: str, dtype_help: str) -> None:
    p.add_argument("--amp", action="store_true", help=amp_help)
    p.add_argument("--amp-dtype", choices=("bf16", "fp16"), help=dtype_help)


def add_precision(p: argparse.ArgumentParser) -> None:
    """``--precision`` of eval, predict and serve, and its deprecated spelling ``--amp [--amp-dtype]`` (hidden)."""
    from fasterrcnn.device import PRECISIONS  # here: importing the options needs no torch

    p.add_argument(
        "--precision", choices=PRECISIONS, default=None,
        help="what the model computes in: 'auto' (bf16 where the CPU has bf16 instructions (avx512_bf16, AMX) or the "
        "GPU supports it, else f32; the choice is logged and recorded in the outputs), 'f32', 'bf16', 'fp16' (CUDA), "
        "or 'int8' (an OpenVINO file written by 'fasterrcnn export --int8') (default: auto)",
    )  # fmt: skip
    add_amp(p, argparse.SUPPRESS, argparse.SUPPRESS)


def inference_precision(args: argparse.Namespace) -> str:
    """The ``precision`` of a Detector from ``--precision``, or the deprecated ``--amp`` / ``--amp-dtype`` (eval, predict, serve)."""
    if args.amp_dtype is not None and not args.amp:
        raise ConfigError("--amp-dtype goes with --amp")
    if args.amp:
        if args.precision is not None:
            raise ConfigError("--amp is the old spelling of --precision bf16; give --precision alone")
        precision = args.amp_dtype or "bf16"
        logging.getLogger("fasterrcnn").warning("--amp is deprecated: use --precision %s", precision)
        return precision
    return args.precision or "auto"


BAD_IMAGE_HELP = (
    "an image whose file or annotation is unusable (missing, empty, truncated, not an image, wrong size, "
    "malformed XML/JSON entry, duplicate id): 'skip' it with a warning naming the file and a count at the "
    "end, or stop with an 'error' naming it (default: skip)"
)


DATA_HELP = (
    "a VOC root (with Annotations/, JPEGImages/, ImageSets/Main/), a COCO instances JSON file or a YOLO data.yaml "
    "(or a folder holding one); the format is detected"
)


def add_data(p: argparse.ArgumentParser, *, split_default: str | None, split_help: str, data_help: str = "") -> None:
    """``--data`` (required unless ``data_help`` says where else it comes from), ``--split`` (``split_help``: its
    default in words), ``--images``, ``--on-bad-image``."""
    p.add_argument("--data", required=not data_help, metavar="PATH", help=DATA_HELP + data_help)
    p.add_argument(
        "--split", default=split_default,
        help=f"VOC: ImageSets/Main/<SPLIT>.txt; YOLO: a key of data.yaml (train, val, test) (default: {split_help}; ignored for COCO)",
    )  # fmt: skip
    p.add_argument("--images", metavar="DIR", help="COCO only: the folder of the JSON's images (default: found next to the JSON)")
    p.add_argument("--on-bad-image", choices=("skip", "error"), default="skip", help=BAD_IMAGE_HELP)


def class_list(text: str | None) -> list[str] | None:
    """``--classes A,B,C`` as a list of names (None when not given)."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",")]
    if not names or any(not name for name in names):
        raise ConfigError(f"--classes {text!r}: expected comma-separated non-empty class names")
    if len(set(names)) != len(names):
        raise ConfigError(f"--classes {text!r}: a class name appears twice")
    return names


def add_torchvision_weights(p: argparse.ArgumentParser) -> None:
    """``--preset`` / ``--classes``: read ``--weights`` as a torchvision detection file (predict, serve)."""
    p.add_argument(
        "--preset", metavar="NAME",
        help="read --weights as a torchvision detection file for this preset's model (resnet50_fpn, "
        "mobilenet_v3_large_fpn, mobilenet_v3_large_320_fpn); the class count is read from the file",
    )  # fmt: skip
    p.add_argument(
        "--classes", metavar="coco|A,B,C",
        help="with --preset: 'coco' (the built-in names of torchvision's 91-id COCO layout, label = COCO "
        "category id; the default) or the class names in label order",
    )  # fmt: skip


def torchvision_classes(args: argparse.Namespace) -> list[str] | str | None:
    """The ``classes`` of ``--classes``: None, "coco" or a list of names; refused without ``--preset``."""
    if args.classes is not None and args.preset is None:
        raise ConfigError("--classes goes with --preset: a checkpoint written by 'fasterrcnn train' holds its class names")
    return args.classes if args.classes in (None, "coco") else class_list(args.classes)


def print_skipped(count: int, what: str) -> None:
    """The count of images left out under ``--on-bad-image skip`` (each was named in a warning)."""
    if count:
        print(f"{count} bad image{'s' if count != 1 else ''} skipped, not {what} (named in the warnings above; "
              "--on-bad-image error stops at the first)")  # fmt: skip


def add_inference(p: argparse.ArgumentParser, *, tta: bool = True) -> None:
    """``--slice`` / ``--overlap`` / ``--no-full-image`` (and ``--tta``): how each image is looked at (``fasterrcnn.inference``)."""
    p.add_argument(
        "--slice", type=positive_int, metavar="SIZE",
        help="sliced inference: detect in overlapping tiles of SIZE x SIZE pixels at full resolution (images up to "
        "150 megapixels), plus one pass over the whole image; duplicates across tiles are merged (default: off)",
    )  # fmt: skip
    p.add_argument("--overlap", type=float, default=0.2, metavar="R", help="with --slice: fraction of a tile shared with its neighbour, in [0, 1) (default: 0.2)")
    p.add_argument("--no-full-image", action="store_true", help="with --slice: the tiles only, no pass over the whole image")
    if tta:
        p.add_argument(
            "--tta", action="store_true",
            help="test-time augmentation: also detect on the horizontal flip and at 1.25x the input size, fused by "
            "weighted box fusion (about 3.6x the time; with --slice, per tile)",
        )  # fmt: skip


def inference_options(args: argparse.Namespace) -> dict:
    """The ``slice`` / ``overlap`` / ``full_image`` / ``tta`` keywords of ``--slice`` ... (predict, eval, serve)."""
    if args.slice is None and (args.no_full_image or args.overlap != 0.2):
        raise ConfigError("--overlap and --no-full-image go with --slice")
    return {"slice": args.slice, "overlap": args.overlap, "full_image": not args.no_full_image, "tta": getattr(args, "tta", False)}
