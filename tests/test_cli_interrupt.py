"""A long run is always interrupted: SIGINT / SIGTERM save a checkpoint and exit cleanly, SIGKILL during
a checkpoint write leaves the previous one, and ``--resume`` then ends with the weights of an
uninterrupted run. Non-finite losses never reach the weights. The same ``--seed`` gives the same weights.

The interrupted runs are real ``python -m fasterrcnn train`` processes. Weights are compared exactly,
so every run here uses one CPU thread (``OMP_NUM_THREADS=1`` in the children, ``torch.set_num_threads(1)``
in this process): the order of float sums in torch's CPU kernels depends on the number of threads.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from fasterrcnn.cli import main
from fasterrcnn.data.synthetic import write_synthetic_voc
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.engine.logging import read_metrics

MAX_ITERS = 40  # 3 batches per epoch: interruptions fall inside an epoch, the run crosses several
RUN = ["--preset", "tiny", "--set", "model.min_size=48", "--set", "model.max_size=64", "--batch-size", "2"]
RUN += ["--seed", "11", "--log-every", "1", "--checkpoint-every", "4", "--no-val", "--quiet", "--device", "cpu"]
RUN += ["--set", "train.warmup_iters=6", "--set", "train.lr_steps=[20]", "--max-iters", str(MAX_ITERS)]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=6, num_test=1, image_size=(48, 48), seed=5)


def train_args(voc_root, out):
    return ["train", "--data", str(voc_root), "--split", "train", "--output", str(out), *RUN]


class one_thread:
    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


@pytest.fixture(scope="module")
def reference(voc_root, tmp_path_factory):
    """The final weights of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    with one_thread():
        assert main(train_args(voc_root, out)) == 0
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


def assert_same_weights(path, reference):
    state = load_checkpoint(path)
    assert state["iteration"] == MAX_ITERS
    assert state["model"].keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(state["model"][name], value), name


def spawn(args, **kwargs):
    """``args`` in a child Python with one thread and SIGINT at its default (a shell may start us ignoring it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


def wait_for(condition, process, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (exit code {process.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_resume_ends_with_the_same_weights(voc_root, reference, tmp_path, signum):
    out = tmp_path / "run"
    stop_after = random.randint(2, 8)  # a random iteration (printed on failure)
    process = spawn(["-m", "fasterrcnn", *train_args(voc_root, out)])

    def reached():
        records = read_metrics(out / "metrics.jsonl")
        return any(r.get("type") == "train" and r["iteration"] >= stop_after for r in records)

    wait_for(reached, process, f"iteration {stop_after}")
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, (stop_after, stdout, stderr)  # 143 SIGTERM, 130 SIGINT

    last = out / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    stopped = state["iteration"]
    assert stop_after <= stopped < MAX_ITERS, (stop_after, stopped)
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, stopped + 1))
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"fasterrcnn: {name} received: stopped after iteration {stopped}, checkpoint saved to {last}; ")
    resume = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert resume[0] == "fasterrcnn" and resume[-1] == "--resume"

    with one_thread():
        assert main(resume[1:]) == 0  # the command the message gives
    assert_same_weights(last, reference)
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, MAX_ITERS + 1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_to_the_process_group_with_loader_workers(voc_root, tmp_path, signum):
    """Ctrl-C in a terminal, ``kill -- -PGID``, systemd and Slurm signal every process of the run, the
    data-loading workers too (SIGTERM ends them): the main process still saves a checkpoint and exits
    cleanly, and no worker outlives the run."""
    out = tmp_path / "run"
    process = spawn(["-m", "fasterrcnn", *train_args(voc_root, out), "--num-workers", "2"], start_new_session=True)

    def reached():
        records = read_metrics(out / "metrics.jsonl")
        return any(r.get("type") == "train" and r["iteration"] >= 3 for r in records)

    wait_for(reached, process, "iteration 3")
    os.killpg(process.pid, signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    assert lines[0].startswith(f"fasterrcnn: {signal.Signals(signum).name} received: stopped after iteration ")
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] >= 3
    deadline = time.monotonic() + 30
    while True:  # the group is empty once every worker has exited
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a data-loading worker outlived the run"
        time.sleep(0.05)


KILL_DURING_SAVE = """
import io, os, sys, time
import torch
from fasterrcnn.cli import main

