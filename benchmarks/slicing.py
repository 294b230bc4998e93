"""Sliced inference and test-time augmentation, measured by the project's own COCO evaluation.

    python benchmarks/slicing.py --weights BIG.pt --data BIG_ROOT                  # the big-scene set
    python benchmarks/slicing.py --demo-weights DEMO.pt --demo-data DEMO_ROOT      # TTA on the demo's shapes

On ``--data`` (a VOC root, e.g. the big-scene set of ``data.write_big_scene_voc``), with one model, each
case is scored by ``engine.evaluator.evaluate_model`` (the code behind ``fasterrcnn eval``; COCO AP, AP50,
APs: the AP of objects under 32 x 32 px):

- full image: one pass, the image decoded reduced to the model's input as ``fasterrcnn eval`` does;
- sliced: ``--slice`` tiles (overlap 0.2) plus the full-image pass, merged by greedy non-maximum merging
  ("nmm") or by class-wise NMS ("nms"); tiles only (no full-image pass);
- sliced + TTA: the same with test-time augmentation, fused by weighted box fusion ("wbf") or box voting.

On ``--demo-data`` (the demo's synthetic shapes, e.g. its ``data`` folder) with ``--demo-weights``: no
TTA vs TTA (wbf, voting). Time per image: the wall-clock time of the evaluation's inference divided by
the images (CPU unless --device). Prints a Markdown table; never asserts anything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


class _Limited:
    """The first ``limit`` images of a data set, and their ground truth."""

    def __init__(self, dataset, limit: int):
        self.dataset, self.limit = dataset, limit

    def __len__(self):
        return self.limit

    def __getitem__(self, i):
        if i >= self.limit:
            raise IndexError(i)
        return self.dataset[i]

    def ground_truth(self):
        return self.dataset.ground_truth()[: self.limit]

    def __getattr__(self, name):
        return getattr(self.dataset, name)


def run_case(detector, data: str, split: str, options, limit: int | None) -> dict:
    """COCO AP, AP50, APs and seconds per image of ``detector`` on ``data`` under ``options``."""
    from fasterrcnn.data import build_dataset
    from fasterrcnn.engine.evaluator import evaluate_model

    transform = detector.model.transform
    sliced = options is not None and options.slice is not None
    reduce_to = None if sliced else (transform.min_size, transform.max_size)  # as 'fasterrcnn eval' decodes
    dataset = build_dataset(data, split=split, classes=list(detector.class_names), reduce_to=reduce_to)
    if limit is not None and limit < len(dataset):
        dataset = _Limited(dataset, limit)
    start = time.perf_counter()
    _, metrics = evaluate_model(
        detector.model, dataset, metric="coco", class_names=detector.class_names, device=detector.device, inference=options, shard=False,
    )  # fmt: skip
    seconds = (time.perf_counter() - start) / len(dataset)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"], "APs": metrics["APs"], "seconds": seconds}


def print_row(set_name: str, case: str, row: dict) -> None:
    aps = "-" if row["APs"] < 0 else f"{100 * row['APs']:.1f}"
    print(f"| {set_name} | {case} | {100 * row['AP']:.1f} | {100 * row['AP50']:.1f} | {aps} | {1000 * row['seconds']:.0f} |", flush=True)


def main() -> None:
    from fasterrcnn.detector import Detector
    from fasterrcnn.inference import InferenceOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="checkpoint for --data (e.g. trained with 'train --slice')")
    parser.add_argument("--data", help="VOC root of the big-scene set")
    parser.add_argument("--split", default="test")
    parser.add_argument("--slice", type=int, default=640)
    parser.add_argument("--cases", default="full,nmm,nms,tiles,tta,voting", help="comma-separated subset of the big-scene cases")
    parser.add_argument("--demo-weights", help="checkpoint for --demo-data (the demo's model)")
    parser.add_argument("--demo-data", help="VOC root of the demo's shapes")
    parser.add_argument("--limit", type=int, help="evaluate the first N images of each set only")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| set | case | AP | AP50 | APs | ms / image |\n|---|---|---|---|---|---|", flush=True)
    if args.weights and args.data:
        detector = Detector.from_checkpoint(args.weights, device=args.device)
        size = args.slice
        cases = {
            "full": ("full image", None),
            "nmm": (f"sliced {size} (nmm)", InferenceOptions(slice=size)),
            "nms": (f"sliced {size} (nms)", InferenceOptions(slice=size, merge="nms")),
            "tiles": (f"sliced {size}, tiles only (nmm)", InferenceOptions(slice=size, full_image=False)),
            "tta": (f"sliced {size} + TTA (wbf)", InferenceOptions(slice=size, tta=True)),
            "voting": (f"sliced {size} + TTA (voting)", InferenceOptions(slice=size, tta=True, fusion="voting")),
        }
        for key in args.cases.split(","):
            case, options = cases[key]
            print_row(Path(args.data).name, case, run_case(detector, args.data, args.split, options, args.limit))
    if args.demo_weights and args.demo_data:
        detector = Detector.from_checkpoint(args.demo_weights, device=args.device)
        for case, options in (("no TTA", None), ("TTA (wbf)", InferenceOptions(tta=True)), ("TTA (voting)", InferenceOptions(tta=True, fusion="voting"))):
            print_row(Path(args.demo_data).name, case, run_case(detector, args.demo_data, args.split, options, args.limit))


if __name__ == "__main__":
    main()
