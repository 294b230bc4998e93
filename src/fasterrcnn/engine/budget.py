"""Training for a wall-clock budget (``config.time`` minutes): how many iterations fit, and where the schedule goes.

``TimeBudget`` is the ``Trainer``'s time budget: the run ends when the budget is spent, counted from the first
iteration of the run (a resumed run continues the time recorded in its checkpoint), periodic validation
and checkpoint writes included, the final evaluation not. After the first iteration of each session (its
start-up included), after 4, 8, 16, ... (``ESTIMATE_AFTER``) iterations measured from the second one, and
whenever the current target is reached, the target ``max_iters`` becomes the iterations that fit in the time
left at the speed of the recent half of the iterations measured, and the warm-up and LR steps keep their
fractions of the configured length on it (``schedule.keep_reached``: a step already taken stays). An LR step
not yet taken fires when its fraction of the configured length is spent of the budget (``schedule.follow_time``),
checked after every iteration: a machine that speeds up or slows down after an estimate moves it (a budget
grown on resume too). A cosine schedule ends at the estimated length. At the deadline the loop stops after
the current iteration and the run ends as at ``max_iters``.

Data-parallel processes all read rank 0's clock (``agreed_clock``), so they make the same estimates and
stop together. The state (``state_dict``) is the checkpoint's ``training["time"]``: ``{"budget": seconds,
"elapsed": seconds spent, "max_iters": the current target, "fixed": the schedule fields set by the user}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

from fasterrcnn.config import TrainConfig
from fasterrcnn.engine.schedule import WarmupStepLR, describe_schedule, follow_time, free_fields, iterations, keep_reached, scale_schedule

__all__ = ["ESTIMATE_AFTER", "TimeBudget", "agreed_clock"]

# The iterations that fit are re-estimated after 4, 8, 16, ... iterations measured.
ESTIMATE_AFTER = 4


def agreed_clock(clock: Callable[[], float], device: torch.device) -> Callable[[], float]:
    """``clock`` as rank 0 reads it, on every process of a data-parallel run (``clock`` itself in one process):
    every reading is a collective call, made by all processes at the same point."""
    from fasterrcnn.engine import distributed

    if distributed.get_world_size() == 1:
        return clock
    is_main = distributed.get_rank() == 0

    def read() -> float:
        mine = torch.tensor([clock() if is_main else 0.0], dtype=torch.float64, device=device)
        return float(distributed.all_reduce_sum(mine))

    return read


class TimeBudget:
    """The time budget of a run: its clock, its estimate of the run's length (``max_iters``) and the schedule on it.

    Args:
        config: the training config; ``time`` (minutes) is the budget, ``warmup_iters`` and ``lr_steps`` the schedule
            written for ``length`` iterations, whose fractions are kept on every estimate.
        length: the configured run length (iterations), the first target before the speed is measured.
        scheduler: the run's scheduler, whose warm-up and LR steps (and cosine end) are moved to each estimate.
        fixed: the ``SCHEDULE_FIELDS`` set by the user, never moved.
        lr: the optimizer's base learning rate (for the lines logged).
        clock: seconds from an arbitrary origin, the same reading on every process (``agreed_clock``).

    The trainer calls ``start`` when its loop starts, ``track`` after every iteration, and runs until ``max_iters``.
    """

    def __init__(
        self,
        config: TrainConfig,
        length: int,
        scheduler: WarmupStepLR,
        *,
        fixed: Collection[str],
        lr: float,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.length = length
        self.scheduler = scheduler
        self.fixed = sorted(set(fixed))
        self.lr = lr
        self.clock = clock
        self.seconds = config.time * 60.0
        self.elapsed = 0.0  # seconds of the budget spent (before this session too)
        self.max_iters = length  # the current target
        self.before: float | None = None  # the resumed checkpoint's budget, seconds
        self._session: tuple[int, float, float] | None = None  # iteration, clock, elapsed at this session's start
        self._timing: list[float] = []  # the clock after each iteration measured, from the session's start

    # -- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's ``training["time"]``."""
        return {"budget": self.seconds, "elapsed": self.elapsed, "max_iters": self.max_iters, "fixed": list(self.fixed)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a checkpoint's budget (its numbers checked by the caller): the time spent counts, its target
        stays until the next estimate, its fixed fields stay fixed. This budget (``config.time``) is kept: one
        longer than ``state``'s extends the run."""
        self.elapsed = float(state["elapsed"])
        self.before = float(state["budget"])
        self.fixed = sorted({*self.fixed, *state.get("fixed", ())})
        self.max_iters = int(state["max_iters"])

    def describe(self) -> str:
        """The run's length in words, e.g. ``time budget 10 min, 1200 iterations until the speed is measured``."""
        spent = f", {self.elapsed / 60:.3g} min spent" if self.elapsed else ""
        return f"time budget {self.seconds / 60:g} min{spent}, {iterations(self.max_iters)} until the speed is measured"

    # -- the loop ------------------------------------------------------------------------------------
    def start(self, done: int) -> None:
        """Start this session's clock at iteration ``done``; a budget already spent ends the run where it is."""
        self._session = (done, self.clock(), self.elapsed)
        self._timing = [self._session[1]]
        if self.elapsed >= self.seconds:
            self.max_iters = done
            return
        self.scheduler.place(self.scheduler.warmup_iters, self._follow_time(self.scheduler.lr_steps, done))  # a budget grown on resume
        if self.max_iters <= done and (self.before is None or self.seconds > self.before):
            self.max_iters = done + 1  # a budget given or grown on resume: run until it is measured

    def track(self, done: int, logger) -> None:
        """After iteration ``done``: the elapsed time; the deadline (``max_iters`` = ``done``), or a new estimate of
        the iterations that fit. ``logger`` (``engine.logging.MetricsLogger``) prints the decisions and follows
        ``max_iters``."""
        now = self.clock()
        start_iteration, start_clock, start_elapsed = self._session
        self.elapsed = start_elapsed + now - start_clock
        if self.elapsed >= self.seconds:
            logger.info(f"time budget of {self.seconds / 60:g} min spent at iteration {done}")
            self.max_iters = done
            logger.set_max_iters(done)
            return
        self._timing.append(now)
        measured = len(self._timing) - 1  # iterations measured (clock readings since the first one)
        first = done == start_iteration + 1  # start-up included: a cautious first estimate, refined below
        if first or done >= self.max_iters or (measured >= ESTIMATE_AFTER and measured & (measured - 1) == 0):
            # the speed of the recent half of the iterations measured (at least ESTIMATE_AFTER): a machine
            # whose speed changed is followed, not averaged with what it was
            recent = min(measured, max(ESTIMATE_AFTER, measured // 2))
            seconds = max((now - self._timing[-1 - recent]) / recent, 1e-9)  # per iteration, > 0 even for a coarse clock
            target = done + int((self.seconds - self.elapsed) // seconds)
            if first:  # start-up is in this estimate: only a speed measured after it may end the run
                target = max(target, done + 1)
            self._retarget(target, seconds, done, logger)
        if first:  # the first iteration of a session pays for start-up: the speed is measured after it
            self._timing = [now]
        steps = self._follow_time(self.scheduler.lr_steps, done)
        if steps != self.scheduler.lr_steps:
            self.scheduler.place(self.scheduler.warmup_iters, steps)

    def _follow_time(self, steps: tuple[int, ...], done: int) -> tuple[int, ...]:
        """Free LR steps not yet taken placed on elapsed time (``follow_time``): each fires when its fraction of
        the configured run is spent of the budget, whatever the speed did since the estimates."""
        if "lr_steps" in self.fixed or self.config.lr_schedule != "step":
            return steps
        fractions = [step / self.length for step in self.config.lr_steps]
        return follow_time(steps, fractions, self.elapsed / self.seconds, done)

    def _retarget(self, target: int, seconds: float, done: int, logger) -> None:
        """Make ``target`` the run's length and place the schedule's fractions on it (``seconds``: per iteration)."""
        if target == self.max_iters:
            return
        scaled = scale_schedule(self.config, target, self.length, free_fields(self.fixed))
        placed = keep_reached(self.scheduler.placed(self.config), scaled, done)
        placed = dataclasses.replace(placed, lr_steps=self._follow_time(placed.lr_steps, done))
        self.scheduler.place(placed.warmup_iters, placed.lr_steps, target)
        self.max_iters = target
        logger.set_max_iters(target)
        left = (self.seconds - self.elapsed) / 60
        logger.info(
            f"time budget: {iterations(target)} fit ({seconds:.3g} s each, {left:.3g} of {self.seconds / 60:g} min left); "
            + describe_schedule(placed, self.lr, target)
        )
