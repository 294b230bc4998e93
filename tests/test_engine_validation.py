"""Validation losses (engine/validation.py): values, an untouched model and RNG, and their place in a training run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fasterrcnn.cli import main
from fasterrcnn.data.synthetic import write_synthetic_voc
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.engine.logging import read_metrics
from fasterrcnn.engine.validation import loss_mode, validation_losses
from fasterrcnn.modeling.faster_rcnn import FasterRCNN

LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")
VAL_KEYS = {"val_loss", *(f"val_{name}" for name in LOSSES)}
SMALL = ["--set", "model.min_size=64", "--set", "model.max_size=96", "--batch-size", "2", "--quiet"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=6, num_test=3, image_size=(64, 64), seed=2)


@pytest.fixture(scope="module")
def val_set(voc_root):
    return VOCDataset(voc_root, split="test")


def tiny_model(num_classes: int) -> FasterRCNN:
    torch.manual_seed(0)
    model = FasterRCNN.from_preset("tiny", num_classes=num_classes, min_size=64, max_size=96)
    model.generator = torch.Generator().manual_seed(5)
    return model


def snapshot(model: nn.Module) -> dict:
    """Everything a validation pass could change: tensors, modes, gradients, generators, global RNG."""
    return {
        "state": {name: value.clone() for name, value in model.state_dict(keep_vars=False).items()},
        "modes": {name: module.training for name, module in model.named_modules()},
        "grads": [p.grad for p in model.parameters()],
        "generator": (model.generator, model.generator.get_state()),
        "torch_rng": torch.get_rng_state(),
    }


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    for name, value in before["state"].items():
        assert torch.equal(after["state"][name], value), name  # bit-identical, BN running stats included
    assert after["modes"] == before["modes"]
    assert all(g is None for g in after["grads"]) and all(g is None for g in before["grads"])
    assert after["generator"][0] is before["generator"][0]
    assert torch.equal(after["generator"][1], before["generator"][1])
    assert torch.equal(after["torch_rng"], before["torch_rng"])


def test_loss_mode_trains_the_detection_logic_and_keeps_bn_and_dropout_in_eval():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2)))
    model.eval()
    model[2].train()  # a mixed state must come back as it was
    before = {name: m.training for name, m in model.named_modules()}
    with loss_mode(model):
        assert model.training and model[0].training and model[2].training and model[2][1].training
        assert not model[1].training and not model[2][0].training
    assert {name: m.training for name, m in model.named_modules()} == before


@pytest.mark.parametrize("start_mode", ["train", "eval"])
def test_validation_losses_leave_the_model_and_the_rngs_untouched(val_set, start_mode):
    model = tiny_model(len(val_set.classes))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the tiny backbone has running statistics
    getattr(model, start_mode)()
    before = snapshot(model)
    losses = validation_losses(model, val_set, batch_size=2, seed=11)
    assert set(losses) == VAL_KEYS
    assert all(torch.isfinite(torch.tensor(v)) and v >= 0 for v in losses.values())
    assert losses["val_loss"] == pytest.approx(sum(losses[f"val_{name}"] for name in LOSSES), rel=1e-12)
    assert_unchanged(model, before)
    assert validation_losses(model, val_set, batch_size=2, seed=11) == losses  # its own seeded sampling
    assert_unchanged(model, before)

    # The check is sensitive: a plain training-mode forward pass does change the BatchNorm statistics.
    images, targets = zip(*(val_set[i] for i in range(2)))
    model.train()
    with torch.no_grad():
        model(list(images), list(targets))
    changed = [n for n, v in before["state"].items() if "running_" in n and not torch.equal(model.state_dict()[n], v)]
    assert changed


def test_validation_losses_are_the_training_losses_with_bn_statistics(val_set):
    """Equal to the losses of a training-mode pass whose BatchNorm layers use their running statistics."""
    model = tiny_model(len(val_set.classes))
    losses = validation_losses(model, val_set, batch_size=len(val_set), seed=3)
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    images, targets = zip(*(val_set[i] for i in range(len(val_set))))
    with torch.no_grad():
        expected = model(list(images), list(targets), generator=torch.Generator().manual_seed(3))
    assert losses == {"val_loss": sum(float(v) for v in expected.values()), **{f"val_{k}": float(v) for k, v in expected.items()}}


def test_an_empty_dataset_has_no_validation_losses():
    model = tiny_model(2)
    assert validation_losses(model, []) == {}


def test_training_logs_validation_losses_and_they_do_not_change_the_run(voc_root, tmp_path, monkeypatch):
    from fasterrcnn.evaluation import plots

    drawn = []
    original_plot = plots.plot_results
    monkeypatch.setattr(plots, "plot_results", lambda records, path: (drawn.append(list(records)), original_plot(records, path)))
    common = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--seed", "7", "--log-every", "1", *SMALL]
    # a schedule of its own: the preset's would be placed on each run's length, and the 2-iteration run
    # resumed to 4 below must have the 4-iteration run's schedule
    common += ["--set", "train.warmup_iters=1", "--set", "train.lr_steps=[3]"]
    validated = common + ["--eval-every", "2", "--checkpoint-every", "2"]
    assert main(validated + ["--output", str(tmp_path / "full"), "--max-iters", "4"]) == 0

    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iteration"] for r in evals] == [2, 4]
    for record in evals:
        assert VAL_KEYS <= set(record) and "mAP" in record
        assert all(isinstance(record[k], float) and record[k] >= 0 for k in VAL_KEYS)
    assert not any(k.startswith("val_") for r in records if r["type"] == "train" for k in r)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "full" / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"val/loss", *(f"val/{name}" for name in LOSSES)} <= scalars
    assert {f"train/{name}" for name in LOSSES} <= scalars
    assert [e.step for e in events.Scalars("val/loss_classifier")] == [2, 4]
    assert [e.value for e in events.Scalars("val/loss")] == pytest.approx([r["val_loss"] for r in evals])

    assert drawn and (tmp_path / "full" / "results.png").stat().st_size > 0
    last_plot = drawn[-1]  # results.png at the end: the training losses and the validation losses
    assert {k for r in last_plot for k in r if k.startswith("val_loss")} == VAL_KEYS
    assert {k for r in last_plot for k in r if k.startswith("loss")} == {"loss", *LOSSES}

    # Validation (mAP and losses) changes nothing of the training: same weights without it, and
    # a run resumed from iteration 2 (after its validation) ends with the same weights.
    assert main(common + ["--no-val", "--output", str(tmp_path / "no_val"), "--max-iters", "4"]) == 0
    assert main(validated + ["--output", str(tmp_path / "half"), "--max-iters", "2"]) == 0
    torch.manual_seed(999)
    assert main(validated + ["--output", str(tmp_path / "half"), "--max-iters", "4", "--resume"]) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    for other in ("no_val", "half"):
        weights = load_checkpoint(tmp_path / other / "checkpoints" / "last.pt")["model"]
        assert weights.keys() == full.keys()
        for name, value in full.items():
            assert torch.equal(value, weights[name]), (other, name)
    resumed = [r for r in read_metrics(tmp_path / "half" / "metrics.jsonl") if r["type"] == "eval"]
    assert [{k: r[k] for k in VAL_KEYS} for r in resumed] == [{k: r[k] for k in VAL_KEYS} for r in evals]


class RandomLossModel(nn.Module):
    """A stand-in detector whose training-mode losses draw from torch's global RNG and its generator."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.generator = torch.Generator().manual_seed(1)

    def forward(self, images, targets=None):
        noise = torch.rand(()) + torch.rand((), generator=self.generator)
        return {"loss_a": self.scale * noise, "loss_b": self.scale * len(targets[0]["boxes"])}


