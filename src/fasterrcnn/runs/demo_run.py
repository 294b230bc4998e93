"""``demo``: train the tiny preset on synthetic shapes, evaluate it and draw its detections (``fasterrcnn demo``).

The demo must end in <= 10 minutes on 2 CPU cores with test mAP@0.5 >= 0.90. Its cost is about
``DEMO_TRAIN["max_iters"]`` x (seconds per iteration of the tiny preset at its batch size), plus
``DEMO_EVALUATIONS`` validations on the ``DEMO_NUM_VAL`` held-out validation images (their mAP and losses
make the rows of ``train/results.csv``) and one pass over the test images; the model's hyper-parameters
are the tiny preset's (config.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fasterrcnn.errors import ConfigError

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
DEMO_PARTS = ("data", "train", "eval", "predictions")  # what the demo writes in its folder


@dataclass(frozen=True)
class DemoResult:
    """The demo's test mAP@0.5 and where it wrote the data, the run, the evaluation and the pictures."""

    map50: float
    data: Path
    train: Path
    eval: Path
    predictions: Path
    seconds: float


def demo(output: str | Path = "demo_output", *, max_iters: int | None = None, quiet: bool = False) -> DemoResult:
    """Run the demo in ``output``: new, empty, or an earlier demo's folder (whose parts it replaces).

    ``max_iters`` shortens training (the preset's LR step and warm-up follow it, as in any run).
    """
    from fasterrcnn.data import write_synthetic_voc
    from fasterrcnn.runs.inference import evaluate
    from fasterrcnn.runs.prediction import predict
    from fasterrcnn.runs.training import train

    output = Path(output)
    foreign = sorted(p.name for p in output.iterdir() if p.name not in DEMO_PARTS) if output.is_dir() else []
    if foreign:
        raise ConfigError(f"{output} holds files that are not the demo's ({', '.join(foreign[:3])}); choose another folder")
    schedule = dict(DEMO_TRAIN)
    if max_iters is not None:
        schedule["max_iters"] = max_iters
    start = time.perf_counter()
    data, run_dir, eval_dir, pictures_dir = (output / part for part in DEMO_PARTS)

    schedule["eval_every"] = -(-schedule["max_iters"] // DEMO_EVALUATIONS)  # ceil: the last validation is the final one
    print(f"[1/4] writing {DEMO_NUM_TRAIN} train + {DEMO_NUM_VAL} val + {DEMO_NUM_TEST} test synthetic images to {data}", flush=True)
    root = write_synthetic_voc(
        data, num_train=DEMO_NUM_TRAIN, num_test=DEMO_NUM_TEST, num_val=DEMO_NUM_VAL, image_size=DEMO_IMAGE_SIZE, seed=DEMO_SEED
    )  # fmt: skip

    print(f"[2/4] training the {DEMO_PRESET} preset on the CPU in {run_dir}, validating on the val split", flush=True)
    result = train(
        root, run_dir, preset=DEMO_PRESET, split="train", val_split="val", metric="voc", device="cpu", seed=DEMO_SEED,
        overrides={f"train.{key}": value for key, value in schedule.items()}, overwrite=True, progress=not quiet,
    )  # fmt: skip

    print(f"[3/4] evaluating on the {DEMO_NUM_TEST} test images in {eval_dir}", flush=True)
    evaluation = evaluate(root, weights=result.last, split="test", metric="voc", output=eval_dir, overwrite=True, device="cpu", quiet=quiet)
    print(evaluation.report.table(), flush=True)

    print(f"[4/4] drawing detections on {DEMO_NUM_PICTURES} test images in {pictures_dir}", flush=True)
    test_ids = (root / "ImageSets" / "Main" / "test.txt").read_text().split()[:DEMO_NUM_PICTURES]
    images = [root / "JPEGImages" / f"{image_id}.jpg" for image_id in test_ids]
    predict(result.last, images, output=pictures_dir, overwrite=True, score_threshold=DEMO_SCORE_THRESHOLD, device="cpu", quiet=True)
    return DemoResult(evaluation.metrics["mAP"], root, run_dir, eval_dir, pictures_dir, time.perf_counter() - start)
