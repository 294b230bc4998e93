"""Learning-rate schedule: linear warm-up, then step or cosine decay, as a pure function of the iteration.

    factor(i) = warmup_factor + (1 - warmup_factor) * i / warmup_iters   for i < warmup_iters
              * gamma ** (number of steps s in lr_steps with s <= i)           (step decay)
              * (1 + cos(pi * min(i / cosine_iters, 1))) / 2                   (cosine decay to 0 at cosine_iters)
    lr(i)     = base_lr * factor(i)

Iteration ``i`` counts optimizer steps already taken, so the first step uses ``factor(0)``
(= ``warmup_factor`` when warming up). The scheduler's state is the iteration (and where the warm-up and
steps are), which makes resuming exact: the lr of step ``i`` never depends on how the run got there.

A schedule written for a run of ``reference`` iterations follows a run of another length
(``scale_schedule``): every LR step moves to the same fraction of the run, and the warm-up
shrinks with a shorter run but never grows beyond its configured length (it guards the first
updates of a fresh model, whose number does not grow with the run). A cosine decay ends with the run.

Under a time budget (``engine/budget.py``) the run's length is an estimate that changes with the machine's speed; an LR step not
yet taken then fires when its fraction of the budget is spent (``follow_time``), whatever was estimated
before, so a step placed early by a slow start moves when the machine speeds up.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Collection, Sequence

import torch

from fasterrcnn.config import TrainConfig

__all__ = [
    "SCHEDULE_FIELDS", "WarmupStepLR", "describe_schedule", "follow_time", "free_fields", "iterations", "keep_reached", "lr_factor",
    "scale_schedule",
]  # fmt: skip

SCHEDULE_FIELDS = ("warmup_iters", "lr_steps")  # the TrainConfig fields placed in iterations of the run


def free_fields(fixed: Collection[str]) -> list[str]:
    """The ``SCHEDULE_FIELDS`` placed on the run's length: those not in ``fixed`` (set by the user)."""
    return [name for name in SCHEDULE_FIELDS if name not in fixed]


