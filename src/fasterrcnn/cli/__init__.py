"""The ``fasterrcnn`` command: train, eval, predict, compress, calibrate, export, benchmark, convert, demo and serve.

    fasterrcnn train --data VOC_ROOT|COCO.json --preset tiny --output runs/x [--max-iters N] ...
    fasterrcnn eval --weights runs/x/checkpoints/best.pt --data VOC_ROOT --output runs/x/eval
    fasterrcnn eval --detections results.json --data VOC_ROOT --output eval/
    fasterrcnn predict --weights CKPT image.jpg images/ --output predictions/
    fasterrcnn compress --weights CKPT --output CKPT_SVD
    fasterrcnn calibrate --weights CKPT --data VOC_ROOT --split val --output CKPT_CALIBRATED
    fasterrcnn export --weights CKPT --output model.onnx|model.xml
    fasterrcnn benchmark --weights CKPT --data VOC_ROOT|COCO.json [--output benchmark.csv]
    fasterrcnn convert VOC_ROOT|COCO.json|data.yaml DEST --to voc|coco|yolo
    fasterrcnn demo --output demo_output
    fasterrcnn serve --weights CKPT [--host 127.0.0.1] [--port 8000]
    torchrun --nproc_per_node=4 -m fasterrcnn train ...   (data parallel: one process per GPU)

Each command is a module of this package that parses its options (shared ones in ``options.py``),
calls the run layer (``fasterrcnn.runs``, the same functions Python users call) and prints.
Errors the user must fix (missing or malformed files, bad options) end in one line
``fasterrcnn: error: <message>`` on stderr and exit code 2, never a traceback. torch and the rest
of the package are imported inside the commands, so ``--help`` is quick.
"""

from __future__ import annotations

import shlex
import sys

from fasterrcnn.cli import benchmark, calibrate, compress, convert, demo, evaluate, export, predict, serve, train
from fasterrcnn.cli.options import Parser
from fasterrcnn.errors import FasterRCNNError

__all__ = ["build_parser", "main"]

COMMANDS = (train, evaluate, predict, compress, calibrate, export, benchmark, convert, demo, serve)  # in the order of --help


def build_parser() -> Parser:
    from fasterrcnn import __version__

    parser = Parser(
        prog="fasterrcnn",
        description="Faster R-CNN object detection (Ren et al., NIPS 2015) in plain PyTorch: "
        "train, evaluate, predict, serve a web page, or run the CPU demo.",
        epilog="Run 'fasterrcnn <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"fasterrcnn {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error, 130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP).

    ``train`` stopped by SIGINT, SIGTERM or SIGHUP first writes ``checkpoints/last.pt`` at the current
    iteration and prints where it is and the command that resumes (``engine/interrupt.py``); so does
    ``train`` ended by any other error (``engine.trainer.TrainingFailed``).
    """
    from fasterrcnn.engine.interrupt import TrainingInterrupted

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    _configure_logging()
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        return args.func(args)
    except (TrainingInterrupted, FasterRCNNError) as e:
        message = " ".join(str(e).split())  # one line
        if getattr(e, "checkpoint", None) is not None and args.command == "train":
            again = [word for word in words if word != "--overwrite"] + ([] if args.resume else ["--resume"])
            message += "; resume with: " + shlex.join(["fasterrcnn", *again])
        if isinstance(e, TrainingInterrupted):
            print(f"fasterrcnn: {message}", file=sys.stderr)
            return e.exit_code
        print(f"fasterrcnn: error: {message}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # an allocation that failed: sizes beyond this machine's memory
        if isinstance(e, RuntimeError) and not _out_of_memory(e):
            raise
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        print(f"fasterrcnn: error: out of memory ({detail}); use smaller sizes (images, batch, model) or another device", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fasterrcnn: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _out_of_memory(error: RuntimeError) -> bool:
    """Whether torch's RuntimeError says that an allocation failed (CPU: "not enough memory", CUDA: "out of memory")."""
    text = str(error)
    return "not enough memory" in text or "out of memory" in text.lower()


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
