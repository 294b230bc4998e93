"""The time budget (engine/budget.py) on a fake clock: its estimates, the schedule on them, the deadline, its state."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fasterrcnn.config import get_preset
from fasterrcnn.engine.budget import ESTIMATE_AFTER, TimeBudget, agreed_clock
from fasterrcnn.engine.schedule import WarmupStepLR

TINY = get_preset("tiny").train  # lr 0.02, warm-up 100 from 0.01 x lr, x0.1 at step 900 of max_iters 1200
SCHEDULE = "warm-up 100 iterations from 0.01 x lr; lr 0.02, x0.1 at 900 -> 0.002"  # TINY's, when fixed


def fake_clock(increments, start=0.0):
    """A clock whose first reading is ``start`` and each next one the previous plus the next of ``increments`` (seconds)."""
    readings = itertools.accumulate(itertools.chain([start], increments))
    return lambda: next(readings)


class Logger:
    """What the trainer's logger is told: the lines printed and the run length it follows."""

    def __init__(self):
        self.lines: list[str] = []
        self.max_iters: int | None = None

    def info(self, message: str) -> None:
        self.lines.append(message)

    def set_max_iters(self, max_iters: int) -> None:
        self.max_iters = max_iters


def make_budget(minutes: float, increments, fixed=("warmup_iters", "lr_steps")) -> TimeBudget:
    """A budget of ``minutes`` over TINY's schedule (by default fixed: only the length moves)."""
    config = dataclasses.replace(TINY, time=minutes)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = WarmupStepLR(
        optimizer, warmup_iters=config.warmup_iters, warmup_factor=config.warmup_factor, lr_steps=config.lr_steps, gamma=config.lr_gamma
    )
    return TimeBudget(config, config.max_iters, scheduler, fixed=fixed, lr=config.lr, clock=fake_clock(increments))


def test_the_first_estimate_includes_start_up_and_the_next_comes_after_estimate_after_iterations():
    assert ESTIMATE_AFTER == 4
    # 1 min; the first iteration takes 10 s (start-up), the next ones 2 s, then 4 s
    budget, logger = make_budget(1.0, [10.0] + [2.0] * 4 + [4.0] * 4), Logger()
    budget.start(0)
    assert budget.max_iters == TINY.max_iters  # nothing measured yet
    budget.track(1, logger)
    assert budget.max_iters == logger.max_iters == 1 + (60 - 10) // 10
    assert logger.lines == [f"time budget: 6 iterations fit (10 s each, {50 / 60:.3g} of 1 min left); {SCHEDULE}"]
    for done in range(2, 5):  # 1, 2, 3 iterations measured after the first: no new estimate
        budget.track(done, logger)
        assert budget.max_iters == 6 and len(logger.lines) == 1
    budget.track(5, logger)  # 4 measured: 2 s each, start-up left out
    assert budget.max_iters == logger.max_iters == 5 + (60 - 18) // 2
    assert logger.lines[-1] == f"time budget: 26 iterations fit (2 s each, 0.7 of 1 min left); {SCHEDULE}"
    # the machine slows down to 4 s: after 8 measured, the recent half (4 s each) counts, not the mean (3 s)
    for done in range(6, 10):
        budget.track(done, logger)
    assert budget.elapsed == 34.0
    assert budget.max_iters == logger.max_iters == 9 + (60 - 34) // 4 != 9 + (60 - 34) // 3
    assert logger.lines[-1] == f"time budget: 15 iterations fit (4 s each, {26 / 60:.3g} of 1 min left); {SCHEDULE}"
    assert len(logger.lines) == 3


def test_a_target_reached_before_the_next_estimate_is_estimated_again():
    # 0.5 min; a start-up of 10 s leaves room for 3 iterations, the next ones take 2 s: at 3, 2 measured
    budget, logger = make_budget(0.5, [10.0] + [2.0] * 2), Logger()
    budget.start(0)
    budget.track(1, logger)
    assert budget.max_iters == 1 + (30 - 10) // 10
    budget.track(2, logger)
    assert budget.max_iters == 3 and len(logger.lines) == 1
    budget.track(3, logger)
    assert budget.max_iters == logger.max_iters == 3 + (30 - 14) // 2
    assert logger.lines[-1] == f"time budget: 11 iterations fit (2 s each, {16 / 60:.3g} of 0.5 min left); {SCHEDULE}"


def test_the_run_stops_in_the_iteration_that_spends_the_budget():
    budget, logger = make_budget(0.4, itertools.repeat(2.0)), Logger()  # 24 s, 2 s per iteration
    budget.start(0)
    for done in range(1, 12):
        budget.track(done, logger)
    assert budget.elapsed == 22.0 and budget.max_iters == 12
    assert not any("spent" in line for line in logger.lines)
    budget.track(12, logger)  # exactly 24 s
    assert budget.max_iters == logger.max_iters == 12
    assert logger.lines[-1] == "time budget of 0.4 min spent at iteration 12"
    # slower than estimated: the deadline ends the run before the estimate's 12 iterations
    budget, logger = make_budget(0.4, [2.0] * 6 + [10.0] * 2), Logger()
    budget.start(0)
    for done in range(1, 8):
        budget.track(done, logger)
    assert budget.elapsed == 22.0 and budget.max_iters == 12
    budget.track(8, logger)
    assert budget.elapsed == 32.0 and budget.max_iters == logger.max_iters == 8
    assert logger.lines == [f"time budget: 12 iterations fit (2 s each, {22 / 60:.3g} of 0.4 min left); {SCHEDULE}", "time budget of 0.4 min spent at iteration 8"]


