"""Learning-rate schedule: linear warm-up, then step decay, as a pure function of the iteration.

    factor(i) = warmup_factor + (1 - warmup_factor) * i / warmup_iters   for i < warmup_iters
              * gamma ** (number of steps s in lr_steps with s <= i)
    lr(i)     = base_lr * factor(i)

Iteration ``i`` counts optimizer steps already taken, so the first step uses ``factor(0)``
(= ``warmup_factor`` when warming up). The scheduler's whole state is the iteration, which makes
resuming exact: the lr of step ``i`` never depends on how the run got there.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

import torch

__all__ = ["WarmupStepLR", "lr_factor"]


def lr_factor(
    iteration: int,
    *,
    warmup_iters: int,
    warmup_factor: float,
    lr_steps: Sequence[int],
    gamma: float,
) -> float:
    """The multiplier of the base learning rate for the optimizer step number ``iteration`` (0-based).

    Warm-up ramps linearly from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``
    (no warm-up when ``warmup_iters`` is 0); each milestone in ``lr_steps`` that is <= ``iteration``
    multiplies by ``gamma``.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration}")
    factor = 1.0
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor = warmup_factor * (1.0 - alpha) + alpha
    return factor * gamma ** bisect_right(sorted(lr_steps), iteration)


class WarmupStepLR:
    """Sets ``optimizer``'s learning rates to ``base_lr * lr_factor(iteration)``.

    Like ``torch.optim.lr_scheduler.LambdaLR``, but the state is only ``iteration`` (the number of
    optimizer steps taken): call ``step()`` after each ``optimizer.step()``. The base learning rates
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
    ) -> None:
        self.optimizer = optimizer
        self.warmup_iters = warmup_iters
        self.warmup_factor = warmup_factor
        self.lr_steps = tuple(lr_steps)
        self.gamma = gamma
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
        )

    def get_last_lr(self) -> list[float]:
        """The learning rates of the next optimizer step, one per param group."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        self.iteration += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"iteration": self.iteration}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.iteration = int(state["iteration"])
        self._apply()

    def _apply(self) -> None:
        factor = self.factor()
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * factor
