"""StopRequest: handlers only inside the ``with``, previous ones restored, SIG_IGN respected, a second signal stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from fasterrcnn.engine.interrupt import StopRequest, TrainingInterrupted


def test_first_signal_sets_the_flag_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}
    if before[signal.SIGINT] is signal.SIG_IGN:  # e.g. a background job of a script
        signal.signal(signal.SIGINT, signal.default_int_handler)
        before[signal.SIGINT] = signal.default_int_handler
    try:
        with StopRequest() as stop:
            assert stop.signum is None and signal.getsignal(signal.SIGCHLD) == before[signal.SIGCHLD]
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM  # Python runs the handler before the next bytecode
            # from now on a child's exit (a data-loading worker ended by the same signal) raises nothing
            assert signal.getsignal(signal.SIGCHLD).__name__ == "_expected_child_exit"
            with pytest.raises(KeyboardInterrupt, match="SIGINT received twice"):
                os.kill(os.getpid(), signal.SIGINT)
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def test_an_ignored_signal_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with StopRequest() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum is None
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_training_interrupted_says_where_and_exits_128_plus_the_signal(tmp_path):
    error = TrainingInterrupted(signal.SIGTERM, 37, tmp_path / "last.pt")
    assert isinstance(error, KeyboardInterrupt) and error.exit_code == 143
    assert str(error) == f"SIGTERM received: stopped after iteration 37, checkpoint saved to {tmp_path / 'last.pt'}"
    assert TrainingInterrupted(signal.SIGINT, 1, "x").exit_code == 130
