"""``calibrate``: fit the box head's temperature on held-out data and write a calibrated checkpoint.

    result = calibrate("runs/x/checkpoints/best.pt", "VOCdevkit/VOC2007", "runs/x/calibrated.pt", split="val")
    print(result.temperature, result.before["ece"], result.after["ece"])

The temperature T divides the box head's class logits before the softmax (``ModelConfig.box_score_temperature``,
``evaluation/calibration.py``): the new checkpoint is the old one with T in its model config, so ``Detector``,
``eval``, ``predict``, ``serve`` and ``export`` (which bakes T into the graph) all use it. Its weights are the
same; it holds no training state (training does not resume from it). The input checkpoint is never written
over, and the data set must not be the one the model was trained on (the run's ``config.json`` names it).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fasterrcnn.errors import ConfigError

__all__ = ["CalibrationResult", "calibrate"]


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted temperature, ``{"ece", "mAP", "detections"}`` on the data before and after, and the file written."""

    temperature: float
    before: dict[str, Any]
    after: dict[str, Any]
    output: Path
    num_images: int


def _training_data(weights: Path) -> dict | None:
    """The training data a run's ``config.json`` names (``RUN/checkpoints/X.pt`` -> ``RUN/config.json``), or None."""
    try:
        record = json.loads((weights.resolve().parent.parent / "config.json").read_text(encoding="utf-8"))
        return record.get("data", {}).get("train")
    except (OSError, ValueError, AttributeError):
        return None


def _same_data(a: dict, b: dict) -> bool:
    """Two ``dataset.describe()`` dicts name the same images: their paths resolve alike and the rest is equal."""
    def key(d: dict) -> dict:
        return {k: (str(Path(v).resolve()) if k == "path" and v else v) for k, v in d.items()}

    return key(a) == key(b)


def calibrate(
    weights: str | Path,
    data: str | Path,
    output: str | Path,
    *,
    split: str = "val",
    images: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    batch_size: int = 1,
    num_workers: int = 0,
    on_bad_image: str = "skip",
    quiet: bool = False,
) -> CalibrationResult:
    """Fit the temperature of ``weights`` on ``data`` (``split``) and write the calibrated checkpoint ``output``.

    The fit keeps the model's detections (every one above ``box_score_thresh``), matches them to the ground truth
    at IoU 0.5 and minimises the cross-entropy between each score and its being right (``fit_temperature``);
    the detection ECE and the mAP@0.5 (VOC) of the data are measured before and after (a second pass with T).
    """
    import torch

    from fasterrcnn.data import build_dataset
    from fasterrcnn.data.bad_images import check_policy
    from fasterrcnn.device import resolve_device
    from fasterrcnn.engine.checkpoint import Checkpoint
    from fasterrcnn.engine.evaluator import evaluate_results, run_inference
    from fasterrcnn.evaluation import results_to_detections
    from fasterrcnn.evaluation.calibration import detection_outcomes, expected_calibration_error, fit_temperature

    check_policy(on_bad_image)
    weights, output = Path(weights), Path(output)
    if output.resolve() == weights.resolve():
        raise ConfigError("--output must differ from --weights (the checkpoint calibrated is kept)")
    if output.exists() and not overwrite:
        raise ConfigError(f"{output} exists; pass --overwrite to replace it or choose another --output")
    checkpoint = Checkpoint.read(weights)
    model = checkpoint.build_model()
    transform = model.transform
    dataset = build_dataset(
        data, split=split, images_dir=images, classes=list(checkpoint.class_names), on_bad_image=on_bad_image,
        reduce_to=(transform.min_size, transform.max_size),
    )  # fmt: skip
    trained_on = _training_data(weights)
    if trained_on is not None and _same_data(trained_on, dataset.describe()):
        raise ConfigError(f"{data} ({split}) is the data {weights} was trained on; calibrate on held-out data (e.g. --split val)")
    device = resolve_device(device)
    model.to(device)
    to_label = None if dataset.label_to_category_id is None else {c: label for label, c in dataset.label_to_category_id.items()}
    ground_truth = dataset.ground_truth()

    def measure(with_rows: bool) -> tuple[dict[str, Any], Any, Any]:
        with model.roi_heads.keeping_probabilities(with_rows):
            results = run_inference(
                model, dataset, class_names=checkpoint.class_names, label_to_category_id=dataset.label_to_category_id,
                batch_size=batch_size, num_workers=num_workers, device=device, progress=not quiet, shard=False,
            )  # fmt: skip
        metrics = evaluate_results(results, dataset, metric="voc")  # VOC AP reads ids, boxes and scores only
        detections = results_to_detections(results, to_label)
        scores, right, where = detection_outcomes(detections, ground_truth)
        summary = {"ece": expected_calibration_error(scores, right), "mAP": float(metrics["mAP"]), "detections": len(scores)}
        return summary, (detections, where), right

    before, (detections, where), right = measure(True)
    rows = [detections[image]["probabilities"][torch.as_tensor(index, dtype=torch.long)] for image, index in where.items() if len(index)]
    labels = [detections[image]["labels"][torch.as_tensor(index, dtype=torch.long)] for image, index in where.items() if len(index)]
    start = model.roi_heads.temperature
    if rows:  # log-probabilities are the logits / start up to a shift per row: T multiplies the one in use
        log_p = torch.cat(rows).double().clamp(min=1e-300).log()
        temperature = start * fit_temperature(log_p, torch.cat(labels), torch.from_numpy(right))
    else:
        temperature = start
    model.roi_heads.temperature = temperature
    after, _, _ = measure(False)
    model_config = dataclasses.replace(checkpoint.model_config, box_score_temperature=temperature)
    dataclasses.replace(checkpoint, model_config=model_config, training={}).write(output)
    return CalibrationResult(temperature, before, after, output, len(dataset))
