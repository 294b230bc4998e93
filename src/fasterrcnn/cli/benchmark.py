"""``fasterrcnn benchmark``: parse, call ``runs.benchmark``, print the table."""

from __future__ import annotations

import argparse

from fasterrcnn.cli.options import add_data, add_overwrite, positive_int


def add_parser(commands) -> None:
    from fasterrcnn.runs.benchmark import PATHS

    p = commands.add_parser(
        "benchmark",
        help="time and score a checkpoint on every inference path of this CPU",
        description="Evaluate a checkpoint on a data split through each inference path (" + ", ".join(PATHS) + "), "
        "one image at a time on the CPU, and print one row per path: mAP, median ms per image, images/s, the exported "
        "file's size and export time, or why the path cannot run here (a runtime not installed, no bf16 instructions, "
        "no int8 file). See docs/deployment.md.",
    )
    p.add_argument("--weights", required=True, metavar="FILE", help="a checkpoint written by 'fasterrcnn train' (or compress)")
    add_data(p, split_default="test", split_help="test")
    p.add_argument("--metric", choices=("voc", "voc07", "coco"), help="default: voc for VOC data, coco for COCO")
    p.add_argument("--output", metavar="FILE.csv", help="also write the table as CSV (atomically)")
    add_overwrite(p, "an existing --output file")
    p.add_argument("--int8", metavar="FILE.xml", help="an int8 OpenVINO file of this checkpoint (fasterrcnn export --int8) for the int8 row")
    p.add_argument("--paths", metavar="P,P", help=f"only these paths, comma-separated (default: all: {','.join(PATHS)})")
    p.add_argument("--threads", type=positive_int, metavar="N", help="CPU threads of torch and the runtimes (default: as they are)")
    p.add_argument("--quiet", action="store_true", help="no line per path while it runs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fasterrcnn.runs.benchmark import PATHS, benchmark, benchmark_table

    paths = PATHS if args.paths is None else tuple(path.strip() for path in args.paths.split(","))
    rows = benchmark(
        args.weights, args.data, output=args.output, overwrite=args.overwrite, split=args.split, images=args.images,
        metric=args.metric, int8=args.int8, paths=paths, threads=args.threads, on_bad_image=args.on_bad_image, quiet=args.quiet,
    )  # fmt: skip
    print(benchmark_table(rows))
    if args.output:
        print(f"wrote {args.output}")
    return 0
