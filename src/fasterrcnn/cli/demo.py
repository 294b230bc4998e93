"""``fasterrcnn demo``: parse, call ``runs.demo``, print."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import positive_int


def add_parser(commands) -> None:
    from fasterrcnn.runs.demo_run import DEMO_IMAGE_SIZE, DEMO_NUM_PICTURES, DEMO_NUM_TEST, DEMO_NUM_TRAIN, DEMO_NUM_VAL, DEMO_PRESET, DEMO_TRAIN

    p = commands.add_parser(
        "demo",
        help="train and evaluate the tiny model on synthetic shapes (CPU, minutes)",
        description=f"Generate a synthetic VOC set ({DEMO_NUM_TRAIN} train / {DEMO_NUM_VAL} val / {DEMO_NUM_TEST} test images "
        f"of {DEMO_IMAGE_SIZE[1]}x{DEMO_IMAGE_SIZE[0]} px) in DIR/data, train the '{DEMO_PRESET}' preset on the CPU "
        f"for {DEMO_TRAIN['max_iters']} iterations in DIR/train (validating on the val images), evaluate it on the "
        f"test split (VOC mAP@0.5) in DIR/eval, draw its detections on {DEMO_NUM_PICTURES} test images in DIR/predictions, and compare "
        "the inference paths of this CPU (fasterrcnn benchmark) on the val images in DIR/benchmark.csv. DIR is new, empty "
        "or an earlier demo's (recognised by the DIR/.fasterrcnn-demo file the demo writes), which it replaces.",
    )
    p.add_argument("--output", default="demo_output", metavar="DIR", help="folder for everything the demo writes (default: demo_output)")
    p.add_argument("--max-iters", type=positive_int, metavar="N", help=f"train for N iterations (default: {DEMO_TRAIN['max_iters']}); fewer is faster and less accurate")
    p.add_argument("--quiet", action="store_true", help="plain log lines instead of progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.runs import demo
    from fasterrcnn.runs.demo_run import DEMO_NUM_PICTURES

    result = demo(args.output, max_iters=args.max_iters, quiet=args.quiet)
    minutes, seconds = divmod(int(result.seconds), 60)
    print(f"demo done in {minutes}:{seconds:02d}: test mAP@0.5 = {result.map50:.4f}")
    print(f"training in {result.train}: results.csv, results.png (losses, validation mAP); the last validation's")
    print("  confusion_matrix.png / .csv, per_class.csv, samples.jpg; TensorBoard: tensorboard --logdir " + str(result.train / "tb"))
    print(f"test evaluation in {result.eval}: metrics.json, per_class.csv, confusion_matrix.png / .csv, pr_curves.png, samples.jpg,")
    print("  error_breakdown.png / .csv (what each kind of error costs), reliability.png (how far the scores can be trusted)")
    print(f"detections drawn on {DEMO_NUM_PICTURES} test images in {result.predictions}")
    print(f"inference paths on this CPU (validation images; {result.benchmark}):")
    print(result.benchmark_table)
    return 0
