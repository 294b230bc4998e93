"""``fasterrcnn predict``: parse, call ``runs.predict``, print."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import (
    BAD_IMAGE_HELP, INFERENCE_AMP_HELP, add_amp, add_common, add_overwrite, add_torchvision_weights, inference_amp,
    torchvision_classes,
)  # fmt: skip


def add_parser(commands) -> None:
    p = commands.add_parser(
        "predict",
        help="detect objects in images",
        description="Run a checkpoint on images. Writes DIR/<image stem>.jpg with boxes, class names and scores "
        "drawn, and DIR/detections.json (COCO results list, image_id = file stem, boxes in the image's pixels), "
        "which covers every image read. DIR must not hold an input image, and existing files are replaced only "
        "with --overwrite. An image at least twice as large as the model's input is decoded at 1/2, 1/4 ... of "
        "its size (its picture too), so that a 8000x6000 photo needs little memory. With --preset, --weights is a "
        "torchvision detection weights file instead (e.g. fasterrcnn_resnet50_fpn_coco-258fb6c6.pth with --preset "
        "resnet50_fpn --classes coco).",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, or folders whose images are all used")
    p.add_argument(
        "--weights", required=True, metavar="FILE",
        help="a checkpoint written by 'fasterrcnn train', or with --preset a torchvision detection state dict (.pth)",
    )  # fmt: skip
    add_torchvision_weights(p)
    p.add_argument("--output", required=True, metavar="DIR", help="folder for the pictures and detections.json (created)")
    add_overwrite(p, "pictures and detections.json already in --output")
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="X", help="keep detections scoring >= X (default: 0.5)")
    p.add_argument("--on-bad-image", choices=("skip", "error"), default="skip", help=BAD_IMAGE_HELP)
    add_amp(p, *INFERENCE_AMP_HELP)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.runs import predict

    classes = torchvision_classes(args)
    result = predict(
        args.weights, args.inputs, output=args.output, overwrite=args.overwrite, score_threshold=args.score_threshold,
        on_bad_image=args.on_bad_image, preset=args.preset, classes=classes, device=args.device,
        amp=inference_amp(args), quiet=args.quiet,
    )  # fmt: skip
    count = sum(len(found) for found in result.detections.values())
    print(
        f"{count} detections on {len(result.detections)} images (score >= {args.score_threshold}); "
        f"pictures and detections.json in {result.output}"
    )
    if result.skipped:
        print(f"{len(result.skipped)} image(s) could not be read and were skipped (named in the warnings above)")
    return 0
