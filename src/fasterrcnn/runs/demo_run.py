"""``demo``: train the tiny preset on synthetic shapes, evaluate it and draw its detections (``fasterrcnn demo``).

The demo must end in <= 10 minutes on 2 CPU cores with test mAP@0.5 >= 0.90. Its cost is about
``DEMO_TRAIN["max_iters"]`` x (seconds per iteration of the tiny preset at its batch size), plus
``DEMO_EVALUATIONS`` validations on the ``DEMO_NUM_VAL`` held-out validation images (their mAP and losses
make the rows of ``train/results.csv``), one pass over the test images, and the benchmark of the inference
paths (``runs.benchmark``) on the validation images, one pass per path that can run here (the eager ones
only, without the ``deploy`` extra); the model's hyper-parameters are the tiny preset's (config/presets.py).

The demo writes only into a new or empty folder, or into an earlier demo's: one holding ``DEMO_MARKER``,
the file the demo writes there first, and nothing else than what the demo writes (``DEMO_PARTS``: the
synthetic set in ``data/`` by its layout, the run in ``train/`` by ``runs.folder.RUN_LAYOUT``; the
evaluation, the pictures and the benchmark replace only their own files). Entry names alone never make a
folder the demo's: a user's VOC set in ``DIR/data`` is refused.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.paths import FILE, owned_entries
from fasterrcnn.runs.benchmark import PATHS

__all__ = ["DEMO_PARTS", "DemoResult", "demo"]

DEMO_PRESET = "tiny"
DEMO_SEED = 0
DEMO_NUM_TRAIN = 400  # synthetic training images
DEMO_NUM_TEST = 100  # held-out test images (VOC mAP@0.5 is measured on them)
DEMO_NUM_VAL = 50  # held-out validation images, evaluated during training (not the test images)
DEMO_EVALUATIONS = 4  # validations during training, evenly spaced, the last one at the end
DEMO_IMAGE_SIZE = (256, 256)  # (height, width) of the synthetic images
# TrainConfig overrides; the preset's warm-up and LR step follow max_iters (its step 900 of 1200 -> 1500 of 2000)
DEMO_TRAIN = {"max_iters": 2000, "checkpoint_every": 500, "log_every": 20}
DEMO_NUM_PICTURES = 8  # test images drawn with their detections
DEMO_SCORE_THRESHOLD = 0.5  # detections drawn in the pictures
DEMO_BENCHMARK_PATHS = PATHS  # the inference paths compared at the end (on the val split)
DEMO_PARTS = ("data", "train", "eval", "predictions", "benchmark.csv")  # what the demo writes in its folder
DEMO_MARKER = ".fasterrcnn-demo"  # written first: what makes a folder an earlier demo's output
# the synthetic VOC set of data.synthetic.write_synthetic_voc
DEMO_DATA_LAYOUT = {
    "Annotations": {r"\d{6}\.xml": FILE},
    "JPEGImages": {r"\d{6}\.jpg": FILE},
    "ImageSets": {"Main": {r"(train|val|test|trainval)\.txt": FILE}},
}


@dataclass(frozen=True)
class DemoResult:
    """The demo's test mAP@0.5, where it wrote the data, the run, the evaluation, the pictures and the
    benchmark's CSV, and the benchmark's table."""

    map50: float
    data: Path
    train: Path
    eval: Path
    predictions: Path
    benchmark: Path
    benchmark_table: str
    seconds: float


def demo(output: str | Path = "demo_output", *, max_iters: int | None = None, quiet: bool = False) -> DemoResult:
    """Run the demo in ``output``: new, empty, or an earlier demo's folder (whose parts it replaces).

    ``max_iters`` shortens training (the preset's LR step and warm-up follow it, as in any run).
    """
    from fasterrcnn.data import write_synthetic_voc
    from fasterrcnn.runs.benchmark import benchmark, benchmark_table
    from fasterrcnn.runs.inference import evaluate
    from fasterrcnn.runs.prediction import predict
    from fasterrcnn.io import atomic_write_text
    from fasterrcnn.runs.training import TrainingData, ValidationData, train

    output = Path(output)
    _check_folder(output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / DEMO_MARKER, "written by 'fasterrcnn demo': the next demo in this folder replaces what it wrote\n")
    schedule = dict(DEMO_TRAIN)
    if max_iters is not None:
        schedule["max_iters"] = max_iters
    start = time.perf_counter()
    data, run_dir, eval_dir, pictures_dir, benchmark_csv = (output / part for part in DEMO_PARTS)

    schedule["eval_every"] = -(-schedule["max_iters"] // DEMO_EVALUATIONS)  # ceil: the last validation is the final one
    print(f"[1/5] writing {DEMO_NUM_TRAIN} train + {DEMO_NUM_VAL} val + {DEMO_NUM_TEST} test synthetic images to {data}", flush=True)
    root = write_synthetic_voc(
        data, num_train=DEMO_NUM_TRAIN, num_test=DEMO_NUM_TEST, num_val=DEMO_NUM_VAL, image_size=DEMO_IMAGE_SIZE, seed=DEMO_SEED
    )  # fmt: skip

    print(f"[2/5] training the {DEMO_PRESET} preset on the CPU in {run_dir}, validating on the val split", flush=True)
    result = train(
        TrainingData(root, split="train"), run_dir, val=ValidationData(split="val", metric="voc"), preset=DEMO_PRESET,
        device="cpu", seed=DEMO_SEED, overrides={"train": schedule}, overwrite=True, progress=not quiet,
    )  # fmt: skip

    print(f"[3/5] evaluating on the {DEMO_NUM_TEST} test images in {eval_dir}", flush=True)
    evaluation = evaluate(root, weights=result.last, split="test", metric="voc", output=eval_dir, overwrite=True, device="cpu", quiet=quiet)
    print(evaluation.report.table(), flush=True)

    print(f"[4/5] drawing detections on {DEMO_NUM_PICTURES} test images in {pictures_dir}", flush=True)
    test_ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[:DEMO_NUM_PICTURES]
    images = [root / "JPEGImages" / f"{image_id}.jpg" for image_id in test_ids]
    predict(result.last, images, output=pictures_dir, overwrite=True, score_threshold=DEMO_SCORE_THRESHOLD, device="cpu", quiet=True)

    print(f"[5/5] benchmarking the inference paths on the {DEMO_NUM_VAL} validation images in {benchmark_csv}", flush=True)
    rows = benchmark(result.last, root, split="val", metric="voc", output=benchmark_csv, overwrite=True, paths=DEMO_BENCHMARK_PATHS, quiet=quiet)
    table = benchmark_table(rows)
    seconds = time.perf_counter() - start
    return DemoResult(evaluation.metrics["mAP"], root, run_dir, eval_dir, pictures_dir, benchmark_csv, table, seconds)


def _check_folder(output: Path) -> None:
    """Refuse ``output`` unless it is new, empty, or an earlier demo's holding only what the demo writes."""
    from fasterrcnn.runs.folder import RunFolder

    if not output.is_dir():
        if os.path.lexists(output):
            raise DataError(output, "is a file, not a folder for the demo")
        return
    names = sorted(p.name for p in output.iterdir())
    if not names:
        return
    marker = output / DEMO_MARKER
    if not marker.is_file() or marker.is_symlink():
        raise ConfigError(
            f"{output} is not empty and not an earlier demo's folder (no {DEMO_MARKER} in it); the demo writes into a new "
            "or empty folder or its own: choose another --output"
        )
    foreign = [name for name in names if name not in (*DEMO_PARTS, DEMO_MARKER)]
    foreign += [
        name for name in DEMO_PARTS
        if (output / name).is_symlink() or (os.path.lexists(output / name) and (output / name).is_dir() == name.endswith(".csv"))
    ]  # a link, or a folder where the demo writes a file (benchmark.csv), or the opposite
    foreign += [f"data/{name}" for name in owned_entries(output / "data", DEMO_DATA_LAYOUT)[1]] if not foreign else []
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise ConfigError(f"{output} holds files the demo did not write ({shown}); move them out or choose another --output")
    RunFolder(output / "train").prepare(resume=False, overwrite=True)  # the earlier run: only a run's files
