"""Trainer, schedule, checkpoint and logging tests with a small fake detector (fast, CPU)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from torch import nn

from fasterrcnn.config import ModelConfig, TrainConfig, replace
from fasterrcnn.data.synthetic import write_synthetic_voc
from fasterrcnn.data.transforms import RandomHorizontalFlip
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.checkpoint import Checkpoint, load_checkpoint
from fasterrcnn.engine.evaluator import evaluate_model
from fasterrcnn.engine.logging import read_metrics
from fasterrcnn.engine.trainer import NonFiniteLossError, Trainer, TrainingFailed
from fasterrcnn.errors import ConfigError, DataError


class FakeDetector(nn.Module):
    """Losses that depend on the image pixels, the (possibly flipped) boxes and a sampling generator."""

    def __init__(self, num_classes: int = 5, nan_after: int | None = None):
        super().__init__()
        self.config = ModelConfig(backbone="tiny", num_classes=num_classes)  # what checkpoints record
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4 + 4, num_classes + 1)
        self.generator = torch.Generator()
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, images, targets=None):
        feats = torch.stack([self.conv(image[None]).mean(dim=(0, 2, 3)) for image in images])  # [N, 4]
        if not self.training:
            return [
                {
                    "boxes": t_boxes,
                    "labels": torch.ones(len(t_boxes), dtype=torch.int64),
                    "scores": torch.full((len(t_boxes),), 0.9),
                }
                for t_boxes in [torch.tensor([[2.0, 2.0, 30.0, 30.0]]) for _ in images]
            ]
        self.calls += 1
        boxes = torch.stack([t["boxes"][0] / 64.0 for t in targets])  # [N, 4]
        noise = torch.rand(len(images), 4, generator=self.generator)
        logits = self.head(torch.cat([feats, boxes + noise], dim=1))
        labels = torch.stack([t["labels"][0] for t in targets])
        loss_classifier = nn.functional.cross_entropy(logits, labels)
        loss_box_reg = (feats - boxes).pow(2).mean()
        if self.nan_after is not None and self.calls > self.nan_after:
            loss_box_reg = loss_box_reg * float("nan")
        return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("voc"), num_train=6, num_test=3, image_size=(64, 64), seed=0)


def make_trainer(voc_root, output_dir, *, config: TrainConfig, model=None, evaluate=None):
    dataset = VOCDataset(voc_root, split="train", transforms=RandomHorizontalFlip(config.hflip_prob))
    torch.manual_seed(0)
    model = model or FakeDetector(len(dataset.classes))
    return Trainer(
        model,
        dataset,
        config=config,
        output_dir=output_dir,
        preset="fake",
        class_names=dataset.classes,
        evaluate=evaluate,
        quiet=True,
    )


CONFIG = TrainConfig(
    batch_size=2, lr=0.05, warmup_iters=2, lr_steps=(5,), max_iters=8, log_every=2, checkpoint_every=4, seed=3
)


# -- trainer -------------------------------------------------------------------------------------------
def test_training_writes_outputs_and_logs(voc_root, tmp_path):
    trainer = make_trainer(voc_root, tmp_path, config=CONFIG)
    assert trainer.batches_per_epoch == 3 and trainer.max_iters == 8
    summary = trainer.train()
    assert summary["iteration"] == 8 and summary["epoch"] == 2  # 3 batches per epoch: 8 = 3 + 3 + 2
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iter_0000004.pt", "iter_0000008.pt", "last.pt"]
    assert (tmp_path / "results.png").stat().st_size > 0  # drawn at the end without any evaluation
    assert (tmp_path / "results.csv").read_text() == "iteration\n" and not (tmp_path / "per_class.csv").exists()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [2, 4, 6, 8]
    assert all(r["type"] == "train" for r in records)
    first = records[0]
    assert set(first) == {"type", "iteration", "epoch", "lr", "loss", "loss_classifier", "loss_box_reg", "time"}
    assert first["lr"] == pytest.approx(0.05 * (1 / 3 + (2 / 3) * 0.5))  # lr of iteration index 1 (2nd step)
    assert records[-1]["lr"] == pytest.approx(0.005)  # after the step at 5
    assert first["loss"] == pytest.approx(first["loss_classifier"] + first["loss_box_reg"])
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["iteration"] == 8 and state["epoch"] == 2 and state["epoch_iteration"] == 2
    assert state["scheduler"] == {"iteration": 8, "warmup_iters": 2, "lr_steps": [5]}
    assert state["class_names"] == list(VOCDataset(voc_root, split="train").classes)
    assert state["config"]["preset"] == "fake"
    assert set(state["rng"]) == {"torch", "python", "numpy", "model_generator"}


def test_a_schedule_written_for_another_length_follows_the_run(voc_root, tmp_path):
    from fasterrcnn.config import get_preset

    tiny = get_preset("tiny").train  # warm-up 100, step 900 of 1200
    dataset = VOCDataset(voc_root, split="train")  # 6 images: 3 batches of 2

    def placed(fixed=(), **fields):
        config = replace(tiny, batch_size=2, **fields)
        trainer = Trainer(
            FakeDetector(len(dataset.classes)), dataset, config=config, output_dir=tmp_path, preset="fake",
            class_names=dataset.classes, schedule_length=tiny.max_iters, fixed_schedule=fixed, quiet=True,
        )  # fmt: skip
        assert trainer.checkpoint().train_config == trainer.config  # checkpoints record the placed schedule
        return trainer.config.warmup_iters, trainer.config.lr_steps

    assert placed(max_iters=400) == (33, (300,))
    assert placed(max_iters=2400) == (100, (1800,))
    assert placed(epochs=100) == (25, (225,))  # 300 iterations
    assert placed(fixed=("lr_steps",), max_iters=400, lr_steps=(350,)) == (33, (350,))
    assert placed(fixed=("warmup_iters", "lr_steps"), max_iters=400) == (100, (900,))


def test_epochs_set_the_number_of_iterations(voc_root, tmp_path):
    trainer = make_trainer(voc_root, tmp_path, config=replace(CONFIG, epochs=2, max_iters=1))
    assert trainer.max_iters == 6


@pytest.mark.parametrize("recipe", [{}, {"ema_decay": 0.9}], ids=["plain", "ema"])
def test_resume_gives_identical_weights(voc_root, tmp_path, recipe):
    config = replace(CONFIG, **recipe)
    full = make_trainer(voc_root, tmp_path / "full", config=config)
    full.train()

    half = make_trainer(voc_root, tmp_path / "half", config=replace(config, max_iters=4))
    half.train()
    # a fresh process state: different global RNG, different model init
    torch.manual_seed(1234)
    resumed = make_trainer(voc_root, tmp_path / "half", config=config, model=FakeDetector(5))
    last = tmp_path / "half" / "checkpoints" / "last.pt"
    resumed.resume(Checkpoint.read(last), last)
    assert resumed.state.iteration == 4 and resumed.state.epoch == 1 and resumed.state.epoch_iteration == 1
    resumed.train()

    full_params = dict(full.model.named_parameters())
    for name, param in resumed.model.named_parameters():
        assert torch.equal(param, full_params[name]), name
    if recipe:  # the average too, and the files hold it as their model, the trained weights beside it
        assert resumed.ema.updates == full.ema.updates == 8
        saved = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
        for name, value in full.ema.state_dict().items():
            assert torch.equal(resumed.ema.state_dict()[name], value) and torch.equal(saved["model"][name], value), name
        assert not torch.equal(saved["model"]["head.weight"], saved["ema"]["model"]["head.weight"])
        assert torch.equal(saved["ema"]["model"]["head.weight"], full_params["head.weight"])
    for key, value in full.optimizer.state_dict()["state"].items():
        assert torch.equal(resumed.optimizer.state_dict()["state"][key]["momentum_buffer"], value["momentum_buffer"])
    # the resumed run's metrics.jsonl continues the first half's records without duplicates
    records = read_metrics(tmp_path / "half" / "metrics.jsonl")
    assert [r["iteration"] for r in records if r["type"] == "train"] == [2, 4, 6, 8]


def test_ema_warms_its_decay_up_and_averages_every_floating_point_tensor():
    from fasterrcnn.engine.ema import ModelEMA, ema_decay

    assert [ema_decay(0.9, u) for u in (1, 2, 8, 100)] == pytest.approx([2 / 11, 3 / 12, 0.5, 0.9])
    model = nn.BatchNorm1d(1)
    ema = ModelEMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(2.0)
        model.num_batches_tracked.fill_(7)
    ema.update(model)  # d = 2/11: 2/11 x 1 + 9/11 x 3 (weight), 2/11 x 0 + 9/11 x 2 (running mean)
    assert ema.module.weight.item() == pytest.approx(29 / 11) and ema.module.running_mean.item() == pytest.approx(18 / 11)
    assert ema.module.num_batches_tracked.item() == 7 and not ema.module.weight.requires_grad and not ema.module.training


def test_ema_is_what_validation_sees(voc_root, tmp_path):
    seen = []

    def evaluate(model):
        seen.append({name: p.clone() for name, p in model.named_parameters()})
        return {"mAP": 0.5}

    trainer = make_trainer(voc_root, tmp_path, config=replace(CONFIG, ema_decay=0.5, max_iters=2), evaluate=evaluate)
    trainer.train()
    assert all(torch.equal(seen[-1][name], value) for name, value in trainer.ema.state_dict().items() if name in seen[-1])
    assert not torch.equal(seen[-1]["head.weight"], trainer.model.head.weight)
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert torch.equal(best["model"]["head.weight"], seen[-1]["head.weight"])


def test_nonfinite_losses_skip_steps_then_stop(voc_root, tmp_path):
    config = replace(CONFIG, max_iters=20, checkpoint_every=2, max_nonfinite_steps=3)
    trainer = make_trainer(voc_root, tmp_path, config=config, model=FakeDetector(5, nan_after=3))
    with pytest.raises(TrainingFailed, match="^training stopped at iteration 6: the loss .* 3 consecutive iterations") as info:
        trainer.train()
    assert isinstance(info.value.__cause__, NonFiniteLossError)
    # iterations 4, 5, 6 were non-finite: the weights did not change after iteration 3, and last.pt has them
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["iteration"] == 6 and info.value.checkpoint == tmp_path / "checkpoints" / "last.pt"
    before = load_checkpoint(tmp_path / "checkpoints" / "iter_0000004.pt")  # after the skipped iteration 4
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param, state["model"][name]) and torch.equal(param, before["model"][name]), name
        assert torch.isfinite(param).all()
    skips = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "skip"]
    assert [(r["iteration"], r["consecutive"]) for r in skips] == [(4, 1), (5, 2), (6, 3)]
    assert skips[0]["losses"]["loss_box_reg"] is None and math.isfinite(skips[0]["losses"]["loss_classifier"])


def test_periodic_evaluation_keeps_best_checkpoint(voc_root, tmp_path):
    val = VOCDataset(voc_root, split="test", classes=VOCDataset(voc_root, split="train").classes)
    scores = iter([0.5, 0.25, 0.75])

    def evaluate(model):
        results, metrics = evaluate_model(model, val, metric="voc", class_names=val.classes)
        assert model.training  # evaluate_model restores the mode
        assert {r["image_id"] for r in results} == set(val.ids)
        return {**metrics, "mAP": next(scores)}

    config = replace(CONFIG, max_iters=6, eval_every=2, checkpoint_every=100)
    trainer = make_trainer(voc_root, tmp_path, config=config, evaluate=evaluate)
    summary = trainer.train()
    assert summary["best_metric"] == 0.75 and summary["metrics"]["mAP"] == 0.75
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["iteration"] == 6 and best["best_metric"] == 0.75
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "eval"]
    assert [(r["iteration"], r["mAP"]) for r in evals] == [(2, 0.5), (4, 0.25), (6, 0.75)]
    assert set(evals[0]["per_class"]) <= set(val.classes)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["best.pt", "last.pt"]


def test_patience_stops_after_evaluations_without_improvement_and_keeps_best(voc_root, tmp_path):
    scores = iter([0.5, 0.5, 0.9])  # an equal metric is no improvement; 0.9 at iteration 3 is never reached

    def evaluate(model):
        return {"mAP": next(scores), "metric": "voc"}

    config = replace(CONFIG, max_iters=6, eval_every=1, checkpoint_every=100, patience=1)
    summary = make_trainer(voc_root, tmp_path, config=config, evaluate=evaluate).train()
    assert summary["iteration"] == 2 and summary["best_metric"] == 0.5
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["iteration"] == 1
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == 2
    assert [r["iteration"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["type"] == "eval"] == [1, 2]


def test_invalid_config_is_a_config_error(voc_root, tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.batch_size = 0: must be >= 1$"):
        make_trainer(voc_root, tmp_path, config=replace(CONFIG, batch_size=0))
    with pytest.raises(ConfigError, match=r"^train\.lr = -1\.0: must be > 0$"):
        make_trainer(voc_root, tmp_path, config=replace(CONFIG, lr=-1.0))


def test_metrics_jsonl_is_one_json_object_per_line(voc_root, tmp_path):
    make_trainer(voc_root, tmp_path, config=replace(CONFIG, max_iters=3, log_every=1)).train()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert [json.loads(line)["iteration"] for line in lines] == [1, 2, 3]


class StoppedWithItsWorker(VOCDataset):
    """In a data-loading worker, its 5th sample (the first of the 3rd batch) is never delivered: after a
    pause (the main process runs out of batches and waits), the worker sends SIGTERM to the main process
    and to itself, as a signal to the whole process group does."""

    loaded = 0

    def __getitem__(self, index):
        if torch.utils.data.get_worker_info() is not None:
            StoppedWithItsWorker.loaded += 1
            if StoppedWithItsWorker.loaded == 5:
                import signal
                import time

                time.sleep(1.0)
                os.kill(os.getppid(), signal.SIGTERM)
                os.kill(os.getpid(), signal.SIGTERM)
        return super().__getitem__(index)


def trainer_with_a_worker(dataset: VOCDataset, tmp_path) -> Trainer:
    """A trainer of ``dataset`` whose batches come from one data-loading worker process."""
    torch.manual_seed(0)
    return Trainer(
        FakeDetector(len(dataset.classes)), dataset, config=replace(CONFIG, hflip_prob=0.0), output_dir=tmp_path,
        preset="fake", class_names=dataset.classes, num_workers=1, quiet=True,
    )  # fmt: skip


def test_a_signal_that_also_ends_the_workers_stops_before_the_missing_batch(voc_root, tmp_path):
    import signal

    from fasterrcnn.engine.trainer import TrainingInterrupted

    trainer = trainer_with_a_worker(StoppedWithItsWorker(voc_root, split="train"), tmp_path)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGCHLD)}
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert (info.value.signum, info.value.iteration) == (signal.SIGTERM, 2)  # the 3rd batch never came
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == 2
    # SIGTERM and SIGCHLD (PyTorch's, once its first worker started) are handled as before
    assert signal.getsignal(signal.SIGTERM) == handlers[signal.SIGTERM]
    assert signal.getsignal(signal.SIGCHLD).__module__ == "torch.utils.data._utils.signal_handling"


class OutlivedByItsWorker(VOCDataset):
    """In a data-loading worker, its 5th sample sends SIGTERM to the main process and is delivered; the
    worker itself ends on SIGTERM a second later, after the main process has stopped (a signal to the
    whole process group reaches a busy worker late)."""

    loaded = 0

    def __getitem__(self, index):
        if torch.utils.data.get_worker_info() is not None:
            OutlivedByItsWorker.loaded += 1
            if OutlivedByItsWorker.loaded == 5:
                import signal
                import threading

                os.kill(os.getppid(), signal.SIGTERM)
                threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return super().__getitem__(index)


def test_a_worker_ending_after_the_stop_is_not_reported_as_a_crash(voc_root, tmp_path):
    """Restored after the stop, PyTorch's SIGCHLD handler must not see the late end of a worker: it would
    raise "DataLoader worker ... is killed by signal" wherever the program is by then."""
    import signal
    import time

    from fasterrcnn.engine.trainer import TrainingInterrupted

    trainer = trainer_with_a_worker(OutlivedByItsWorker(voc_root, split="train"), tmp_path)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert info.value.signum == signal.SIGTERM
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["iteration"] == info.value.iteration
    time.sleep(2.0)  # the worker's own SIGTERM is due 1 s after the main process's
    assert signal.getsignal(signal.SIGCHLD).__module__ == "torch.utils.data._utils.signal_handling"


def test_resume_from_another_model_names_the_keys_and_shapes(voc_root, tmp_path):
    half = make_trainer(voc_root, tmp_path / "half", config=replace(CONFIG, max_iters=4))
    half.train()
    other = make_trainer(voc_root, tmp_path / "other", config=CONFIG, model=FakeDetector(7))
    with pytest.raises(DataError) as info:
        other.resume(Checkpoint.read(tmp_path / "half" / "checkpoints" / "last.pt"), tmp_path / "half" / "checkpoints" / "last.pt")
    assert str(info.value) == (
        f"{tmp_path / 'half' / 'checkpoints' / 'last.pt'}: weights do not fit this model: "
        "wrong shapes: head.weight is [6, 8], expected [8, 8], head.bias is [6], expected [8]"
    )
