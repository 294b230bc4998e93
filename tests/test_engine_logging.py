"""fasterrcnn.engine.logging: the training progress bar stays readable in an 80-column terminal."""

from __future__ import annotations

import io
import sys

import pytest

from fasterrcnn.engine.logging import MetricsLogger

LOSSES = {"loss": 0.853, "loss_objectness": 0.101, "loss_rpn_box_reg": 0.05, "loss_classifier": 0.501, "loss_box_reg": 0.201}
ESSENTIAL = "| 1200/20000 [1:25:00<22:11:40, loss 0.853 lr 2.0e-02"
TERMS = " obj 0.101 rpn_box 0.050 cls 0.501 box 0.201"


@pytest.fixture
def bar(tmp_path, monkeypatch):
    """The bar of a logger 1200 of 20000 iterations into epoch 13, 1 h 25 min after it started."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
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
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with MetricsLogger(tmp_path, max_iters=20_000, log_every=1000) as logger:
        for iteration in range(1, 1201):
            logger.log_step(iteration, 13, 0.02, LOSSES, 0.6)
        logger._bar._time = lambda: logger._bar.start_t + 5100.0
        logger.set_max_iters(2400)
        assert logger.max_iters == 2400
        assert render(logger._bar, None).startswith("epoch 13  50%|#####     | 1200/2400 [1:25:00<1:25:00, loss 0.853")