real_save, calls = torch.save, []

def save(obj, f, *args, **kwargs):  # the 4th checkpoint write (last.pt at iteration 8) never finishes
    calls.append(1)
    if len(calls) == 4:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()  # in the page cache: the half-written file is what the next process sees
        open(sys.argv[1], "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = save
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(voc_root, reference, tmp_path):
    out, writing = tmp_path / "run", tmp_path / "writing"
    process = spawn(["-c", KILL_DURING_SAVE, str(writing), *train_args(voc_root, out)])
    wait_for(writing.exists, process, "the checkpoint write")
    process.kill()  # SIGKILL: no handler, no clean-up
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    folder = out / "checkpoints"
    partial = [p for p in folder.iterdir() if p.name.startswith(".last.pt.")]
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the torn write, never renamed
    assert load_checkpoint(folder / "last.pt")["iteration"] == 4  # the previous checkpoint, whole
    assert load_checkpoint(folder / "iter_0000008.pt")["iteration"] == 8

    with one_thread():
        assert main(train_args(voc_root, out) + ["--resume"]) == 0
    assert_same_weights(folder / "last.pt", reference)
    assert not any(p.name.startswith(".") for p in folder.iterdir())  # resume removed the torn file


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_steps_are_skipped_then_stop_with_the_last_good_checkpoint(voc_root, tmp_path, monkeypatch, capsys, where):
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    forward, calls = FasterRCNN.forward, []

    def poisoned(self, images, targets=None, generator=None):
        losses = forward(self, images, targets, generator)
        if self.training:
            calls.append(1)
            if len(calls) > 5:  # from iteration 6 on
                if where == "loss":
                    losses["loss_box_reg"] = losses["loss_box_reg"] * float("nan")
                else:  # a finite loss (0) whose gradient is NaN: d sqrt(x) / dx at 0 is inf, times 0
                    weight = next(self.parameters())
                    losses["loss_nan_grad"] = torch.sqrt(weight.sum() * 0.0)
        return losses

    monkeypatch.setattr(FasterRCNN, "forward", poisoned)
    out = tmp_path / "run"
    args = train_args(voc_root, out) + ["--set", "train.max_nonfinite_steps=3", "--checkpoint-every", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("fasterrcnn: error: training stopped at iteration 8: the loss (or its gradient) was not finite for 3 consecutive iterations")
    assert f"the skipped steps left the weights as they were; {out / 'checkpoints' / 'last.pt'} holds iteration 8" in err[0]

    skips = [r for r in read_metrics(out / "metrics.jsonl") if r["type"] == "skip"]
    assert [(r["iteration"], r["consecutive"]) for r in skips] == [(6, 1), (7, 2), (8, 3)]
    assert [r["iteration"] for r in read_metrics(out / "metrics.jsonl") if r["type"] == "train"] == [1, 2, 3, 4, 5]
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["iteration"] == 8  # written at the stop (the weights are finite), not as a periodic checkpoint
    assert not (out / "checkpoints" / "iter_0000008.pt").exists()
    # the weights, BatchNorm statistics included, are still those after step 5, the last good one
    good = load_checkpoint(out / "checkpoints" / "iter_0000005.pt")["model"]
    assert last["model"].keys() == good.keys()
    for name, value in good.items():
        assert torch.isfinite(last["model"][name]).all(), name
        assert torch.equal(last["model"][name], value), name


def test_same_seed_same_weights(voc_root, tmp_path):
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        args = train_args(voc_root, tmp_path / name) + ["--seed", seed, "--max-iters", "4"]
        assert main(args) == 0
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])  # the seed matters