def test_the_global_rng_and_the_models_generator_are_left_as_they_were(val_set):
    model = RandomLossModel()
    torch.manual_seed(4)
    rng, generator_state = torch.get_rng_state(), model.generator.get_state()
    losses = validation_losses(model, val_set)
    assert set(losses) == {"val_loss", "val_loss_a", "val_loss_b"}
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model.generator.get_state(), generator_state)
    assert model.training


def test_every_evaluation_row_has_the_training_losses_up_to_it(voc_root, tmp_path):
    """Evaluations off the log_every grid (every 2 iterations, records every 3) still get a train record
    just before them, so each results.csv row has the training losses since the previous row."""
    import csv

    args = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--seed", "7", *SMALL]
    assert main(args + ["--log-every", "3", "--eval-every", "2", "--max-iters", "4", "--output", str(tmp_path / "run")]) == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["iteration"] for r in records if r["type"] == "train"] == [2, 3, 4]
    rows = list(csv.DictReader((tmp_path / "run" / "results.csv").open()))
    assert [row["iteration"] for row in rows] == ["2", "4"]
    train = {r["iteration"]: r for r in records if r["type"] == "train"}
    assert float(rows[0]["loss"]) == pytest.approx(train[2]["loss"], rel=1e-5)
    assert float(rows[1]["loss"]) == pytest.approx((train[3]["loss"] + train[4]["loss"]) / 2, rel=1e-5)  # 1 iteration each