def test_the_schedule_keeps_its_fractions_and_a_step_waits_for_its_share_of_the_budget():
    # 24 s; 2 s for the first iteration, then 3 s: the step of 900/1200 is due when 18 s are spent
    budget, logger = make_budget(0.4, [2.0] + [3.0] * 7, fixed=()), Logger()
    scheduler = budget.scheduler
    budget.start(0)
    budget.track(1, logger)  # 12 fit: the step at 900 x 12 / 1200, the warm-up of 100 at most 100 x 12 / 1200
    assert (budget.max_iters, scheduler.warmup_iters, scheduler.lr_steps, scheduler.cosine_iters) == (12, 1, (9,), None)
    assert logger.lines[-1] == f"time budget: 12 iterations fit (2 s each, {22 / 60:.3g} of 0.4 min left); warm-up 1 iteration from 0.01 x lr; lr 0.02, x0.1 at 9 -> 0.002"
    for done in range(2, 6):
        budget.track(done, logger)  # at 5: 4 measured at 3 s, 10 s left: 8 fit, the step at 900 x 8 / 1200
    assert (budget.max_iters, scheduler.warmup_iters, scheduler.lr_steps) == (8, 1, (6,))  # the warm-up, reached, stays
    budget.track(6, logger)  # 17 s spent, less than 3/4 of 24 s: the step not yet taken waits
    assert scheduler.lr_steps == (7,)
    budget.track(7, logger)  # 20 s: due, the next iteration (the 8th, number 7) takes it
    assert scheduler.lr_steps == (7,)
    budget.track(8, logger)  # 23 s: nothing more fits; the step taken stays
    assert (budget.max_iters, scheduler.lr_steps, budget.elapsed) == (8, (7,), 23.0)


def test_the_state_round_trips_and_a_resumed_budget_counts_the_time_spent():
    budget, logger = make_budget(0.4, itertools.repeat(2.0), fixed=()), Logger()
    budget.start(0)
    for done in range(1, 7):
        budget.track(done, logger)
    state = budget.state_dict()
    assert state == {"budget": 24.0, "elapsed": 12.0, "max_iters": 12, "fixed": []}  # the checkpoint's training["time"]
    resumed = make_budget(0.4, itertools.repeat(2.0), fixed=("lr_steps",))
    resumed.load_state_dict(json.loads(json.dumps(state)))
    assert resumed.state_dict() == {**state, "fixed": ["lr_steps"]}  # fixed fields add up
    assert resumed.describe() == "time budget 0.4 min, 0.2 min spent, 12 iterations until the speed is measured"
    resumed.clock = fake_clock(itertools.repeat(2.0), start=1000.0)  # a new process: its clock starts anywhere
    resumed.start(6)
    resumed.track(7, Logger())
    assert resumed.elapsed == 12.0 + 2.0 and resumed.max_iters == 7 + (24 - 14) // 2


def test_a_spent_budget_stays_spent_and_a_longer_one_runs_until_it_is_measured():
    spent = {"budget": 24.0, "elapsed": 24.0, "max_iters": 12, "fixed": []}
    same = make_budget(0.4, itertools.repeat(2.0))
    same.load_state_dict(spent)
    same.start(12)
    assert same.max_iters == 12  # nothing left to train
    longer, logger = make_budget(0.6, itertools.repeat(2.0)), Logger()  # 36 s
    longer.load_state_dict(spent)
    longer.start(12)
    assert longer.max_iters == 13  # one iteration, to measure the speed
    longer.track(13, logger)
    assert longer.max_iters == 13 + (36 - 26) // 2


def test_one_process_reads_its_own_clock():
    clock = fake_clock(itertools.repeat(1.0))
    assert agreed_clock(clock, torch.device("cpu")) is clock


TORCHRUN = Path(sys.executable).with_name("torchrun")
WORKER = '''
import itertools, json, sys
from pathlib import Path
from fasterrcnn.engine import distributed
from fasterrcnn.engine.budget import agreed_clock
from test_engine_budget import Logger, make_budget

device = distributed.init_distributed("cpu")
rank = distributed.get_rank()
budget, logger = make_budget(0.4, itertools.repeat(2.0 + 3.0 * rank)), Logger()  # rank 1's clock runs slower
budget.clock = agreed_clock(budget.clock, device)
budget.start(0)
done = 0
while done < budget.max_iters:
    done += 1
    budget.track(done, logger)
report = {"rank": rank, "done": done, "state": budget.state_dict(), "lines": logger.lines}
(Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(report))
distributed.cleanup()
'''


@pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available() and TORCHRUN.exists()),
    reason="needs torch.distributed with gloo and torchrun",
)
def test_every_process_follows_rank_zeros_clock(tmp_path):
    """Under torchrun (2 processes, gloo) both processes read rank 0's clock (2 s per iteration): the same
    estimates, the same deadline, though rank 1's own clock says 5 s."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [str(TORCHRUN), "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"]
    command += ["--local-addr=127.0.0.1", str(script), str(tmp_path)]  # each rank writes tmp_path/rank<r>.json
    paths = [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["done"] == reports[1]["done"] == 12  # 24 s at rank 0's 2 s per iteration
    assert reports[0]["state"] == reports[1]["state"] == {"budget": 24.0, "elapsed": 24.0, "max_iters": 12, "fixed": ["lr_steps", "warmup_iters"]}
    assert reports[0]["lines"] == reports[1]["lines"]
    assert reports[1]["lines"][-1] == "time budget of 0.4 min spent at iteration 12"
