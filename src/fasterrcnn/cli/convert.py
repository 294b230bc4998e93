"""``fasterrcnn convert``: write a VOC, COCO or YOLO data set in another of these formats.

    fasterrcnn convert VOC_ROOT out/ --to yolo
    fasterrcnn convert data.yaml out/ --to coco --split train --split val
    fasterrcnn convert annotations/instances_val2017.json out/ --to yolo --split val2017=val

The work is ``fasterrcnn.data.convert.convert``; this module parses and prints.
"""

from __future__ import annotations

def add_parser(commands) -> None:
    """Add the ``convert`` command to the sub-command action ``commands`` (argparse ``add_subparsers``)."""
    from fasterrcnn.data.convert import FORMATS

    p = commands.add_parser(
        "convert",
        help="convert a data set between VOC, COCO and YOLO",
        description="Read a data set (VOC root, COCO instances JSON, or YOLO data.yaml or its folder; the format "
        "is detected) and write it in another format into DEST, a new or empty folder. Boxes are converted "
        "exactly (VOC's 1-based inclusive pixels, COCO's [x, y, w, h], YOLO's normalized centre and size); "
        "images are copied. VOC difficult objects and COCO crowd regions stay flagged between VOC and COCO "
        "and are left out of YOLO labels, which have no such flag.",
    )
    p.add_argument("source", metavar="SOURCE", help="VOC root, COCO instances JSON, or YOLO data.yaml (or the folder holding it)")
    p.add_argument("dest", metavar="DEST", help="the folder to write (new or empty)")
    p.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    p.add_argument(
        "--split",
        action="append",
        metavar="NAME[=NEW]",
        help="a source split to convert, optionally renamed (e.g. --split val2017=val: YOLO wants train and val); "
        "repeatable (default: VOC's and YOLO's train, val and test that exist, or the COCO JSON, named after "
        "the file: instances_val2017.json -> val2017)",
    )
    p.add_argument("--images", metavar="DIR", help="COCO source only: the folder of the JSON's images (default: found next to the JSON)")
    p.add_argument("--classes", metavar="A,B,C", help="VOC source only: the class names in label order (default: as 'train' infers them)")
    p.add_argument(
        "--on-bad-image",
        choices=("skip", "error"),
        default="skip",
        help="an image whose file or annotation is unusable: 'skip' it with a warning naming the file, or stop "
        "with an 'error' naming it (default: skip)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from fasterrcnn.cli.options import class_list
    from fasterrcnn.data.convert import convert

    summary = convert(
        args.source,
        args.dest,
        to=args.to,
        splits=args.split,
        images_dir=args.images,
        classes=class_list(args.classes),
        on_bad_image=args.on_bad_image,
    )
    splits = ", ".join(f"{split} {count}" for split, count in summary["splits"].items())
    print(f"wrote {args.to.upper()} set {args.dest}: {len(summary['classes'])} classes, images per split: {splits}; {summary['objects']} boxes")
    if summary["left_out"]:
        print(f"{summary['left_out']} difficult or crowd objects left out (YOLO labels have no flag for objects evaluation ignores)")
    if summary["skipped"]:
        print(f"{summary['skipped']} bad images skipped, not converted (named in the warnings above; --on-bad-image error stops at the first)")
    return 0
