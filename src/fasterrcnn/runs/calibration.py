"""``calibrate``: fit a score map (and on request a temperature) on held-out data and write a calibrated checkpoint.

    result = calibrate("runs/x/checkpoints/best.pt", "VOCdevkit/VOC2007", "runs/x/calibrated.pt", split="val")
    print(result.temperature, result.score_map, result.before["ece"], result.after["ece"])

``evaluation/calibration.py``: the score map (a, b) turns each detection's final score s into
``sigmoid(a logit(s) + b)`` (``ModelConfig.box_score_map``, Platt scaling of the score): a > 0 keeps the
detections and their order, so the mAP stays, while the scores come to mean precisions. On request
(``fit_temperature_too``, ``--temperature``) a temperature T is fitted first, which divides the box head's
class logits before the softmax (``ModelConfig.box_score_temperature``): it calibrates each detection's
class distribution (``probabilities``), but it also moves scores across ``box_score_thresh``, so the
detections and the mAP can change. The new checkpoint is the old one with both in its model config, so
``Detector``, ``eval``, ``predict``, ``serve`` and ``export`` (which bakes both into the graph) all use them.
Its weights are the same; it holds no training state (training does not resume from it). The input
checkpoint is never written over, and the data set must not be the one the model was trained on (the run's
``config.json`` names it).
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
    """The temperature and score map (a, b) written, ``{"ece", "mAP", "detections"}`` on the data before (without
    any earlier score map), with the fitted temperature only (``scaled``, None unless it was fitted) and after,
    and the file written."""

    temperature: float
    score_map: tuple[float, float]
    before: dict[str, Any]
    scaled: dict[str, Any] | None
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
    fit_temperature_too: bool = False,
) -> CalibrationResult:
    """Fit the score map (and with ``fit_temperature_too`` first the temperature) of ``weights`` on ``data``
    (``split``) and write the calibrated checkpoint ``output``.

    The fits keep the model's detections (every one above ``box_score_thresh``), without any earlier score map
    (the new one replaces it), and match them to the ground truth at IoU 0.5. The temperature minimises the
    cross-entropy between each detection's softmax score and its being right (``fit_temperature``); a second
    pass with it gives the detections on which the map is fitted. The score map minimises the same
    cross-entropy for ``sigmoid(a logit(s) + b)`` of the scores s (``fit_score_map``). The detection ECE and
    the mAP@0.5 (VOC) of the data are measured before, with the temperature only and after (the map applied
    to the last pass: the same detections).
    """
    import torch

    from fasterrcnn.data import build_dataset
    from fasterrcnn.data.bad_images import check_policy
    from fasterrcnn.device import resolve_device
    from fasterrcnn.engine.checkpoint import Checkpoint
    from fasterrcnn.engine.evaluator import evaluate_results, run_inference
    from fasterrcnn.evaluation import results_to_detections
    from fasterrcnn.evaluation.calibration import calibrated_scores, detection_outcomes, expected_calibration_error, fit_score_map, fit_temperature

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

    def summary(results: list[dict], scores, right) -> dict[str, Any]:
        metrics = evaluate_results(results, dataset, metric="voc")  # VOC AP reads ids, boxes and scores only
        return {"ece": expected_calibration_error(scores, right), "mAP": float(metrics["mAP"]), "detections": len(scores)}

    def measure(with_rows: bool) -> tuple[list[dict], dict, dict, Any, Any]:
        with model.roi_heads.keeping_probabilities(with_rows):
            results = run_inference(
                model, dataset, class_names=checkpoint.class_names, label_to_category_id=dataset.label_to_category_id,
                batch_size=batch_size, num_workers=num_workers, device=device, progress=not quiet, shard=False,
            )  # fmt: skip
        detections = results_to_detections(results, to_label)
        scores, right, where = detection_outcomes(detections, ground_truth)
        return results, detections, where, scores, right

    model.roi_heads.score_map = None  # the scores as the box head gives them: an earlier map is replaced
    results, detections, where, scores, right = measure(fit_temperature_too)
    before = summary(results, scores, right)
    temperature, scaled = model.roi_heads.temperature, None
    if fit_temperature_too:
        rows = [detections[image]["probabilities"][torch.as_tensor(index, dtype=torch.long)] for image, index in where.items() if len(index)]
        labels = [detections[image]["labels"][torch.as_tensor(index, dtype=torch.long)] for image, index in where.items() if len(index)]
        if rows:  # log-probabilities are the logits / T in use up to a shift per row: the fit multiplies it
            log_p = torch.cat(rows).double().clamp(min=1e-300).log()
            temperature *= fit_temperature(log_p, torch.cat(labels), torch.from_numpy(right))
        model.roi_heads.temperature = temperature
        results, _, _, scores, right = measure(False)
        scaled = summary(results, scores, right)
    score_map = fit_score_map(scores, right)
    mapped = calibrated_scores(torch.tensor([r["score"] for r in results], dtype=torch.float32), score_map).tolist()
    results = [{**r, "score": s} for r, s in zip(results, mapped)]  # the order of every score is kept: same detections
    after = summary(results, calibrated_scores(torch.from_numpy(scores).float(), score_map).double().numpy(), right)
    model_config = dataclasses.replace(checkpoint.model_config, box_score_temperature=temperature, box_score_map=score_map)
    dataclasses.replace(checkpoint, model_config=model_config, training={}).write(output)
    return CalibrationResult(temperature, score_map, before, scaled, after, output, len(dataset))
