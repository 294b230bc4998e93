"""Stopping training cleanly on SIGINT (Ctrl-C), SIGTERM (``kill``, a scheduler's time limit) or SIGHUP (the
terminal closed, an ssh session dropped).

While ``Trainer.train`` runs its loop, ``StopRequest`` replaces the handlers of these signals (in
the main thread only; a signal whose handler is ``SIG_IGN`` -- e.g. SIGINT of a background job of
a script -- stays ignored) and restores the previous handlers afterwards. The first signal only
sets ``signum``; the trainer finishes the current iteration, writes ``checkpoints/last.pt``
(atomically, like every checkpoint) and raises ``TrainingInterrupted``. ``fasterrcnn train`` turns
that into one line saying where the checkpoint is and how to resume, and exit code ``128 + signal
number``: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP, the shell convention for "ended by this signal", so
that scripts and schedulers see that the run did not finish. A second signal raises
``KeyboardInterrupt`` at once (a checkpoint being written is then abandoned and the previous one
stays whole).

A signal sent to the whole process group (``kill -- -PGID``, systemd, Slurm) also ends the
data-loading workers (they ignore only SIGINT). PyTorch's SIGCHLD handler would then raise
"DataLoader worker ... killed" anywhere in the iteration being finished, so after the first signal
``StopRequest`` takes SIGCHLD over (until it exits): the workers' end is expected. If the loop was
waiting for a batch from them, the trainer stops before that iteration instead. Before leaving the
loop the trainer ends the workers itself (``shutdown_workers`` of the loader): a worker that ended
later would be reported as a crash by PyTorch's handler, restored by then.

Nothing is printed from the handler itself (a handler can run in the middle of a ``print``).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

__all__ = ["StopRequest", "TrainingInterrupted"]

# SIGHUP: the terminal was closed (or an ssh session dropped); ends the run as SIGTERM does (exit code 129)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, *((signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()))


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after ``iteration`` iterations; their state is in ``checkpoint``."""

    def __init__(self, signum: int, iteration: int, checkpoint: str | Path):
        self.signum = int(signum)
        self.iteration = int(iteration)
        self.checkpoint = Path(checkpoint)
        super().__init__(
            f"{signal.Signals(self.signum).name} received: stopped after iteration {self.iteration}, "
            f"checkpoint saved to {self.checkpoint}"
        )

    @property
    def exit_code(self) -> int:
        """``128 + signal number`` (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP)."""
        return 128 + self.signum


class StopRequest:
    """``with StopRequest() as stop:`` -- ``stop.signum`` is the first SIGINT / SIGTERM / SIGHUP received, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN:
                    continue
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice: stopping now")
        self.signum = signum
        if hasattr(signal, "SIGCHLD"):  # not on Windows
            self._previous.setdefault(signal.SIGCHLD, signal.getsignal(signal.SIGCHLD))
            signal.signal(signal.SIGCHLD, _expected_child_exit)


def _expected_child_exit(signum, frame) -> None:
    """SIGCHLD after a stop request: a data-loading worker ended by the same signal; nothing to raise."""
