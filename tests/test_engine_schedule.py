"""Warm-up + step learning-rate schedule: exact values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fasterrcnn.engine.schedule import WarmupStepLR, lr_factor


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
    assert sched.state_dict() == {"iteration": 5}
    opt2 = torch.optim.SGD([param], lr=0.5)
    sched2 = WarmupStepLR(opt2, warmup_iters=2, warmup_factor=0.5, lr_steps=(3,), gamma=0.1)
    assert opt2.param_groups[0]["lr"] == 0.25
    sched2.load_state_dict({"iteration": 1})
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.375)
    assert sched2.get_last_lr() == pytest.approx([0.375])
