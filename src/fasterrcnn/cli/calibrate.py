"""``fasterrcnn calibrate``: parse, call ``runs.calibrate``, print."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import add_common, add_data, add_overwrite, positive_int


def add_parser(commands) -> None:
    p = commands.add_parser(
        "calibrate",
        help="fit a score map so that scores mean precisions",
        description="On held-out data, fit the map sigmoid(a logit(s) + b), a > 0, of each detection's score s "
        "(Platt scaling: the same detections in the same order, so the same mAP), so that of the detections scoring "
        "about p a share p is right (IoU >= 0.5), and write a new checkpoint with it: 'eval', 'predict', 'serve' and "
        "'export' use it. Prints the detection ECE and mAP@0.5 of the data before and after. The data must not be "
        "the model's training data, and --output never replaces --weights.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="a checkpoint written by 'fasterrcnn train'")
    add_data(p, split_default="val", split_help="val: held-out data, never the training split")
    p.add_argument("--output", required=True, metavar="CKPT", help="the calibrated checkpoint to write")
    add_overwrite(p, "an existing --output file")
    p.add_argument("--temperature", action="store_true", help="first fit a temperature that divides the box head's class logits "
                   "(calibrates the class probabilities of --probabilities; it also moves boxes across the score threshold, so the mAP can change)")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="images per forward pass (default: 1)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.runs import calibrate

    result = calibrate(
        args.weights, args.data, args.output, split=args.split, images=args.images, overwrite=args.overwrite,
        device=args.device, batch_size=args.batch_size, num_workers=args.num_workers, on_bad_image=args.on_bad_image,
        quiet=args.quiet, fit_temperature_too=args.temperature,
    )  # fmt: skip
    a, b = result.score_map
    fitted = f"temperature {result.temperature:.4f}, " if result.scaled is not None else ""
    print(f"{fitted}score map sigmoid({a:.4f} logit(s) {b:+.4f}) fitted on {result.num_images} images ({args.data}, {args.split})")
    steps = [("before", result.before), ("temperature only", result.scaled), ("after", result.after)]
    for name, values in (step for step in steps if step[1] is not None):
        print(f"{name}: detection ECE {values['ece']:.4f}, mAP@0.5 {values['mAP']:.4f} ({values['detections']} detections)")
    print(f"wrote {result.output} (for eval, predict, serve and export; training does not resume from it)")
    return 0
