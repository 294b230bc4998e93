"""Detection calibration: outcomes, D-ECE on hand-computed bins, temperature fitting, netcal agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fasterrcnn.evaluation.calibration import (
    calibrated_scores,
    detection_outcomes,
    expected_calibration_error,
    fit_score_map,
    fit_temperature,
    reliability_bins,
)
from fasterrcnn.evaluation.voc import evaluate_voc


def test_ece_of_hand_computed_bins():
    scores, right = np.array([0.95, 0.95, 0.15, 0.15]), np.array([True, False, False, False])
    assert expected_calibration_error(scores, right) == pytest.approx(0.5 * 0.45 + 0.5 * 0.15)
    rows = reliability_bins(scores, right)
    assert [r["count"] for r in rows] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert rows[9]["precision"] == 0.5 and rows[9]["score"] == pytest.approx(0.95) and math.isnan(rows[0]["score"])
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([True, False])) == 0.0  # 1.0 falls in the last bin
    assert math.isnan(expected_calibration_error(np.zeros(0), np.zeros(0, bool)))


def test_outcomes_match_at_iou_half_by_score_and_skip_difficult():
    truth = [{"image_id": "a", "boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 30, 30]]), "labels": torch.tensor([1, 1]), "difficult": torch.tensor([False, True])}]
    found = {"a": {"boxes": torch.tensor([[0.0, 0, 10, 9], [0.0, 0, 10, 10], [0.0, 0, 10, 10], [21.0, 21, 29, 29]]),
                   "labels": torch.tensor([1, 1, 2, 1]), "scores": torch.tensor([0.6, 0.9, 0.8, 0.7])}}  # fmt: skip
    scores, right, where = detection_outcomes(found, truth)
    # by score: 0.9 takes the box, 0.8 is another class, 0.6 a duplicate; 0.7 lies on the difficult box: left out
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.6]) and right.tolist() == [True, False, False]
    assert where["a"].tolist() == [1, 2, 0]


def test_fit_temperature_undoes_logits_scaled_by_five():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 4, generator=g) * 1.5  # calibrated by construction
    labels = logits[:, 1:].argmax(1) + 1
    p = torch.softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    right = torch.rand(4000, generator=g) < p
    assert fit_temperature(5 * logits, labels, right) == pytest.approx(5.0, rel=0.1)
    assert fit_temperature(logits, labels, right) == pytest.approx(1.0, rel=0.1)


def test_ece_agrees_with_netcal():
    netcal = pytest.importorskip("netcal.metrics")
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.05, 1.0, 500)
    right = rng.random(500) < scores**2
    theirs = netcal.ECE(bins=10, detection=True).measure(scores, right.astype(np.int64))
    assert expected_calibration_error(scores, right) == pytest.approx(float(theirs), abs=1e-9)


def _over_confident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores sigmoid(2 logit(p) + 1) of detections right with probability p: over-confident, worst in the middle."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    scores = 1 / (1 + np.exp(-(2 * np.log(p / (1 - p)) + 1)))
    return scores.astype(np.float32).astype(np.float64), rng.random(n) < p


def test_fit_score_map_halves_the_ece_of_over_confident_scores_on_held_out_ones():
    fit_scores, fit_right = _over_confident(3000, 0)
    scores, right = _over_confident(3000, 1)
    a, b = fit_score_map(fit_scores, fit_right)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-0.5, abs=0.1)  # the inverse of the distortion
    mapped = calibrated_scores(torch.from_numpy(scores).float(), (a, b)).double().numpy()
    before = expected_calibration_error(scores, right)
    assert before > 0.1 and expected_calibration_error(mapped, right) <= before / 2
    assert fit_score_map(np.array([0.9, 0.8]), np.array([True, True]))[0] > 0  # finite and increasing when all are right
    assert fit_score_map(np.zeros(0), np.zeros(0, bool)) == (1.0, 0.0)


def test_calibrated_scores_keep_the_order_and_the_map():
    g = torch.Generator().manual_seed(0)
    truth = [{"image_id": i, "boxes": torch.tensor([[0.0, 0, 10, 10], [20.0, 20, 40, 40]]), "labels": torch.tensor([1, 2])} for i in range(20)]
    results = [
        {"image_id": i, "category_id": int(torch.randint(1, 3, (), generator=g)), "score": float(torch.rand((), generator=g) * 0.95 + 0.05),
         "bbox": [float(x) for x in torch.tensor([0.0, 0, 10, 10]) + torch.randn(4, generator=g) * 3]}
        for i in range(20) for _ in range(5)
    ]  # fmt: skip
    scores = torch.tensor([r["score"] for r in results])
    mapped = calibrated_scores(scores, (0.4, -0.7))
    assert torch.equal(torch.argsort(scores, stable=True), torch.argsort(mapped, stable=True)) and not torch.allclose(scores, mapped)
    remapped = [{**r, "score": float(s)} for r, s in zip(results, mapped)]
    before, after = (evaluate_voc(x, truth, ["a", "b"])["per_class"] for x in (results, remapped))
    assert before == after and 0 < before["a"] < 1
    assert calibrated_scores(torch.tensor([1.0]), (2.0, -1.0)).item() == 1.0  # logit(1) = inf: no NaN
