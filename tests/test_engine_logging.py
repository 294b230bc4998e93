"""fasterrcnn.engine.logging: results.csv rows from metrics records, what an evaluation sends to TensorBoard,
and a training progress bar that stays readable in an 80-column terminal."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from fasterrcnn.engine.logging import MetricsLogger, pr_curve_arrays, read_metrics, results_csv, results_rows
from fasterrcnn.engine.report import EvaluationReport


def train(iteration, epoch, lr, loss, cls):
    return {"type": "train", "iteration": iteration, "epoch": epoch, "lr": lr, "loss": loss, "loss_classifier": cls, "time": 0.1}


RECORDS = [
    train(2, 0, 0.01, 4.0, 1.0),
    train(4, 0, 0.01, 2.0, 0.5),
    {"type": "skip", "iteration": 5, "epoch": 0, "losses": {"loss": None}, "consecutive": 1},
    train(5, 1, 0.02, 1.0, 0.25),  # the last record of a run: covers 1 iteration
    {"type": "eval", "iteration": 5, "mAP": 0.5, "metric": "voc", "per_class": {"a": 0.5}, "val_loss": 3.0, "val_loss_classifier": 0.75},
    train(8, 1, 0.002, 0.5, 0.125),
    {"type": "eval", "iteration": 8, "AP": 0.25, "AP50": 0.5, "AP75": None, "metric": "coco"},
    {"type": "eval", "iteration": 9, "mAP": 0.75},  # no train record since the last evaluation
]


def test_results_rows_average_the_train_records_since_the_last_evaluation():
    rows = results_rows(RECORDS)
    assert rows == [
        # weights 2, 2, 1: (4*2 + 2*2 + 1*1) / 5 and (1*2 + 0.5*2 + 0.25*1) / 5
        {"iteration": 5, "epoch": 1, "lr": 0.02, "loss": 13 / 5, "loss_classifier": 3.25 / 5, "val_loss": 3.0,
         "val_loss_classifier": 0.75, "mAP": 0.5},
        {"iteration": 8, "epoch": 1, "lr": 0.002, "loss": 0.5, "loss_classifier": 0.125, "AP": 0.25, "AP50": 0.5},
        {"iteration": 9, "epoch": 1, "lr": 0.002, "mAP": 0.75},
    ]  # fmt: skip
    assert results_rows([{"type": "eval", "iteration": 3, "mAP": 0.1}]) == [{"iteration": 3, "epoch": None, "lr": None, "mAP": 0.1}]
    assert results_rows(RECORDS[:4]) == []


def test_results_csv_text():
    text = results_csv(results_rows(RECORDS))
    assert text.splitlines() == [
        "iteration,epoch,lr,loss,loss_classifier,val_loss,val_loss_classifier,mAP,AP,AP50",
        "5,1,0.02,2.6,0.65,3,0.75,0.5,,",
        "8,1,0.002,0.5,0.125,,,,0.25,0.5",
        "9,1,0.002,,,,,0.75,,",
    ]
    assert results_csv([]) == "iteration\n"
    # an evaluation before the first train record: its row has no training loss, the columns keep their groups
    first = results_csv(results_rows([{"type": "eval", "iteration": 1, "mAP": 0.5, "val_loss": 2.0}, *RECORDS]))
    assert first.splitlines()[:2] == [
        "iteration,epoch,lr,loss,loss_classifier,val_loss,val_loss_classifier,mAP,AP,AP50",
        "1,,,,,2,,0.5,,",
    ]


def test_pr_curve_arrays_for_tensorboard():
    arrays = pr_curve_arrays([0.25, 0.5, 0.5, 1.0], [1.0, 1.0, 0.5, 0.8], instances=4)
    assert arrays["recall"].tolist() == [1.0, 0.5, 0.5, 0.25]  # lowest threshold (most detections) first
    assert arrays["precision"].tolist() == [0.8, 0.5, 1.0, 1.0]
    assert arrays["true_positive_counts"].tolist() == [4.0, 2.0, 2.0, 1.0]
    assert arrays["false_positive_counts"].tolist() == pytest.approx([1.0, 2.0, 0.0, 0.0])
    assert arrays["false_negative_counts"].tolist() == [0.0, 2.0, 2.0, 3.0]
    assert arrays["true_negative_counts"].tolist() == [0.0] * 4 and arrays["num_thresholds"] == 4
    many = pr_curve_arrays(np.linspace(0, 1, 1000), np.ones(1000), instances=10)
    assert many["num_thresholds"] == 101 and many["recall"][0] == 1.0 and many["recall"][-1] == 0.0


def test_evaluations_write_results_csv_pr_curves_and_samples_and_resume_drops_later_rows(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    samples = Image.new("RGB", (40, 20), (255, 0, 0))
    report = EvaluationReport(("a",), {}, np.zeros((2, 2), np.int64), [{"class": "a", "instances": 2}], samples)
    metrics = {"mAP": 0.5, "metric": "voc", "per_class": {"a": 0.5}, "pr_curves": {"a": ([0.5, 1.0], [1.0, 0.5])}}
    with MetricsLogger(tmp_path, max_iters=10, log_every=2, quiet=True) as logger:
        for iteration in range(1, 7):
            logger.log_step(iteration, 0, 0.01, {"loss": float(iteration)}, 0.1)
            if iteration % 3 == 0:
                logger.log_eval(iteration, {**metrics, "mAP": iteration / 10}, report)
    lines = (tmp_path / "results.csv").read_text().splitlines()
    # train records at 2, 4, 6 (means 1.5, 3.5, 5.5): row 3 has record 2's, row 6 the mean of records 4 and 6
    assert lines == ["iteration,epoch,lr,loss,mAP", "3,0,0.01,1.5,0.3", "6,0,0.01,4.5,0.6"]

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    assert events.Tags()["tensors"] == ["pr_curve/a"]
    curve = events.Tensors("pr_curve/a")
    assert [e.step for e in curve] == [3, 6]
    from tensorboard.util import tensor_util

    data = tensor_util.make_ndarray(curve[0].tensor_proto)  # rows: tp, fp, tn, fn, precision, recall
    assert data[:, 0].tolist() == [2.0, 2.0, 0.0, 0.0, 0.5, 1.0]
    assert [e.step for e in events.Images("eval/samples")] == [3, 6]
    assert (events.Images("eval/samples")[0].width, events.Images("eval/samples")[0].height) == (40, 20)

    # resumed at iteration 4: the row of iteration 6 goes, with its records
    with MetricsLogger(tmp_path, max_iters=10, start_iteration=4, quiet=True):
        pass
    assert (tmp_path / "results.csv").read_text().splitlines() == lines[:2]
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [2, 3, 4]

LOSSES = {"loss": 0.853, "loss_objectness": 0.101, "loss_rpn_box_reg": 0.05, "loss_classifier": 0.501, "loss_box_reg": 0.201}
ESSENTIAL = "| 1200/20000 [1:25:00<22:11:40, loss 0.853 lr 2.0e-02"
TERMS = " obj 0.101 rpn_box 0.050 cls 0.501 box 0.201"


class Terminal(io.StringIO):
    """A captured stderr that says it is a terminal (the progress bar is drawn only on one)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def bar(tmp_path, monkeypatch):
    """The bar of a logger 1200 of 20000 iterations into epoch 13, 1 h 25 min after it started."""
    monkeypatch.setattr(sys, "stderr", Terminal())
    logger = MetricsLogger(tmp_path, max_iters=20_000, log_every=1000)
    for iteration in range(1, 1201):
        logger.log_step(iteration, 13, 0.02, LOSSES, 0.6)
    logger._bar._time = lambda: logger._bar.start_t + 5100.0  # ETA: 18800 iterations at 1200 per 5100 s
    yield logger._bar
    logger.close()


