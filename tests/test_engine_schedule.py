"""Warm-up + step learning-rate schedule, and its placement on a run of another length: exact values."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from fasterrcnn.config import check_config, get_preset
from fasterrcnn.engine.schedule import WarmupStepLR, describe_schedule, follow_time, keep_reached, lr_factor, scale_schedule


def test_lr_factor_warmup_and_steps():
    kw = dict(warmup_iters=4, warmup_factor=0.2, lr_steps=(6, 8), gamma=0.1)
    values = [lr_factor(i, **kw) for i in range(10)]
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert values == pytest.approx(expected, rel=1e-12, abs=0)
    assert lr_factor(0, warmup_iters=0, warmup_factor=0.5, lr_steps=(), gamma=0.1) == 1.0
    # warm-up and a step inside it multiply
    assert lr_factor(1, warmup_iters=4, warmup_factor=0.2, lr_steps=(1,), gamma=0.5) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        lr_factor(-1, **kw)


def test_scheduler_state_is_the_iteration():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.5)
    sched = WarmupStepLR(opt, warmup_iters=2, warmup_factor=0.5, lr_steps=(3,), gamma=0.1)
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([0.25, 0.375, 0.5, 0.05, 0.05])
    assert sched.state_dict() == {"iteration": 5, "warmup_iters": 2, "lr_steps": [3]}
    opt2 = torch.optim.SGD([param], lr=0.5)
    sched2 = WarmupStepLR(opt2, warmup_iters=2, warmup_factor=0.5, lr_steps=(3,), gamma=0.1)
    assert opt2.param_groups[0]["lr"] == 0.25
    sched2.load_state_dict({"iteration": 1})
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.375)
    assert sched2.get_last_lr() == pytest.approx([0.375])


# -- a schedule that follows the run's length ------------------------------------------------------------------
TINY = get_preset("tiny").train  # warm-up 100, step 900 of max_iters 1200


def test_scale_schedule_keeps_the_steps_fractions_and_never_lengthens_the_warmup():
    shorter = scale_schedule(TINY, 400, 1200)
    assert (shorter.lr_steps, shorter.warmup_iters) == ((300,), 33)
    longer = scale_schedule(TINY, 2000, 1200)
    assert (longer.lr_steps, longer.warmup_iters) == ((1500,), 100)  # the warm-up is capped at the configured one
    assert scale_schedule(TINY, 400, 1200, fields=("warmup_iters",)).lr_steps == (900,)  # a step the user set stays
    assert scale_schedule(TINY, 400, 1200, fields=("lr_steps",)).warmup_iters == 100
    # steps stay >= 1 and increasing (each still multiplies by gamma), and the result is a valid config
    fpn = get_preset("resnet50_fpn").train  # steps 60000, 80000 of 90000
    assert scale_schedule(fpn, 1, 90000).lr_steps == (1, 2)
    assert scale_schedule(fpn, 9, 90000).lr_steps == (6, 8)
    check_config(scale_schedule(fpn, 1, 90000))
    assert scale_schedule(TINY, 1200, 1200) == TINY


def test_keep_reached_never_moves_a_step_already_taken():
    current = dataclasses.replace(TINY, warmup_iters=5, lr_steps=(9, 11))
    placed = dataclasses.replace(TINY, warmup_iters=2, lr_steps=(14, 16))
    kept = keep_reached(current, placed, done=10)
    assert (kept.warmup_iters, kept.lr_steps) == (5, (9, 16))  # warm-up and the first step were reached
    kept = keep_reached(current, dataclasses.replace(TINY, warmup_iters=1, lr_steps=(3, 4)), done=4)
    assert (kept.warmup_iters, kept.lr_steps) == (4, (4, 5))  # all ahead of iteration 4: moved, but not before it


def test_describe_schedule():
    assert describe_schedule(scale_schedule(TINY, 400, 1200), 0.02) == "warm-up 33 iterations from 0.01 x lr; lr 0.02, x0.1 at 300 -> 0.002"
    two = dataclasses.replace(TINY, warmup_iters=0, lr_steps=(6, 8), lr_gamma=0.5)
    assert describe_schedule(two, 0.1) == "no warm-up; lr 0.1, x0.5 at 6 -> 0.05, x0.5 at 8 -> 0.025"


def test_placed_steps_are_the_schedulers_state():
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = WarmupStepLR(opt, warmup_iters=0, warmup_factor=0.5, lr_steps=(100,), gamma=0.1)
    for _ in range(3):
        sched.step()
    sched.place(0, (2,))  # the step moved behind the current iteration: it applies now
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    again = WarmupStepLR(torch.optim.SGD([param], lr=1.0), warmup_iters=0, warmup_factor=0.5, lr_steps=(100,), gamma=0.1)
    again.load_state_dict(sched.state_dict())
    assert (again.iteration, again.lr_steps, again.get_last_lr()) == (3, (2,), pytest.approx([0.1]))
    again.load_state_dict({"iteration": 2})  # a checkpoint written before the steps were saved: steps as they are
    assert again.lr_steps == (2,) and again.get_last_lr() == pytest.approx([0.1])


def test_cosine_decays_to_zero_at_its_end_and_stays_there():
    kw = dict(warmup_iters=2, warmup_factor=0.5, lr_steps=(1,), gamma=0.1, cosine_iters=4)  # lr_steps unused
    values = [lr_factor(i, **kw) for i in range(6)]
    assert values == pytest.approx([0.5, 0.75 * (0.5 + 0.5 * 0.5**0.5), 0.5, 0.5 - 0.5 * 0.5**0.5, 0.0, 0.0], abs=1e-12)
    param = nn.Parameter(torch.zeros(1))
    sched = WarmupStepLR(torch.optim.SGD([param], lr=1.0), warmup_iters=0, warmup_factor=1.0, lr_steps=(), gamma=0.1, cosine_iters=4)
    sched.step()
    sched.place(0, (), 8)  # a re-estimated (longer) run stretches the cosine
    assert sched.get_last_lr() == pytest.approx([0.5 + 0.5 * math.cos(math.pi / 8)])
    assert sched.state_dict() == {"iteration": 1, "warmup_iters": 0, "lr_steps": [], "cosine_iters": 8}
    assert describe_schedule(dataclasses.replace(TINY, lr_schedule="cosine"), 0.02, 300) == "warm-up 100 iterations from 0.01 x lr; lr 0.02, cosine to 0 at 300"


def test_follow_time_fires_a_step_when_its_share_of_the_budget_is_spent():
    # a step estimated at 5 (of 0.75 of the budget) after 5 iterations, with 2/3 of the budget spent: not yet
    assert follow_time((5,), (0.75,), spent=2 / 3, done=5) == (6,)
    assert follow_time((5,), (0.75,), spent=0.76, done=5) == (5,)  # its time came: the next iteration takes it
    assert follow_time((20,), (0.75,), spent=0.76, done=8) == (8,)  # estimated later than its time: pulled in
    assert follow_time((3, 20), (0.5, 0.75), spent=0.9, done=8) == (3, 8)  # a step already taken stays
    assert follow_time((9, 10), (0.5, 0.6), spent=0.9, done=8) == (8, 9)  # due together: one after the other
