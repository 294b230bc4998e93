"""``fasterrcnn serve``: parse, call ``serve.run`` (the web framework is imported only when it runs)."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import (
    add_device, add_inference, add_precision, add_torchvision_weights, inference_options, inference_precision, positive_int,
    torchvision_classes,
)  # fmt: skip
from fasterrcnn.serve import DEFAULT_MAX_UPLOAD_BYTES


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return value


def add_parser(commands) -> None:
    p = commands.add_parser(
        "serve",
        help="serve a checkpoint as a web page and a JSON API",
        description="Serve a checkpoint: GET / is a page to drop an image on and see its detections; "
        "POST /detect (multipart field 'image', optional score_threshold) answers JSON; GET /health. "
        "With --preset, --weights is a torchvision detection weights file instead (as for 'predict'). "
        "Needs fastapi, uvicorn and python-multipart.",
    )
    p.add_argument(
        "--weights", required=True, metavar="FILE",
        help="a checkpoint written by 'fasterrcnn train', or with --preset a torchvision detection state dict (.pth)",
    )  # fmt: skip
    add_torchvision_weights(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=port, default=8000, help="port to listen on (default: 8000)")
    add_device(p)
    p.add_argument(
        "--max-upload-bytes", type=positive_int, default=DEFAULT_MAX_UPLOAD_BYTES, metavar="N",
        help=f"largest accepted upload (default: {DEFAULT_MAX_UPLOAD_BYTES}, 20 MiB)",
    )  # fmt: skip
    add_inference(p, tta=False)
    add_precision(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted (Ctrl-C), then return 0."""
    from fasterrcnn.inference import InferenceOptions
    from fasterrcnn.serve import run as serve

    serve(
        args.weights, args.host, args.port, device=args.device, max_upload_bytes=args.max_upload_bytes,
        precision=inference_precision(args), preset=args.preset, classes=torchvision_classes(args),
        inference=InferenceOptions(**inference_options(args)),
    )  # fmt: skip
    return 0
