"""``fasterrcnn export``: a checkpoint to ONNX or OpenVINO IR (one graph, image -> detections), or int8 OpenVINO IR.

Parse, call ``runs.export``, print; see docs/deployment.md for the exported files.
"""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import add_overwrite, positive_int


def add_parser(commands) -> None:
    """Add the ``export`` subcommand to ``commands`` (from ``ArgumentParser.add_subparsers``)."""
    from fasterrcnn.runs.exporting import CALIBRATION_IMAGES

    p = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or OpenVINO IR (float32 or int8)",
        description="Write a checkpoint's detector as one graph from an image [3, H, W] (RGB in [0, 1], any size) "
        "to boxes (input pixels), labels and scores, for onnxruntime or OpenVINO; with --int8, an OpenVINO model whose "
        "backbone is quantized to int8 (NNCF post-training quantization on --calibration images; pip install "
        "'fasterrcnn[int8]'), scored against float32 on held-out data; see docs/deployment.md.",
    )
    p.add_argument("--weights", required=True, help="checkpoint written by train or compress")
    p.add_argument("--output", required=True, help="file to write: NAME.onnx, or NAME.xml (+ NAME.bin) for openvino")
    p.add_argument("--format", choices=("onnx", "openvino"), default=None, help="default: openvino for a .xml output, else onnx")
    add_overwrite(p, "an existing --output file")
    p.add_argument("--int8", action="store_true", help="quantize the backbone to int8 (OpenVINO .xml only; needs --calibration)")
    p.add_argument("--calibration", metavar="DATA", help="with --int8: a VOC root or COCO JSON whose images calibrate the quantization")
    p.add_argument("--calibration-split", default="train", metavar="SPLIT", help="VOC split of --calibration (default: train)")
    p.add_argument(
        "--calibration-images", type=positive_int, default=CALIBRATION_IMAGES, metavar="N",
        help=f"calibrate on N images of the split, evenly spaced (default: {CALIBRATION_IMAGES})",
    )  # fmt: skip
    p.add_argument("--val-data", metavar="DATA", help="with --int8: held-out data scored in float32 and int8 (default: --calibration)")
    p.add_argument("--val-split", default="test", metavar="SPLIT", help="VOC split of the held-out data (default: test)")
    p.add_argument("--device", default="cpu", help="only 'cpu': the export traces the model on the CPU (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export ``args.weights`` to ``args.output``; prints one line per file written (and int8's two scores)."""
    from fasterrcnn.errors import ConfigError
    from fasterrcnn.runs import export

    if args.device != "cpu":
        raise ConfigError(f"--device {args.device!r}: the export runs on the CPU (the exported graph runs anywhere its runtime does)")
    result = export(
        args.weights, args.output, format=args.format, overwrite=args.overwrite, int8=args.int8, calibration=args.calibration,
        calibration_split=args.calibration_split, calibration_images=args.calibration_images, val_data=args.val_data,
        val_split=args.val_split,
    )  # fmt: skip
    for path in result.files:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {result.seconds:.1f} s)")
    if result.map_int8 is not None:
        print(f"{result.metric} on {result.val_images} held-out images: float32 {result.map_f32:.4f}, int8 {result.map_int8:.4f}")
    return 0
