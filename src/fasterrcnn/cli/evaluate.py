"""``fasterrcnn eval``: parse, call ``runs.evaluate``, print."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import (
    add_common, add_data, add_inference, add_overwrite, add_precision, class_list, inference_options, inference_precision,
    positive_int, print_skipped, score_threshold,
)  # fmt: skip


def add_parser(commands) -> None:
    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint or a detections file",
        description="Evaluate a checkpoint (--weights) or a results file (--detections) on a dataset. Prints a "
        "per-class table (instances, detections, precision, recall, AP) and writes DIR/metrics.json (mAP / AP, AP50, "
        "AP75 and per-class APs), DIR/pr_curves.png, DIR/confusion_matrix.png and .csv, DIR/per_class.csv and, with "
        "--weights, DIR/detections.json and DIR/samples.jpg (existing ones only with --overwrite). "
        "Started by torchrun, the processes share the images (one GPU each) and rank 0 writes.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", metavar="CKPT", help="a checkpoint written by 'fasterrcnn train'")
    source.add_argument("--detections", metavar="FILE", help="a COCO results JSON (list of image_id, category_id, bbox [x,y,w,h], score)")
    add_data(p, split_default=None, split_help="test for VOC, val for YOLO, as train validates")
    p.add_argument(
        "--metric", choices=("voc", "voc07", "coco"),
        help="voc (VOC AP@0.5, area under the curve), voc07 (11-point) or coco (AP@[.5:.95] by pycocotools) "
        "(default: voc for VOC and YOLO data, coco for COCO data)",
    )  # fmt: skip
    p.add_argument("--output", required=True, metavar="DIR", help="folder for metrics.json, the plots and tables (created)")
    add_overwrite(p, "the files eval writes in --output")
    p.add_argument(
        "--score-threshold", type=score_threshold, default=0.5, metavar="X",
        help="the confusion matrix, precision and recall count detections scoring >= X (default: 0.5; AP uses all)",
    )  # fmt: skip
    p.add_argument("--classes", metavar="A,B,C", help="--detections on VOC data: the class names in category-id order (default: inferred from the data)")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="images per forward pass (default: 1)")
    add_inference(p)
    add_precision(p)
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.engine import distributed
    from fasterrcnn.engine.evaluator import headline
    from fasterrcnn.runs import evaluate

    result = evaluate(
        args.data, weights=args.weights, detections=args.detections, output=args.output, overwrite=args.overwrite,
        split=args.split, images=args.images, classes=class_list(args.classes), metric=args.metric,
        batch_size=args.batch_size, device=args.device, precision=inference_precision(args), num_workers=args.num_workers,
        on_bad_image=args.on_bad_image, quiet=args.quiet, score_threshold=args.score_threshold, **inference_options(args),
    )  # fmt: skip
    if not distributed.is_main_process():
        return 0
    name, value = headline(result.metrics)
    print(result.report.table())
    written = ", ".join(path.name for path in result.files)
    print(f"{name} ({result.metric}) on {result.split}: {value:.4f}; wrote {written} in {result.output}")
    print_skipped(result.skipped, "evaluated")
    return 0