def render(bar, columns: int | None) -> str:
    """The bar's line in a terminal ``columns`` wide (tqdm takes the width minus 1) or a file (None)."""
    bar.dynamic_ncols = lambda file: (None if columns is None else columns - 1, None)
    return str(bar)


def test_the_bar_fits_80_columns_with_the_epoch_the_loss_the_lr_and_the_eta(bar):
    line = render(bar, 80)
    assert line == "epoch 13   6%|6          " + ESSENTIAL + "]"  # the bar in ASCII: the file is not a terminal
    assert len(line) == 79


def test_a_wide_terminal_or_a_file_shows_the_loss_terms_too(bar):
    assert render(bar, 140) == "epoch 13   6%|#6                         " + ESSENTIAL + TERMS + "]"
    assert render(bar, None) == "epoch 13   6%|6         " + ESSENTIAL + TERMS + "]"  # tqdm's 10 cells
    short_of_room = render(bar, 122)  # the terms would leave the bar 9 cells: the bar takes the line
    assert short_of_room.startswith("epoch 13   6%|###1 ") and short_of_room.endswith(ESSENTIAL + "]")
    assert len(short_of_room) == 121


def test_the_terms_show_from_the_width_that_leaves_the_bar_10_cells(bar):
    in_a_file = render(bar, None)
    assert TERMS in render(bar, len(in_a_file) + 1)
    assert TERMS not in render(bar, len(in_a_file))


def test_a_new_run_length_moves_the_bar_total_and_the_eta(tmp_path, monkeypatch):
    """A time budget re-estimates the run's length: the bar counts to the new total."""
    monkeypatch.setattr(sys, "stderr", Terminal())
    with MetricsLogger(tmp_path, max_iters=20_000, log_every=1000) as logger:
        for iteration in range(1, 1201):
            logger.log_step(iteration, 13, 0.02, LOSSES, 0.6)
        logger._bar._time = lambda: logger._bar.start_t + 5100.0
        logger.set_max_iters(2400)
        assert logger.max_iters == 2400
        assert render(logger._bar, None).startswith("epoch 13  50%|#####     | 1200/2400 [1:25:00<1:25:00, loss 0.853")


def test_without_a_terminal_the_bar_is_plain_lines(tmp_path, monkeypatch, capsys):
    """Output to a file or a pipe (``make demo > log``): one plain line per train record, no escape codes."""
    with MetricsLogger(tmp_path, max_iters=4, log_every=2) as logger:
        for iteration in range(1, 5):
            logger.log_step(iteration, 0, 0.02, LOSSES, 0.5)
    out, err = capsys.readouterr()
    assert logger._bar is None and err == ""
    assert [line.split(" loss ")[0] for line in out.splitlines()] == ["iter 2/4 epoch 0", "iter 4/4 epoch 0"]
