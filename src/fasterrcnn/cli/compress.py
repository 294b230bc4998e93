"""``fasterrcnn compress``: parse, call ``runs.compress``, print."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import add_overwrite, positive_int


def add_parser(commands) -> None:
    p = commands.add_parser(
        "compress",
        help="truncated SVD of a checkpoint's fc6 / fc7 (faster inference)",
        description="Replace the box head's fully connected fc6 and fc7 by their truncated SVDs (Fast R-CNN, "
        "section 3.1): each becomes two layers of the given rank, which cuts the box head's time at inference "
        "for a small loss of accuracy (evaluate the result with 'fasterrcnn eval'). Writes a checkpoint that "
        "'eval', 'predict' and 'serve' load as any other (its model config records the ranks). Needs a box head "
        "with fc6 and fc7: vgg16, the FPN presets and tiny.",
    )
    p.add_argument("--weights", required=True, metavar="CKPT", help="a checkpoint written by 'fasterrcnn train'")
    p.add_argument(
        "--ranks", nargs=2, type=positive_int, default=(1024, 256), metavar=("FC6", "FC7"),
        help="singular values kept of fc6 and of fc7 (default: 1024 256, Fast R-CNN's for VGG16)",
    )  # fmt: skip
    p.add_argument("--output", required=True, metavar="CKPT", help="the compressed checkpoint to write")
    add_overwrite(p, "an existing --output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.runs import compress

    print(f"truncated SVD of fc6, fc7 to ranks {tuple(args.ranks)} ...", flush=True)
    for layer in compress(args.weights, args.output, ranks=tuple(args.ranks), overwrite=args.overwrite):
        n_in, n_out, rank = layer["in"], layer["out"], layer["rank"]
        print(
            f"{layer['name']}: {n_in} -> {n_out}, rank {rank}: multiply-adds per RoI {n_in * n_out:,} -> "
            f"{rank * (n_in + n_out):,}, relative weight error {layer['error']:.4f}"
        )
    print(f"wrote {args.output} (for eval, predict and serve; training does not resume from it)")
    return 0