def lr_factor(
    iteration: int,
    *,
    warmup_iters: int,
    warmup_factor: float,
    lr_steps: Sequence[int],
    gamma: float,
    cosine_iters: int | None = None,
) -> float:
    """The multiplier of the base learning rate for the optimizer step number ``iteration`` (0-based).

    Warm-up ramps linearly from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``
    (no warm-up when ``warmup_iters`` is 0); then, with ``cosine_iters`` None, each milestone in ``lr_steps``
    that is <= ``iteration`` multiplies by ``gamma``; with ``cosine_iters`` (>= 1) the factor follows half a
    cosine from 1 at iteration 0 to 0 at ``cosine_iters`` and stays 0 beyond (``lr_steps`` unused).
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1.0 - alpha) + alpha
    if cosine_iters is not None:
        return factor * 0.5 * (1.0 + math.cos(math.pi * min(iteration / max(cosine_iters, 1), 1.0)))
    return factor * gamma ** bisect_right(sorted(lr_steps), iteration)


def scale_schedule(config: TrainConfig, length: int, reference: int, fields: Collection[str] = SCHEDULE_FIELDS) -> TrainConfig:
    """``config`` with its ``fields`` (of ``SCHEDULE_FIELDS``), written for a run of ``reference`` iterations,
    placed on a run of ``length``.

    lr_steps: ``round(step * length / reference)``, kept >= 1 and increasing (two steps never merge: each still
    multiplies by ``lr_gamma``); warmup_iters: scaled the same way but at most ``config.warmup_iters``.
    """
    ratio = length / reference
    changes = {}
    if "lr_steps" in fields:
        steps: list[int] = []
        for step in config.lr_steps:
            steps.append(max(round(step * ratio), steps[-1] + 1 if steps else 1))
        changes["lr_steps"] = tuple(steps)
    if "warmup_iters" in fields:
        changes["warmup_iters"] = min(config.warmup_iters, round(config.warmup_iters * ratio))
    return dataclasses.replace(config, **changes)


def keep_reached(current: TrainConfig, placed: TrainConfig, done: int) -> TrainConfig:
    """``placed``'s schedule, except that what ``current``'s had reached by iteration ``done`` stays where it was.

    For a run whose length is re-estimated during training (a time budget): a warm-up end or LR step at or
    before ``done`` keeps its iteration, one still ahead moves to ``placed``'s but not before ``done``, so the
    lr never steps back up and no step is lost.
    """
    steps: list[int] = []
    for now, new in zip(current.lr_steps, placed.lr_steps):
        steps.append(now if now <= done else max(new, done, steps[-1] + 1 if steps else 1))
    warmup = current.warmup_iters if current.warmup_iters <= done else max(placed.warmup_iters, done)
    return dataclasses.replace(placed, warmup_iters=warmup, lr_steps=tuple(steps))


def follow_time(steps: Sequence[int], fractions: Sequence[float], spent: float, done: int) -> tuple[int, ...]:
    """The LR ``steps`` placed on elapsed time: ``spent`` of the budget (a fraction) after ``done`` iterations.

    A step not yet used (``>= done``) whose ``fractions`` entry (of the budget) is spent moves to ``done``, so the
    next iteration takes it; one whose time has not come stays where the estimate put it, but after ``done``.
    Steps already used stay; the result stays increasing (two steps due together fire on consecutive iterations).
    """
    placed: list[int] = []
    for step, fraction in zip(steps, fractions):
        if step < done:
            new = step
        else:
            new = done if spent >= fraction else max(step, done + 1)
        placed.append(max(new, placed[-1] + 1) if placed else new)
    return tuple(placed)


def iterations(count: int) -> str:
    """``count`` iterations in words: "1 iteration", "300 iterations"."""
    return f"{count} iteration{'' if count == 1 else 's'}"


def describe_schedule(config: TrainConfig, lr: float, length: int | None = None) -> str:
    """The warm-up and the LR steps in words, e.g. ``warm-up 100 iterations from 0.01 x lr; lr 0.02, x0.1 at
    900 -> 0.002`` (``lr``: the optimizer's base learning rate); a cosine schedule: ``lr 0.02, cosine to 0 at
    1200`` (``length``: the run's iterations)."""
    n = config.warmup_iters
    warmup = f"warm-up {iterations(n)} from {config.warmup_factor:g} x lr" if n else "no warm-up"
    if config.lr_schedule == "cosine":
        return f"{warmup}; lr {lr:g}, cosine to 0 at {length}"
    steps = "".join(f", x{config.lr_gamma:g} at {step} -> {lr * config.lr_gamma ** (k + 1):g}" for k, step in enumerate(config.lr_steps))
    return f"{warmup}; lr {lr:g}{steps}"


class WarmupStepLR:
    """Sets ``optimizer``'s learning rates to ``base_lr * lr_factor(iteration)``.

    Like ``torch.optim.lr_scheduler.LambdaLR``, but the state is ``iteration`` (the number of optimizer
    steps taken) with the warm-up and steps (``place`` moves them): call ``step()`` after each ``optimizer.step()``. The base learning rates
    are the param groups' ``lr`` when the scheduler is created.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        warmup_iters: int,
        warmup_factor: float,
        lr_steps: Sequence[int],
        gamma: float,
        cosine_iters: int | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.lr_steps = tuple(lr_steps)
        self.gamma = gamma
        self.cosine_iters = cosine_iters
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.iteration = 0
        self._apply()

    def factor(self) -> float:
        return lr_factor(
            self.iteration,
            warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor,
            lr_steps=self.lr_steps,
            gamma=self.gamma,
            cosine_iters=self.cosine_iters,
        )

    def get_last_lr(self) -> list[float]:
        """The learning rates of the next optimizer step, one per param group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def place(self, warmup_iters: int, lr_steps: Sequence[int], cosine_iters: int | None = None) -> None:
        """Move the warm-up end and the LR steps (a run whose length is re-estimated: ``scale_schedule``), and a
        cosine schedule's end when given."""
        self.warmup_iters, self.lr_steps = int(warmup_iters), tuple(int(s) for s in lr_steps)
        if cosine_iters is not None and self.cosine_iters is not None:
            self.cosine_iters = int(cosine_iters)
        self._apply()

    def placed(self, config: TrainConfig) -> TrainConfig:
        """``config`` with this scheduler's warm-up and LR steps (where ``place`` put them)."""
        return dataclasses.replace(config, warmup_iters=self.warmup_iters, lr_steps=self.lr_steps)

    def state_dict(self) -> dict:
        state = {"iteration": self.iteration, "warmup_iters": self.warmup_iters, "lr_steps": list(self.lr_steps)}
        if self.cosine_iters is not None:
            state["cosine_iters"] = self.cosine_iters
        return state

    def load_state_dict(self, state: dict) -> None:
        """The iteration, and the warm-up and steps (and cosine end) when the state has them (checkpoints before
        them: the config's)."""
        self.iteration = int(state["iteration"])
        if "lr_steps" in state:
            self.place(state["warmup_iters"], state["lr_steps"], state.get("cosine_iters"))
        self._apply()

    def _apply(self) -> None:
        factor = self.factor()
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
