"""``fasterrcnn predict``: parse, call ``runs.predict``, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from fasterrcnn.cli.options import (
    BAD_IMAGE_HELP, add_common, add_inference, add_overwrite, add_precision, add_torchvision_weights, inference_options,
    inference_precision, positive_int, score_threshold, torchvision_classes,
)  # fmt: skip


def add_parser(commands) -> None:
    p = commands.add_parser(
        "predict",
        help="detect objects in images and videos",
        description="Run a checkpoint on images and videos (.mp4 .avi .mov .mkv .webm; needs PyAV: pip install "
        "'fasterrcnn[video]'). Folders are searched recursively, and DIR mirrors their subfolders: DIR/<name>.jpg, "
        "an image with boxes, class names and scores drawn; DIR/<name>.mp4, a video drawn the same way, and "
        "DIR/<name>.jsonl, its detections, one line per frame; DIR/detections.jsonl, the images' detections, one "
        "line per image, written as the run goes; DIR/detections.json (COCO results list, image_id = <name>, "
        "boxes in the image's pixels), which covers every image read. <name> is the file's path relative to the "
        "folder given, without its suffix, or the stem of a file given. DIR must not hold an input or lie inside "
        "an input folder, and existing files are replaced only with --overwrite. An image or frame at least "
        "twice as large as the model's input is decoded at 1/2, 1/4 ... of its size, so that a 8000x6000 photo "
        "needs little memory. With --preset, --weights is a torchvision detection weights file instead (e.g. "
        "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth with --preset resnet50_fpn --classes coco).",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help="image or video files, or folders whose images and videos are all used (subfolders included)",
    )  # fmt: skip
    p.add_argument(
        "--weights", required=True, metavar="FILE",
        help="a checkpoint written by 'fasterrcnn train', or with --preset a torchvision detection state dict (.pth)",
    )  # fmt: skip
    add_torchvision_weights(p)
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures, videos and detections (created)")
    add_overwrite(p, "pictures, videos and detections already in --output")
    p.add_argument("--score-threshold", type=score_threshold, default=0.5, metavar="X", help="keep detections scoring >= X (default: 0.5)")
    p.add_argument(
        "--probabilities", action="store_true",
        help="each detection in the .json / .jsonl files also carries its class probabilities: the box head's softmax "
        "over background and the classes, in label order (background first)",
    )  # fmt: skip
    p.add_argument("--frame-stride", type=positive_int, default=1, metavar="N", help="process every N-th frame of a video (default: 1)")
    p.add_argument(
        "--batch-size", type=positive_int, default=1, metavar="N",
        help="run up to N consecutive images of the same size in one forward pass, with the same detections as one at "
        "a time up to float rounding (default: 1; not with --slice or --tta). Images are decoded ahead of the model in a background thread either way",
    )  # fmt: skip
    p.add_argument("--on-bad-image", choices=("skip", "error"), default="skip", help=BAD_IMAGE_HELP + "; a video alike")
    add_inference(p)
    add_precision(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.data.video import VIDEO_SUFFIXES
    from fasterrcnn.runs import predict

    classes = torchvision_classes(args)
    result = predict(
        args.weights, args.inputs, output=args.output, overwrite=args.overwrite, score_threshold=args.score_threshold,
        on_bad_image=args.on_bad_image, frame_stride=args.frame_stride, preset=args.preset, classes=classes, device=args.device,
        precision=inference_precision(args), quiet=args.quiet, probabilities=args.probabilities, batch_size=args.batch_size,
        **inference_options(args),
    )  # fmt: skip
    read = []
    if result.detections or not result.videos:
        read.append(f"{sum(len(found) for found in result.detections.values())} detections on {len(result.detections)} images")
    if result.videos:
        frames = [frame for video in result.videos.values() for frame in video.frames]
        read.append(f"{sum(len(frame.detections) for frame in frames)} detections on {len(frames)} frames of {len(result.videos)} videos")
    print(f"{', '.join(read)} (score >= {args.score_threshold}); pictures, videos and detections in {result.output}")
    if result.skipped:
        videos = sum(Path(file).suffix.lower() in VIDEO_SUFFIXES for file, _ in result.skipped)
        kinds = [f"{n} {kind}(s)" for n, kind in ((len(result.skipped) - videos, "image"), (videos, "video")) if n]
        print(f"{' and '.join(kinds)} could not be read and were skipped (named in the warnings above)")
    return 0
