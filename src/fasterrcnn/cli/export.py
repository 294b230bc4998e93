"""``fasterrcnn export``: a checkpoint to ONNX or OpenVINO IR (one graph, image -> detections).

Parse, call ``runs.export.export_checkpoint``, print; see docs/deployment.md for the exported files.
"""

from __future__ import annotations

import argparse
import time

from fasterrcnn.cli.options import add_overwrite


def add_parser(commands) -> None:
    """Add the ``export`` subcommand to ``commands`` (from ``ArgumentParser.add_subparsers``)."""
    p = commands.add_parser(
        "export",
        help="export a checkpoint to ONNX or OpenVINO IR",
        description="Write a checkpoint's detector as one graph from an image [3, H, W] (RGB in [0, 1], any size) "
        "to boxes (input pixels), labels and scores, for onnxruntime or OpenVINO; see docs/deployment.md.",
    )
    p.add_argument("--weights", required=True, help="checkpoint written by train or compress")
    p.add_argument("--output", required=True, help="file to write: NAME.onnx, or NAME.xml (+ NAME.bin) for openvino")
    p.add_argument("--format", choices=("onnx", "openvino"), default=None, help="default: openvino for a .xml output, else onnx")
    add_overwrite(p, "an existing --output file")
    p.add_argument("--device", default="cpu", help="only 'cpu': the export traces the model on the CPU (default: cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export ``args.weights`` to ``args.output``; prints one line per file written."""
    from fasterrcnn.errors import ConfigError
    from fasterrcnn.runs.export import export_checkpoint

    if args.device != "cpu":
        raise ConfigError(f"--device {args.device!r}: the export runs on the CPU (the exported graph runs anywhere its runtime does)")
    start = time.perf_counter()
    written = export_checkpoint(args.weights, args.output, format=args.format, overwrite=args.overwrite)
    seconds = time.perf_counter() - start
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {seconds:.1f} s)")
    return 0
