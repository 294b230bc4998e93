"""Data-parallel training and mixed precision on the CPU: gloo, 2 processes started by torchrun, tiny preset.

The 2-process tests share one ``torchrun -m fasterrcnn train`` run (2 processes x batch 2) and one
``torchrun tests/distributed_worker.py`` run; the single-process reference trains 1 process x batch 4.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fasterrcnn.cli import build_parser, main
from fasterrcnn.cli.train import overrides_of
from fasterrcnn.runs.training import resolve_run_config
from fasterrcnn.config import ModelConfig, TrainConfig, from_dict
from fasterrcnn.data.loader import EpochSampler, GroupedBatchSampler, ShardedBatchSampler, build_loader, mix_seed
from fasterrcnn.data.synthetic import write_synthetic_voc
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.detector import Detector
from fasterrcnn.engine import distributed
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.engine.evaluator import evaluate_model
from fasterrcnn.engine.logging import read_metrics
from fasterrcnn.engine.trainer import Trainer
from fasterrcnn.errors import ConfigError
from fasterrcnn.modeling.faster_rcnn import FasterRCNN
from fasterrcnn.modeling.matching import NEGATIVE, POSITIVE, sample_labels

TESTS = Path(__file__).parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
# Every image contributes the same number of sampled anchors (64) and RoIs (16), so that the mean of
# the processes' losses is the loss of the global batch (see engine/trainer.py); no warm-up: lr 0.02, then
# 0.002 from the 4th iteration (the preset's step, 900 of 1200, placed on 4 iterations).
TRAIN = ["train", "--split", "train", "--preset", "tiny", "--max-iters", "4", "--log-every", "1", "--eval-every", "0", "--quiet"]  # one evaluation, at the end
TRAIN += ["--set", "model.min_size=64", "--set", "model.max_size=96", "--set", "train.warmup_iters=0"]
TRAIN += ["--set", "model.rpn_batch_size_per_image=64", "--set", "model.box_batch_size_per_image=16", "--device", "cpu"]

needs_gloo = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available() and TORCHRUN.exists()),
    reason="needs torch.distributed with gloo and torchrun",
)


pytestmark = pytest.mark.usefixtures("one_thread")  # the processes started by torchrun use one thread each; so does the single-process reference


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    # 8 training images of one size (2 global batches of 4 per epoch), 5 test images (uneven shards).
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=8, num_test=5, image_size=(64, 64), seed=1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def two_threads():
    """Two torch threads for the one-process runs compared with the torchrun ones: float sums depend on the
    thread count, and the RPN / RoI sampling turns a 1e-7 difference into another sample. With one thread
    the one-process run resumed at iteration 4 takes other samples at iteration 5 (loss 2.4802 vs 2.4812)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def torchrun(*args: str, timeout: float = 120) -> str:
    """``torchrun --nproc_per_node=2 ARGS`` on the loopback interface -> its stdout; fails the test on error.

    torchrun and its workers run in their own session, killed together if they outlive ``timeout``.
    """
    command = [str(TORCHRUN), "--nnodes=1", "--nproc_per_node=2", "--rdzv-backend=c10d"]
    command += [f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--local-addr=127.0.0.1", *args]
    # the workers import the fasterrcnn this test imports (a PYTHONPATH given to pytest comes first)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command)} did not end in {timeout} s:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    assert process.returncode == 0, f"{' '.join(command)} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout


@pytest.fixture(scope="module")
def runs(voc_root, tmp_path_factory):
    """(1 process x batch 4, lr 0.02) and (torchrun: 2 processes x batch 2, lr 0.01 scaled to 0.02, --sync-bn)."""
    root = tmp_path_factory.mktemp("runs")
    one, two = root / "one", root / "two"
    with two_threads():
        assert main([*TRAIN, "--data", str(voc_root), "--output", str(one), "--batch-size", "4", "--lr", "0.02"]) == 0
    stdout = torchrun("-m", "fasterrcnn", *TRAIN, "--data", str(voc_root), "--output", str(two), "--batch-size", "2", "--lr", "0.01", "--sync-bn")
    return one, two, stdout


# -- 2 processes -----------------------------------------------------------------------------------------
@needs_gloo
def test_two_processes_give_the_weights_of_one_process_with_the_global_batch(runs):
    one, two, stdout = runs
    single = load_checkpoint(one / "checkpoints" / "last.pt")
    parallel = load_checkpoint(two / "checkpoints" / "last.pt")
    assert parallel["iteration"] == single["iteration"] == 4 and parallel["epoch"] == single["epoch"] == 1
    assert list(parallel["model"]) == list(single["model"])  # the unwrapped model's keys: no "module."
    for name, value in single["model"].items():
        assert torch.allclose(parallel["model"][name].double(), value.double(), rtol=0, atol=1e-5), name
    torch.manual_seed(0)  # the runs' weight initialisation (seed 0)
    initial = FasterRCNN.from_config(from_dict(ModelConfig, single["config"]["model"])).state_dict()
    moved = max(float((value - initial[name]).abs().max()) for name, value in single["model"].items() if value.is_floating_point())
    assert moved > 1e-3  # the weights did change: their equality is that of trained weights
    # lr 0.01 x 2 processes = the single run's 0.02 (linear scaling), and the same logged mean losses
    train_one = [r for r in read_metrics(one / "metrics.jsonl") if r["type"] == "train"]
    train_two = [r for r in read_metrics(two / "metrics.jsonl") if r["type"] == "train"]
    # the preset's step (900 of 1200) follows --max-iters 4 to iteration 3 in both
    assert [r["lr"] for r in train_two] == [r["lr"] for r in train_one] == pytest.approx([0.02] * 3 + [0.002])
    assert [r["loss"] for r in train_two] == pytest.approx([r["loss"] for r in train_one], abs=1e-5)
    assert "2 processes x 2 images = global batch 4; lr 0.02 = 0.01 x 2" in stdout
    assert json.loads((two / "config.json").read_text())["processes"] == 2


@needs_gloo
def test_only_rank_zero_writes(runs):
    _, two, stdout = runs
    assert stdout.count("training tiny on 8 images") == 1
    assert [r["iteration"] for r in read_metrics(two / "metrics.jsonl")] == [1, 2, 3, 4, 4]  # 4 train + 1 eval, once
    assert len([n for n in os.listdir(two / "tb") if n.startswith("events.out.tfevents")]) == 1
    assert sorted(os.listdir(two / "checkpoints")) == ["best.pt", "last.pt"]
    assert (two / "results.png").stat().st_size > 0
    assert len((two / "results.csv").read_text().splitlines()) == 2 and (two / "confusion_matrix.csv").is_file()


@needs_gloo
def test_sharded_evaluation_during_training_equals_one_process(runs, voc_root):
    _, two, _ = runs
    (logged,) = [r for r in read_metrics(two / "metrics.jsonl") if r["type"] == "eval"]
    detector = Detector.from_checkpoint(two / "checkpoints" / "last.pt")
    test_set = VOCDataset(voc_root, split="test", classes=detector.class_names)
    _, metrics = evaluate_model(detector.model, test_set, metric="voc", class_names=list(detector.class_names))
    assert logged["mAP"] == metrics["mAP"]
    assert logged["per_class"] == {name: (ap if ap == ap else None) for name, ap in metrics["per_class"].items()}


@needs_gloo
def test_eval_command_under_torchrun_is_sharded_and_equals_one_process(runs, voc_root, tmp_path):
    _, two, _ = runs
    weights = str(two / "checkpoints" / "last.pt")
    # --precision f32: precision auto follows the CPU in the torchrun processes (no test fixture there)
    common = ["eval", "--weights", weights, "--data", str(voc_root), "--batch-size", "2", "--quiet", "--precision", "f32"]
    assert main([*common, "--output", str(tmp_path / "one")]) == 0
    stdout = torchrun("-m", "fasterrcnn", *common, "--output", str(tmp_path / "two"))
    assert stdout.count("mAP (voc) on test:") == 1  # rank 0 alone prints and writes
    one_metrics, two_metrics = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert two_metrics["mAP"] == one_metrics["mAP"] and two_metrics["num_images"] == one_metrics["num_images"] == 5
    detections = json.loads((tmp_path / "one" / "detections.json").read_text())
    assert len(detections) > 0 and json.loads((tmp_path / "two" / "detections.json").read_text()) == detections


@pytest.fixture(scope="module")
def worker(runs, voc_root, tmp_path_factory):
    """``tests/distributed_worker.py`` in 2 processes: sharded evaluation, a NaN on rank 1, a 2-process resume."""
    _, two, _ = runs
    out = tmp_path_factory.mktemp("worker")
    resumed = out / "resumed"
    shutil.copytree(two, resumed)
    resume = [*TRAIN, "--data", str(voc_root), "--output", str(resumed), "--batch-size", "2", "--lr", "0.01", "--sync-bn"]
    resume += ["--resume", "--max-iters", "6", "--no-val"]  # the last --max-iters counts
    torchrun(str(TESTS / "distributed_worker.py"), str(out), str(two / "checkpoints" / "last.pt"), str(voc_root), *resume)
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (rank0["world_size"], rank1["world_size"]) == (2, 2)
    assert rank0["train_exit_code"] == rank1["train_exit_code"] == 0
    return rank0, rank1, resumed


@needs_gloo
def test_sharded_evaluation_equals_one_process(worker, runs, voc_root):
    rank0, rank1, _ = worker
    # 5 test images in batches of 2 dealt to 2 processes; rank 0 gathers, both get the metrics
    detector = Detector.from_checkpoint(runs[1] / "checkpoints" / "last.pt")
    test_set = VOCDataset(voc_root, split="test", classes=detector.class_names)
    results, metrics = evaluate_model(detector.model, test_set, metric="voc", class_names=list(detector.class_names), batch_size=2)
    assert len(results) > 0
    assert rank0["eval"]["results"] == json.loads(json.dumps(results))  # the same detections, in the same order
    assert rank1["eval"]["results"] == []
    assert rank0["eval"]["mAP"] == rank1["eval"]["mAP"] == metrics["mAP"]


@needs_gloo
def test_a_nonfinite_loss_on_one_process_skips_the_step_on_all(worker):
    rank0, rank1, _ = worker
    assert rank0["nonfinite"]["records"] == [["train", 1], ["skip", 2], ["train", 3], ["train", 4]]
    assert rank0["nonfinite"]["params"] == rank1["nonfinite"]["params"]


@needs_gloo
def test_every_process_resumes_from_the_same_checkpoint(worker, runs, voc_root, tmp_path):
    # 2 processes resumed at iteration 4 end at 6 with the weights of 1 process (batch 4) resumed alike
    _, _, resumed = worker
    one = tmp_path / "one"
    shutil.copytree(runs[0], one)
    args = [*TRAIN, "--data", str(voc_root), "--output", str(one), "--batch-size", "4", "--lr", "0.02"]
    with two_threads():
        assert main([*args, "--resume", "--max-iters", "6", "--no-val"]) == 0
    single = load_checkpoint(one / "checkpoints" / "last.pt")
    parallel = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert parallel["iteration"] == single["iteration"] == 6
    for name, value in single["model"].items():
        assert torch.allclose(parallel["model"][name].double(), value.double(), rtol=0, atol=1e-5), name
    train = [r for r in read_metrics(resumed / "metrics.jsonl") if r["type"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4, 5, 6]


@needs_gloo
def test_two_process_checkpoint_resumes_in_one_process(runs, voc_root, tmp_path):
    _, two, _ = runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    args = [*TRAIN, "--data", str(voc_root), "--output", str(run), "--resume", "--max-iters", "6"]
    assert main(args) == 0  # the last --max-iters counts
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    records = read_metrics(run / "metrics.jsonl")
    assert [r["iteration"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in records if r["type"] == "train"][4:] == pytest.approx([0.001, 0.001])  # 1 process: lr 0.01 x 1, x0.1 after 3
    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(run / "checkpoints" / "last.pt"), "--data", str(voc_root), "--output", str(out), "--quiet"]) == 0
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["mAP"] <= 1.0


# -- one process: the pieces -----------------------------------------------------------------------------
def test_sharded_batches_are_slices_of_the_global_batches():
    group_ids = [0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1]  # 3 portrait, 8 landscape
    sampler = EpochSampler(len(group_ids), shuffle=True, seed=5)
    global_batches = list(GroupedBatchSampler(sampler, group_ids, 4))
    shards = [ShardedBatchSampler(GroupedBatchSampler(sampler, group_ids, 4), 2, rank) for rank in (0, 1)]
    per_rank = [list(shard) for shard in shards]
    assert len(shards[0]) == len(shards[1]) == len(global_batches) == len(per_rank[0]) == len(per_rank[1])
    for batch, first, second in zip(global_batches, *per_rank):
        assert len(first) == len(second) == -(-len(batch) // 2)  # equal sizes, never empty
        assert len({group_ids[i] for i in first + second}) == 1  # aspect-ratio groups are kept
        if len(batch) == 4:
            assert first + second == batch  # a full global batch: disjoint halves, in order
        else:
            assert set(first + second) == set(batch)  # an incomplete one: padded by repeating its indices
    assert sorted(i for b in global_batches for i in b) == list(range(len(group_ids)))
    assert list(ShardedBatchSampler(GroupedBatchSampler(sampler, group_ids, 4), 1, 0)) == global_batches
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(global_batches, 2, 2)


def test_loader_shards_carry_the_global_batch_seeds(voc_root):
    dataset = VOCDataset(voc_root, split="train")
    single = build_loader(dataset, batch_size=4, shuffle=True, seed=3)
    shards = [build_loader(dataset, batch_size=2, shuffle=True, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    for loader in (single, *shards):
        loader.batch_sampler.set_epoch(1, start_batch=1)  # resuming mid-epoch works per shard too
    expected = [list(b) for b in single.batch_sampler]
    got = [first + second for first, second in zip(*(s.batch_sampler for s in shards))]
    assert got == expected and len(expected) == 1
    assert all(seed == mix_seed(3, 1, index) for index, seed in expected[0])


def test_per_image_generators_sample_an_image_whatever_its_batch():
    labels = torch.randint(-1, 2, (4, 300), generator=torch.Generator().manual_seed(0))
    labels[2:, 250:] = -1  # images 2 and 3 have 250 candidates: padding (IGNORE) after them

    def gens(first, n):
        return [torch.Generator().manual_seed(100 + first + j) for j in range(n)]

    pos, neg = sample_labels(labels, 32, 0.25, gens(0, 4))
    pos2, neg2 = sample_labels(labels[2:, :260], 32, 0.25, gens(2, 2))  # another batch, narrower padding
    assert torch.equal(pos[2:, :260], pos2) and torch.equal(neg[2:, :260], neg2)
    assert (pos.sum(1) == torch.minimum((labels == POSITIVE).sum(1), torch.tensor(8))).all()
    assert ((pos | neg).sum(1) == 32).all() and not (neg & (labels != NEGATIVE)).any()
    with pytest.raises(ValueError, match="one per row"):
        sample_labels(labels, 32, 0.25, gens(0, 3))


def _same_size_batch():
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    boxes = [[4.0, 6.0, 40.0, 44.0], [20.0, 10.0, 60.0, 50.0], [8.0, 30.0, 30.0, 60.0], [2.0, 2.0, 62.0, 62.0]]
    targets = [{"boxes": torch.tensor([b]), "labels": torch.tensor([1 + i % 3])} for i, b in enumerate(boxes)]
    return images, targets


def test_mean_of_half_batch_losses_is_the_batch_loss():
    # The premise of data-parallel equality: with per-image generators, equal sample counts per image
    # and BatchNorm statistics that do not depend on the batch, the loss of the batch of 4 is the mean
    # of the losses of its halves.
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("tiny", num_classes=3, min_size=64, max_size=96, rpn_batch_size_per_image=64, box_batch_size_per_image=16)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    images, targets = _same_size_batch()

    def gens(first, n):
        return [torch.Generator().manual_seed(mix_seed(7, first + j)) for j in range(n)]

    whole = model(images, targets, generator=gens(0, 4))
    halves = [model(images[i : i + 2], targets[i : i + 2], generator=gens(i, 2)) for i in (0, 2)]
    for name, value in whole.items():
        assert float(value.detach()) == pytest.approx((float(halves[0][name].detach()) + float(halves[1][name].detach())) / 2, abs=1e-6), name


def test_losses_and_detections_are_float32_under_bf16_autocast():
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("tiny", num_classes=3, min_size=64, max_size=96)
    images, targets = _same_size_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.backbone(torch.rand(1, 3, 64, 64))["0"]
        losses = model(images, targets, generator=[torch.Generator().manual_seed(i) for i in range(4)])
    assert features.dtype == torch.bfloat16  # autocast is on: convolutions run in bf16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        detections = model(images[:2])
    assert all(d["boxes"].dtype == d["scores"].dtype == torch.float32 for d in detections)


def test_one_amp_training_iteration_on_cpu(voc_root, tmp_path):
    dataset = VOCDataset(voc_root, split="train")
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("tiny", num_classes=len(dataset.classes), min_size=64, max_size=96)
    config = TrainConfig(batch_size=2, lr=0.01, warmup_iters=0, max_iters=1, amp=True, log_every=1)
    trainer = Trainer(model, dataset, config=config, output_dir=tmp_path, preset="tiny", class_names=dataset.classes, quiet=True)
    assert trainer.amp_dtype == torch.bfloat16 and trainer.scaler is None
    trainer.train()
    (record,) = read_metrics(tmp_path / "metrics.jsonl")
    assert record["type"] == "train" and all(record[k] == record[k] and abs(record[k]) < 1e3 for k in record if k.startswith("loss"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ConfigError, match="bf16 only"):
        Trainer(model, dataset, config=TrainConfig(amp=True, amp_dtype="fp16"), output_dir=tmp_path, preset="tiny", class_names=dataset.classes)


def test_helpers_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.launched_by_torchrun() and not distributed.is_distributed()
    assert (distributed.get_rank(), distributed.get_world_size(), distributed.is_main_process()) == (0, 1, True)
    assert distributed.init_distributed("cpu") == torch.device("cpu")
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}] and distributed.gather_object(3) == [3]
    assert distributed.broadcast_object("x") == "x"
    t = torch.ones(2)
    assert distributed.all_reduce_sum(t) is t
    distributed.barrier()
    model = nn.Linear(2, 2)
    assert distributed.wrap_model(model, torch.device("cpu")) is model and distributed.unwrap_model(model) is model
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="cuda:LOCAL_RANK"):
        distributed.init_distributed("cuda:1")


def test_torchrun_variables_that_do_not_fit_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(ConfigError, match=r"^environment variable WORLD_SIZE='abc' is not an integer \(start the job with torchrun\)$"):
        distributed.launched_by_torchrun()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match=r"RANK=2, WORLD_SIZE=2, LOCAL_RANK=0 do not fit together"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match=r"^environment variable MASTER_ADDR is not set \(start the job with torchrun, which sets it\)$"):
        distributed.init_distributed("cpu")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "http")
    with pytest.raises(ConfigError, match=r"^environment variable MASTER_PORT='http' is not an integer"):
        distributed.init_distributed("cpu")
    assert not distributed.is_distributed()


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    reference.load_state_dict(body.state_dict())
    batchnorm = body[1]
    converted = distributed.convert_sync_batchnorm(body, torch.device("cpu"))
    assert isinstance(converted[1], distributed.CPUSyncBatchNorm)
    assert converted[1].weight is batchnorm.weight and converted[1].running_mean is batchnorm.running_mean  # shared
    assert list(converted.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(converted(x), reference(x), atol=1e-6)
    assert torch.allclose(converted[1].running_var, reference[1].running_var)


def test_cli_options(tmp_path):
    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["train"].format_help()
    for option in ("--amp", "--amp-dtype", "--sync-bn", "--no-scale-lr", "torchrun"):
        assert option in text, option
    args = parser.parse_args(["train", "--data", "x", "--preset", "tiny", "--output", str(tmp_path), "--amp", "--amp-dtype", "fp16", "--sync-bn", "--no-scale-lr"])
    _, _, train = resolve_run_config(args.preset, overrides=overrides_of(args))
    assert (train.amp, train.amp_dtype, train.sync_bn, train.scale_lr) == (True, "fp16", True, False)
    args = parser.parse_args(["train", "--data", "x", "--preset", "tiny", "--output", str(tmp_path)])
    _, _, train = resolve_run_config(args.preset, overrides=overrides_of(args))
    assert (train.amp, train.amp_dtype, train.sync_bn, train.scale_lr) == (False, "bf16", False, True)


def test_fp16_on_the_cpu_is_a_one_line_error(voc_root, tmp_path, capsys):
    args = [*TRAIN, "--data", str(voc_root), "--output", str(tmp_path / "run"), "--amp", "--amp-dtype", "fp16", "--no-val"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fasterrcnn: error: mixed precision on the CPU runs in bf16 only")
