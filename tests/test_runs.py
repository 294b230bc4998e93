"""The run layer (fasterrcnn.runs): whole runs from Python, and the rules that keep a user's files safe.

Tiny preset on 48-64 px synthetic images, a few iterations, CPU.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest
import torch

import fasterrcnn
from fasterrcnn.cli import main
from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc
from fasterrcnn.engine.checkpoint import Checkpoint, load_checkpoint
from fasterrcnn.engine.logging import read_metrics
from fasterrcnn.engine.report import REPORT_FILES
from fasterrcnn.engine.trainer import TrainingFailed
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.runs import EvalResult, PredictResult, RunFolder, TrainingData, TrainResult, ValidationData, compress, evaluate, predict, train

SMALL = {"model.min_size": 48, "model.max_size": 64}
FAST = dict(preset="tiny", overrides=SMALL, batch_size=2, device="cpu", quiet=True, val=False)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=4, num_test=2, image_size=(48, 48), seed=3)


@pytest.fixture(scope="module")
def trained(voc_root, tmp_path_factory):
    """A run of 2 iterations, validated on the test split, trained from Python."""
    run = tmp_path_factory.mktemp("runs") / "run"
    return train(TrainingData(voc_root, split="train"), run, **{**FAST, "val": None}, max_iters=2)


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# -- the Python API --------------------------------------------------------------------------------------------
def test_train_evaluate_predict_compress_from_python(trained, voc_root, tmp_path):
    assert isinstance(trained, TrainResult)
    assert trained.iteration == 2 and trained.last == trained.run_dir / "checkpoints" / "last.pt"
    assert trained.best == trained.run_dir / "checkpoints" / "best.pt" and trained.metrics["metric"] == "voc"
    assert trained.best_metric == trained.metrics["mAP"] and trained.skipped == 0
    assert Checkpoint.read(trained.last).iteration == 2
    config = json.loads((trained.run_dir / "config.json").read_text())
    assert config["preset"] == "tiny" and config["model"]["min_size"] == 48 and config["class_names"] == list(SYNTHETIC_CLASSES)
    assert trained.files == tuple(trained.run_dir / name for name in sorted(os.listdir(trained.run_dir)) if name != ".lock")
    assert {"config.json", "checkpoints", "log.txt", "metrics.jsonl", "results.csv", "results.png", "samples.jpg"} <= {p.name for p in trained.files}

    result = evaluate(voc_root, weights=trained.last, output=tmp_path / "eval", device="cpu", quiet=True)
    assert isinstance(result, EvalResult) and result.metric == "voc" and result.num_images == 2
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["mAP"] == pytest.approx(result.metrics["mAP"]) and written["data"]["split"] == "test"
    assert sorted(os.listdir(tmp_path / "eval")) == sorted(["metrics.json", "pr_curves.png", "detections.json", *REPORT_FILES])
    assert sorted(result.files) == sorted(tmp_path / "eval" / name for name in os.listdir(tmp_path / "eval"))
    assert result.report.rows[0]["class"] == SYNTHETIC_CLASSES[0] and result.report.table().startswith("class")
    assert evaluate(voc_root, weights=trained.last, device="cpu", quiet=True).metrics["mAP"] == result.metrics["mAP"]  # no output: nothing written

    images = sorted((voc_root / "JPEGImages").iterdir())[:2]
    found = predict(trained.last, images, score_threshold=0.0, device="cpu", quiet=True)
    assert isinstance(found, PredictResult) and list(found.detections) == images and found.output is None
    assert all(0.0 <= d.score <= 1.0 and d.class_name in SYNTHETIC_CLASSES for ds in found.detections.values() for d in ds)

    layers = compress(trained.last, tmp_path / "svd.pt", ranks=(8, 4))
    assert [(layer["name"], layer["rank"]) for layer in layers] == [("fc6", 8), ("fc7", 4)]
    compressed = Checkpoint.read(tmp_path / "svd.pt")
    assert compressed.model_config.box_head_ranks == (8, 4) and compressed.training == {}
    with pytest.raises(ConfigError, match="--overwrite"):
        compress(trained.last, tmp_path / "svd.pt")


def test_the_package_exposes_the_runs():
    assert (fasterrcnn.train, fasterrcnn.evaluate, fasterrcnn.predict, fasterrcnn.compress) == (train, evaluate, predict, compress)


def test_data_sets_satisfy_the_protocol(voc_root):
    from fasterrcnn.data import DetectionDataset, build_dataset

    dataset = build_dataset(voc_root, split="train")
    assert isinstance(dataset, DetectionDataset)
    assert (dataset.default_metric, dataset.label_to_category_id, dataset.coco) == ("voc", None, None)
    assert dataset.describe() == {"format": "voc", "path": str(voc_root), "split": "train"}


# -- the run folder ------------------------------------------------------------------------------------------
def test_a_second_training_in_a_locked_folder_is_refused(voc_root, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from fasterrcnn.runs import RunFolder; import time\nwith RunFolder({str(run)!r}).lock(): print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["train", "--data", str(voc_root), "--preset", "tiny", "--output", str(run), "--max-iters", "1"])
        err = one_line_error(capsys, code)
        assert f"{run} is in use by another training (PID {holder.pid} on " in err
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "checkpoints").exists()


def test_a_lock_left_by_a_dead_process_is_taken_over(voc_root, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("999999 on elsewhere")  # no process holds the flock
    with caplog.at_level("WARNING", logger="fasterrcnn"):
        train(TrainingData(voc_root, split="train"), run, **FAST, max_iters=1)
    assert "taking over the lock left by PID 999999 on elsewhere" in caplog.text
    assert (run / ".lock").read_text() == ""  # released cleanly
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 1


def test_a_folder_with_a_run_is_refused_unless_resume_or_overwrite(trained, voc_root, tmp_path, capsys):
    run = tmp_path / "run"
    every_step = {**FAST, "overrides": {**SMALL, "train.checkpoint_every": 1}}
    train(TrainingData(voc_root, split="train"), run, **every_step, max_iters=1)
    (run / "checkpoints" / "last.pt").unlink()  # an earlier run whose last.pt is gone: still a run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    code = main(["train", "--data", str(voc_root), "--preset", "tiny", "--output", str(run), "--max-iters", "1"])
    assert "already holds a training run (checkpoints, config.json, labels.jpg (+5 more)); pass --resume" in one_line_error(capsys, code)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000001.pt"]

    train(TrainingData(voc_root, split="train"), run, **every_step, max_iters=2, overwrite=True)  # starts over: the old run's files are gone
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000001.pt", "iter_0000002.pt", "last.pt"]
    assert [r["iteration"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [2]  # not the old run's 1

    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds files that are not a training run's \(notes.txt\)"):
        train(TrainingData(voc_root, split="train"), run, **FAST, max_iters=2, overwrite=True)
    assert (run / "notes.txt").read_text() == "mine" and (run / "checkpoints" / "last.pt").is_file()


def test_quiet_prints_nothing_and_the_console_lines_go_to_log_txt(voc_root, tmp_path, capsys):
    """train(..., quiet=True) from Python is silent; log.txt holds the lines (no bar redraws)."""
    train(TrainingData(voc_root, split="train"), tmp_path / "run", **{**FAST, "val": None}, max_iters=1)
    assert capsys.readouterr() == ("", "")
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.startswith("training tiny on 4 images (5 classes, train) for 1 iterations on cpu; validating on test (")
    assert "\nschedule: 1 iteration" in log and "\nevaluation at iteration 1 on test: mAP " in log and "\x1b" not in log and "\r" not in log


def test_console_log_keeps_the_last_state_of_redrawn_lines(tmp_path):
    import sys

    from fasterrcnn.engine.logging import console_log

    with console_log(tmp_path / "never.txt", echo=False):
        print("a run refused before it starts")
    assert not (tmp_path / "never.txt").exists()
    with console_log(tmp_path / "log.txt", echo=False) as log:
        print("one")  # held until the run starts
        assert not (tmp_path / "log.txt").exists()
        log.start()
        sys.stderr.write("\r\x1b[2K 10%|#   |\r\x1b[2K 50%|##  |\r\x1b[2K")
        sys.stderr.write("two\n\r 90%|### |\r\x1b[2K")  # a bar cleared when it closes
        print("three", end="")
    assert (tmp_path / "log.txt").read_text() == "one\ntwo\nthree\n"


def test_resume_refuses_changed_settings_and_records_a_longer_run(voc_root, tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainingData(voc_root, split="train"), run, **FAST, max_iters=1)
    args = ["train", "--data", str(voc_root), "--split", "train", "--output", str(run), "--resume", "--quiet", "--no-val", "--device", "cpu"]
    err = one_line_error(capsys, main(args + ["--lr", "0.5", "--seed", "4", "--batch-size", "1"]))
    assert "--resume would change the run's settings: train.batch_size 2 -> 1; train.lr 0.02 -> 0.5; train.seed 0 -> 4." in err
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.02
    assert main(args + ["--max-iters", "2"]) == 0
    assert "resuming at 1; no validation set; train.max_iters 1 -> 2" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["max_iters"] == 1 and config["max_iters"] == 2  # the original settings, and the run's length
    assert config["changes"] == [{"iteration": 1, "changed": {"train.max_iters": [1, 2]}}]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]["max_iters"] == 2


def test_fitted_anchors_are_recorded_so_resume_and_eval_rebuild_the_model(voc_root, tmp_path):
    from fasterrcnn.detector import Detector

    run = tmp_path / "run"
    train(TrainingData(voc_root, split="train"), run, **{**FAST, "overrides": {**SMALL, "train.fit_anchors": True}}, max_iters=1)
    log = (run / "log.txt").read_text().splitlines()  # quiet: the console lines go to log.txt only
    assert log[0].startswith("training tiny on ") and log[1].startswith("anchors fitted to the training boxes: sizes (")
    sizes = json.loads((run / "config.json").read_text())["model"]["anchor_sizes"]
    assert sizes != [[16.0, 32.0, 64.0, 128.0]]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["model"]["anchor_sizes"] == sizes
    resumed = train(TrainingData(voc_root, split="train"), run, **FAST, resume=True, max_iters=2)  # the checkpoint's anchors, not fitted again
    assert resumed.iteration == 2 and (run / "log.txt").read_text().count("anchors fitted") == 1
    detector = Detector.from_checkpoint(resumed.last, device="cpu")
    assert [list(level) for level in detector.model.config.anchor_sizes] == sizes


def test_periodic_checkpoints_keep_the_newest(voc_root, tmp_path):
    run = tmp_path / "run"
    train(TrainingData(voc_root, split="train"), run, **{**FAST, "overrides": {**SMALL, "train.checkpoint_every": 1, "train.keep_checkpoints": 2}}, max_iters=5)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000004.pt", "iter_0000005.pt", "last.pt"]


# -- failures keep the work done -----------------------------------------------------------------------------
def test_an_exception_in_the_loop_writes_last_pt_first(voc_root, tmp_path, monkeypatch, capsys):
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    forward = FasterRCNN.forward
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom in the third step")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FasterRCNN, "forward", failing)
    run = tmp_path / "run"
    args = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--output", str(run), "--max-iters", "5"]
    args += ["--set", "model.min_size=48", "--set", "model.max_size=64", "--no-val", "--quiet", "--device", "cpu"]
    err = one_line_error(capsys, main(args))
    last = run / "checkpoints" / "last.pt"
    assert err.startswith(f"fasterrcnn: error: training stopped at iteration 2: RuntimeError: boom in the third step; {last} holds iteration 2")
    assert f"traceback in {run / 'error.log'}; resume with: fasterrcnn train " in err and err.endswith(" --resume")
    assert "RuntimeError: boom in the third step" in (run / "error.log").read_text()
    assert load_checkpoint(last)["iteration"] == 2


def test_a_failing_final_evaluation_keeps_the_trained_checkpoint(voc_root, tmp_path, monkeypatch):
    import fasterrcnn.engine.evaluator as evaluator

    def broken(*args, **kwargs):
        raise DataError("annotations.json", "area 'big' is not a number")

    monkeypatch.setattr(evaluator, "evaluate_model", broken)
    run = tmp_path / "run"
    with pytest.raises(TrainingFailed, match=r"^training stopped at iteration 3: annotations.json: area 'big' is not a number; .*last.pt holds iteration 3$") as info:
        train(TrainingData(voc_root, split="train"), run, **{**FAST, "val": None}, max_iters=3)
    assert info.value.checkpoint == run / "checkpoints" / "last.pt" and load_checkpoint(info.value.checkpoint)["iteration"] == 3
    assert not (run / "error.log").exists()  # the user's to fix: no traceback


def test_a_full_disk_is_a_one_line_error_and_the_last_good_checkpoint_survives(voc_root, tmp_path, monkeypatch, capsys):
    import fasterrcnn.engine.checkpoint as checkpoint_module

    save = torch.save
    writes = []

    def filling(state, f):
        writes.append(1)
        if len(writes) > 2:  # iter_0000001.pt and last.pt fit, then the disk is full: torch's error does not say so
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # as torch does: the OSError is its context
        save(state, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", filling)
    run = tmp_path / "run"
    args = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--output", str(run), "--max-iters", "3"]
    args += ["--set", "model.min_size=48", "--set", "model.max_size=64", "--checkpoint-every", "1", "--no-val", "--quiet", "--device", "cpu"]
    err = one_line_error(capsys, main(args))
    assert f"{run / 'checkpoints' / 'iter_0000002.pt'}: cannot write checkpoint (the disk is full or the file system refused it" in err
    assert "the checkpoints written before are intact" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000001.pt", "last.pt"]  # no temporary files left


# -- outputs are checked before long work, inputs and existing files are never written over ----------------
def test_eval_with_an_unwritable_output_fails_before_evaluating(trained, voc_root, tmp_path, monkeypatch, capsys):
    import fasterrcnn.engine.evaluator as evaluator

    monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated before checking the output"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["eval", "--weights", str(trained.last), "--data", str(voc_root), "--output", str(blocker / "eval")])
    assert f"{blocker / 'eval'}: cannot write into this folder" in one_line_error(capsys, code)


def test_predict_never_writes_over_inputs_or_existing_files(trained, voc_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((voc_root / "JPEGImages").iterdir())[:2]:
        (photos / image.name).write_bytes(image.read_bytes())
    originals = {p.name: p.read_bytes() for p in photos.iterdir()}
    args = ["predict", "--weights", str(trained.last), str(photos), "--quiet", "--device", "cpu"]
    assert "--output" in one_line_error(capsys, main(args + ["--output", str(photos)]))
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == originals  # the photos are intact

    out = tmp_path / "out"
    out.mkdir()
    (out / "detections.json").write_text("my own file")
    err = one_line_error(capsys, main(args + ["--output", str(out)]))
    assert "already holds detections.json; pass --overwrite" in err and (out / "detections.json").read_text() == "my own file"
    assert main(args + ["--output", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*originals, "detections.json", "detections.jsonl"])


def test_predict_skips_a_bad_image_and_detections_json_covers_the_images_read(trained, voc_root, tmp_path, capsys):
    images = sorted((voc_root / "JPEGImages").iterdir())[:2]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    args = ["predict", "--weights", str(trained.last), str(images[0]), str(bad), str(images[1]), "--score-threshold", "0", "--quiet", "--device", "cpu"]
    assert main(args + ["--output", str(tmp_path / "skip")]) == 0
    captured = capsys.readouterr()
    assert f"skipping {bad}: cannot read image" in captured.err and "1 image(s) could not be read" in captured.out
    ids = {d["image_id"] for d in json.loads((tmp_path / "skip" / "detections.json").read_text())}
    assert ids <= {images[0].stem, images[1].stem} and sorted(p.name for p in (tmp_path / "skip").glob("*.jpg")) == [images[0].name, images[1].name]

    code = main(args + ["--output", str(tmp_path / "stop"), "--on-bad-image", "error", "--precision", "f32"])  # no "precision auto" line
    assert str(bad) in one_line_error(capsys, code)
    stopped = json.loads((tmp_path / "stop" / "detections.json").read_text())
    assert {d["image_id"] for d in stopped} <= {images[0].stem} and [p.name for p in (tmp_path / "stop").glob("*.jpg")] == [images[0].name]


# -- configuration errors: one line naming the key --------------------------------------------------------------
@pytest.mark.parametrize(
    "option, message",
    [
        (["--set", "model.pixel_format=hsv"], "model.pixel_format = 'hsv': must be one of rgb01, caffe_bgr255"),
        (["--set", "model.rpn_fg_iou_thresh=0.1"], "model.rpn_fg_iou_thresh = 0.1: must be >= rpn_bg_iou_thresh (0.3)"),
        (["--set", "model.box_detections_per_img=-1"], "model.box_detections_per_img = -1: must be >= 1"),
        (["--set", "train.momentum=-1"], "train.momentum = -1: must be in [0, 1)"),
        (["--seed", "99999999999999999999999"], "train.seed = 99999999999999999999999: must be in [0, 2**64 - 1]"),
    ],
)
def test_bad_configuration_values_are_one_line_errors(voc_root, tmp_path, capsys, option, message):
    code = main(["train", "--data", str(voc_root), "--preset", "tiny", "--output", str(tmp_path / "run"), *option])
    assert message in one_line_error(capsys, code)
    assert not (tmp_path / "run" / "config.json").exists()


# -- the layout: layers import downward, commands are thin --------------------------------------------------
def test_the_command_line_is_a_package_of_thin_commands_and_layers_import_downward():
    import ast
    from pathlib import Path

    package = Path(fasterrcnn.__file__).parent
    for command in (package / "cli").glob("*.py"):
        assert len(command.read_text().splitlines()) <= 200, command

    def imports(path):
        tree = ast.parse(path.read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }

    for module in (package / "engine").glob("*.py"):
        assert not {"fasterrcnn.detector", "fasterrcnn.runs", "fasterrcnn.cli", "fasterrcnn.serve"} & imports(module), module
    assert not any(name.startswith("fasterrcnn.cli") for name in imports(package / "serve.py"))
    for module in (package / "runs").glob("*.py"):
        assert not any(name.startswith(("fasterrcnn.cli", "fasterrcnn.serve")) for name in imports(module)), module


def test_a_runs_config_json_repeats_the_run(trained, voc_root, tmp_path):
    # the data in its two groups: a training-data spec, and val=False for no validation set
    again = train(TrainingData(voc_root, split="train"), tmp_path / "again", config=trained.run_dir / "config.json", val=False, device="cpu", quiet=True)
    assert json.loads((again.run_dir / "config.json").read_text())["data"]["val"] is None
    original = load_checkpoint(trained.last)
    repeated = load_checkpoint(again.last)
    assert again.iteration == trained.iteration == 2
    assert repeated["config"] == original["config"]  # preset, model (48-64 px) and training settings
    for name, tensor in original["model"].items():  # same seed, same data, same settings: the same weights
        assert torch.equal(tensor, repeated["model"][name]), name


def test_a_runs_config_json_gives_the_data_and_flags_beside_it_override(trained, tmp_path, capsys):
    """train --config runs/x/config.json --output runs/y: no --data needed; --split beside it wins."""
    args = ["train", "--config", str(trained.run_dir / "config.json"), "--output", str(tmp_path / "y"), "--max-iters", "1", "--device", "cpu", "--quiet"]
    assert main(args + ["--split", "trainval"]) == 0
    recorded = json.loads((trained.run_dir / "config.json").read_text())["data"]
    data = json.loads((tmp_path / "y" / "config.json").read_text())["data"]
    assert recorded["train"]["split"] == "train" and data["train"] == {**recorded["train"], "split": "trainval"}
    assert data["val"] == recorded["val"] and data["val"]["split"] == "test" and data["metric"] == recorded["metric"] == "voc"
    capsys.readouterr()
    (tmp_path / "plain.json").write_text('{"preset": "tiny"}')
    code = main(["train", "--config", str(tmp_path / "plain.json"), "--output", str(tmp_path / "z")])
    assert "give the training data (--data), or a run's config.json (--config) that records it" in one_line_error(capsys, code)


# -- the schedule follows the run's length; a time budget ----------------------------------------------------
def _schedule(run):
    train_config = load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]
    return train_config["warmup_iters"], train_config["lr_steps"]


def test_the_presets_schedule_follows_the_runs_length_unless_set(voc_root, tmp_path, capsys):
    # tiny: warm-up 100, step 900 of 1200 iterations; 2 iterations: step at round(1.5) = 2, warm-up round(0.17) = 0
    train(TrainingData(voc_root, split="train"), tmp_path / "iters", **FAST, max_iters=2)
    assert _schedule(tmp_path / "iters") == (0, [2])
    assert "schedule: 2 iterations; no warm-up; lr 0.02, x0.1 at 2 -> 0.002\n" in (tmp_path / "iters" / "log.txt").read_text()
    # 4 images in batches of 2: 1 epoch = 2 iterations
    train(TrainingData(voc_root, split="train"), tmp_path / "epochs", **FAST, epochs=1)
    assert _schedule(tmp_path / "epochs") == (0, [2])
    assert "schedule: 2 iterations (1 epochs x 2 batches); no warm-up; lr 0.02, x0.1 at 2 -> 0.002\n" in (tmp_path / "epochs" / "log.txt").read_text()
    # set by the user (--set or overrides, a config file): kept as given
    (tmp_path / "warmup.yaml").write_text("train:\n  warmup_iters: 3\n")
    args = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--output", str(tmp_path / "cli"), "--quiet",
            "--no-val", "--device", "cpu", "--batch-size", "2", "--max-iters", "2", "--config", str(tmp_path / "warmup.yaml"),
            "--set", "train.lr_steps=[1]", "--set", "model.min_size=48", "--set", "model.max_size=64"]  # fmt: skip
    assert main(args) == 0
    assert _schedule(tmp_path / "cli") == (3, [1])
    # resuming for longer moves nothing: the checkpoint holds the placed schedule
    train(TrainingData(voc_root, split="train"), tmp_path / "iters", **FAST, max_iters=3, resume=True)
    assert _schedule(tmp_path / "iters") == (0, [2])


@pytest.fixture
def fake_clock(monkeypatch):
    """Every reading of the trainer's clock is 2 s after the previous one: one reading per iteration (and one at the start)."""
    import itertools

    import fasterrcnn.engine.trainer as trainer

    def install(on_reading=None, increments=None):
        """``increments``: the seconds between readings instead (an iterable; e.g. a slow first iteration)."""
        steps = itertools.repeat(2.0) if increments is None else iter(increments)
        seconds = itertools.accumulate(itertools.chain([0.0], steps))

        def clock():
            now = next(seconds)
            if on_reading is not None:
                on_reading(now)
            return now

        monkeypatch.setattr(trainer, "_clock", clock)

    return install


def test_a_time_budget_ends_the_run_at_its_deadline_and_resumes_with_the_time_left(voc_root, tmp_path, fake_clock, capsys):
    import signal

    from fasterrcnn.engine.interrupt import TrainingInterrupted

    fake_clock()
    # weight averaging and the augmentations are exact across the interruption too
    recipe = {"train.ema_decay": 0.9, "train.scale_jitter": [0.75, 1.25], "train.color_jitter": [0.2, 0.2, 0.2, 0.05]}
    log = {**SMALL, "train.log_every": 1, **recipe}
    whole = train(TrainingData(voc_root, split="train"), tmp_path / "whole", **{**FAST, "overrides": log}, time=0.4)  # 24 s: 12 iterations of 2 s
    assert whole.iteration == 12 and whole.last.is_file()
    state = load_checkpoint(whole.last)
    # estimated after the first iteration (and again after 4 and 8 more): 12 iterations fit; the step of
    # 900/1200 goes to 9, the warm-up of 100/1200 to 1 iteration
    assert state["time"] == {"budget": 24.0, "elapsed": 24.0, "max_iters": 12, "fixed": []}
    assert state["scheduler"] == {"iteration": 12, "warmup_iters": 1, "lr_steps": [9]}
    lrs = [r["lr"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if r["type"] == "train"]
    assert lrs == pytest.approx([0.0002] + [0.02] * 8 + [0.002] * 3)  # 0.01 x lr, then lr, x0.1 from the 10th step
    out = (tmp_path / "whole" / "log.txt").read_text()  # quiet: the lines only there
    assert "schedule: time budget 0.4 min, 1200 iterations until the speed is measured; warm-up 100 iterations" in out
    assert "time budget: 12 iterations fit (2 s each, 0.367 of 0.4 min left); warm-up 1 iteration from 0.01 x lr; lr 0.02, x0.1 at 9 -> 0.002" in out
    assert "time budget of 0.4 min spent at iteration 12" in out

    def interrupt_after_iteration_6(now):
        if now == 12.0:
            os.kill(os.getpid(), signal.SIGINT)

    fake_clock(interrupt_after_iteration_6)
    with pytest.raises(TrainingInterrupted):
        train(TrainingData(voc_root, split="train"), tmp_path / "run", **{**FAST, "overrides": log}, time=0.4)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["time"] == {"budget": 24.0, "elapsed": 12.0, "max_iters": 12, "fixed": []}
    fake_clock()  # a new process: its clock starts anywhere, the 12 s already spent count
    resumed = train(TrainingData(voc_root, split="train"), tmp_path / "run", **FAST, resume=True)
    assert resumed.iteration == 12
    again = load_checkpoint(resumed.last)
    assert again["time"] == state["time"] and again["scheduler"] == state["scheduler"]
    for name, tensor in state["model"].items():  # exactly the uninterrupted run: the average and the trained weights
        assert torch.equal(tensor, again["model"][name]) and torch.equal(state["ema"]["model"][name], again["ema"]["model"][name]), name
    assert again["ema"]["updates"] == 12
    # a longer budget on resume extends the run: 12 s more, 6 iterations; the step taken at 9 stays
    fake_clock()
    longer = train(TrainingData(voc_root, split="train"), tmp_path / "run", **FAST, resume=True, time=0.6)
    assert longer.iteration == 18
    assert load_checkpoint(longer.last)["scheduler"] == {"iteration": 18, "warmup_iters": 1, "lr_steps": [9]}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["time"] == 0.4 and config["changes"][-1]["changed"] == {"train.time": [0.4, 0.6]}


def test_a_slow_start_never_ends_a_time_budget_and_a_finished_one_stays_finished(voc_root, tmp_path, fake_clock, capsys):
    """The first iteration pays for start-up (20 s here): its estimate (nothing more fits) must not end the
    run; the speed measured after it (3 s per iteration) does. Steps set by the user are kept as given."""
    import itertools

    fake_clock(increments=itertools.chain([20.0], itertools.repeat(3.0)))
    overrides = {**SMALL, "train.lr_steps": [3]}
    result = train(TrainingData(voc_root, split="train"), tmp_path / "run", **{**FAST, "overrides": overrides}, time=0.5)  # 30 s
    # after iteration 1 (20 s): one more; after 2 (23 s): 2 more fit; after 4 (29 s): none
    assert result.iteration == 4
    state = load_checkpoint(result.last)
    assert state["time"] == {"budget": 30.0, "elapsed": 29.0, "max_iters": 4, "fixed": ["lr_steps"]}
    assert state["scheduler"]["lr_steps"] == [3]  # as given, not placed on the estimated length
    assert "time budget: 2 iterations fit (20 s each" in (tmp_path / "run" / "log.txt").read_text()
    fake_clock()
    again = train(TrainingData(voc_root, split="train"), tmp_path / "run", **FAST, resume=True)  # the same budget: nothing left to train
    assert again.iteration == 4
    assert load_checkpoint(again.last)["time"] == state["time"]


def test_a_step_not_yet_taken_follows_the_machines_speed_and_a_longer_budget(voc_root, tmp_path, fake_clock):
    """A slow start (4 s per iteration) estimates 7 iterations of the 30 s and puts the step of 900/1200 at 5; the
    machine then speeds up to 1 s per iteration: the step waits for 3/4 of the budget instead of firing at 5.
    Resumed with a longer budget, the step not yet taken moves to 3/4 of the new one."""
    import itertools
    import signal

    from fasterrcnn.engine.interrupt import TrainingInterrupted

    def interrupt_after_iteration_6(now):
        if now == 21.0:  # 5 x 4 s + 1 s
            os.kill(os.getpid(), signal.SIGINT)

    fake_clock(interrupt_after_iteration_6, increments=itertools.chain([4.0] * 5, itertools.repeat(1.0)))
    with pytest.raises(TrainingInterrupted):
        train(TrainingData(voc_root, split="train"), tmp_path / "run", **FAST, time=0.5)
    assert "x0.1 at 5 -> 0.002" in (tmp_path / "run" / "log.txt").read_text()  # what the slow start estimated
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["iteration"] == 6 and state["scheduler"]["lr_steps"] == [7]  # 21 s < 22.5 s: not yet
    fake_clock(increments=itertools.repeat(1.0))
    longer = train(TrainingData(voc_root, split="train"), tmp_path / "run", **FAST, resume=True, time=0.6)  # 36 s: the step moves to 27 s
    assert longer.iteration == 21  # 21 s spent + 15 x 1 s
    assert load_checkpoint(longer.last)["scheduler"] == {"iteration": 21, "warmup_iters": 1, "lr_steps": [12]}


def test_the_runs_length_is_given_once(voc_root, tmp_path, capsys):
    with pytest.raises(ConfigError, match="give the run's length as epochs, max_iters or time, not several"):
        train(TrainingData(voc_root, split="train"), tmp_path / "run", **FAST, max_iters=2, time=1.0)
    base = ["train", "--data", str(voc_root), "--preset", "tiny", "--output", str(tmp_path / "run")]
    assert "--time: must be a finite number > 0" in one_line_error(capsys, main(base + ["--time", "0"]))
    assert "not allowed with argument" in one_line_error(capsys, main(base + ["--time", "1", "--epochs", "2"]))
    assert "train.time = -1: must be > 0" in one_line_error(capsys, main(base + ["--set", "train.time=-1"]))


# -- benchmark -------------------------------------------------------------------------------------------------
def test_benchmark_scores_and_times_each_path_and_says_why_one_cannot_run(trained, voc_root, tmp_path, monkeypatch):
    """The eager f32 row scores as evaluate does; bf16 is refused on a CPU without bf16 instructions (conftest) and
    runs on one with them; the ONNX file scores as the eager model (same weights, float32); CSV written."""
    from fasterrcnn.runs import benchmark_table

    reference = evaluate(voc_root, weights=trained.last, device="cpu", precision="f32", quiet=True).metrics["mAP"]
    out = tmp_path / "bench.csv"
    rows = fasterrcnn.benchmark(trained.last, voc_root, output=out, paths=("eager f32", "eager bf16", "onnxruntime f32", "openvino int8"), quiet=True)
    assert [(row.path, row.available) for row in rows] == [("eager f32", True), ("eager bf16", False), ("onnxruntime f32", True), ("openvino int8", False)]
    eager, bf16, onnx, int8 = rows
    assert eager.map == pytest.approx(reference, abs=1e-6) and onnx.map == pytest.approx(reference, abs=1e-3)
    assert eager.median_ms > 0 and eager.images_per_s == pytest.approx(1000 / eager.median_ms)
    assert (eager.file_mib, eager.export_s) == (None, None) and onnx.file_mib > 0 and onnx.export_s > 0
    assert bf16.why == "this CPU has no bf16 instructions (avx512_bf16 or AMX)" and bf16.map is None
    assert int8.why.startswith("no int8 file given")
    lines = out.read_text().splitlines()
    assert lines[0] == "path,available,why,map,median_ms,images_per_s,file_mib,export_s" and len(lines) == 5
    assert lines[2].startswith("eager bf16,False,this CPU has no bf16 instructions") and lines[2].endswith(",,,,,")
    table = benchmark_table(rows).splitlines()
    assert table[0].split() == ["path", "mAP", "median", "ms", "images/s", "file", "MiB", "export", "s", "available"]
    assert table[2].startswith("eager bf16") and table[2].endswith("no: this CPU has no bf16 instructions (avx512_bf16 or AMX)")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    (bf16,) = fasterrcnn.benchmark(trained.last, voc_root, paths=("eager bf16",), quiet=True)
    assert bf16.available and 0 <= bf16.map <= 1


def test_benchmark_command_prints_the_table_and_refuses_what_it_cannot_do(trained, voc_root, tmp_path, capsys):
    out = tmp_path / "bench.csv"
    args = ["benchmark", "--weights", str(trained.last), "--data", str(voc_root), "--paths", "eager f32", "--output", str(out), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("path") and printed[1].startswith("eager f32") and printed[1].endswith("yes") and printed[2] == f"wrote {out}"
    assert one_line_error(capsys, main(args)) == f"fasterrcnn: error: {out} exists; pass --overwrite to replace it or choose another --output"
    assert one_line_error(capsys, main(args[:5] + ["--paths", "eager f16"])) == (
        "fasterrcnn: error: unknown benchmark path(s) 'eager f16'; choose from eager f32, eager bf16, onnxruntime f32, openvino f32, openvino bf16, openvino int8"
    )
    weights = ["--output", str(trained.last), "--overwrite"]  # the checkpoint benchmarked is never written over
    assert one_line_error(capsys, main(args[:7] + weights)) == (
        f"fasterrcnn: error: {trained.last} is the input {trained.last}, which is never written over; choose another --output"
    )
    missing = tmp_path / "missing.xml"
    assert one_line_error(capsys, main(args[:5] + ["--int8", str(missing)])) == (
        f"fasterrcnn: error: --int8 {missing}: no such file (write one with 'fasterrcnn export --int8')"
    )


# -- int8 export -----------------------------------------------------------------------------------------------
def test_int8_export_quantizes_backbone_rpn_conv_and_box_head_only_and_scores_it_against_float32(trained, voc_root, tmp_path, capsys, monkeypatch):
    """export --int8: one OpenVINO file whose FakeQuantize nodes all lie in the backbone, the RPN's 3x3 conv and the
    box head (the RPN's objectness and delta layers, proposals, NMS, RoI pooling, the box predictor and box decoding
    stay float), marked int8, loaded by Detector as int8; the held-out scores of float32 and int8."""
    import openvino as ov

    from fasterrcnn import Detector
    from fasterrcnn.deploy.metadata import read_metadata

    out = tmp_path / "int8.xml"
    args = ["export", "--weights", str(trained.last), "--output", str(out), "--int8", "--calibration", str(voc_root), "--calibration-images", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"quantizing the backbone, the RPN's 3x3 convolution and the box head on 3 images of {voc_root} (train)"
    reference = evaluate(voc_root, weights=trained.last, device="cpu", precision="f32", quiet=True).metrics["mAP"]
    assert printed[-1].startswith(f"voc on 2 held-out images: float32 {reference:.4f}, int8 ")
    quantized = [op.get_friendly_name() for op in ov.Core().read_model(str(out)).get_ops() if op.get_type_name() == "FakeQuantize"]
    # the backbone's layers, the RPN's 3x3 conv, fc6 / fc7, and the quantizers of their inputs that other nodes
    # produce: the padded image (the first convolution's input) and the pooled RoIs (fc6's input)
    scopes, inputs = ("/backbone/", "/head/conv/", "/box_head/"), ("/Pad/fq_output_0", "/RoiAlign/fq_output_0")
    assert quantized and all(name.startswith(scopes) or name in inputs for name in quantized)
    assert all(any(name.startswith(scope) for name in quantized) for scope in scopes)
    assert read_metadata(out)["precision"] == "int8"
    detector = Detector.from_checkpoint(out)
    assert detector.precision == "int8" and repr(detector.model).endswith(", int8)")
    result = evaluate(voc_root, weights=out, device="cpu", quiet=True, output=tmp_path / "eval")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["precision"] == "int8"
    assert printed[-1].endswith(f"int8 {result.metrics['mAP']:.4f}")
    with pytest.raises(ConfigError, match="is an int8 model: run it with precision int8 or auto$"):
        Detector.from_checkpoint(out, precision="f32")
    assert one_line_error(capsys, main(args)).endswith("exist; pass --overwrite to replace or choose another --output")
    assert one_line_error(capsys, main(args[:4] + [str(tmp_path / "m.onnx"), "--int8", "--calibration", str(voc_root)])) == (
        f"fasterrcnn: error: an int8 model is written as OpenVINO IR: --output NAME.xml, got {tmp_path / 'm.onnx'}"
    )
    assert one_line_error(capsys, main(args[:6] + ["--overwrite"])) == (
        "fasterrcnn: error: --int8 needs --calibration DATA: images of your data to quantize on (e.g. the training set)"
    )
    monkeypatch.setitem(sys.modules, "nncf", None)  # not installed
    assert one_line_error(capsys, main(args + ["--overwrite"])) == "fasterrcnn: error: int8 export needs NNCF: pip install 'fasterrcnn[int8]'"


def test_an_exported_file_runs_in_the_precisions_its_runtime_has(trained, tmp_path, monkeypatch):
    """ONNX: f32 only; OpenVINO: f32, bf16, and auto follows the CPU; int8 only for an int8 file."""
    from fasterrcnn import Detector
    from fasterrcnn.deploy.export import onnx_to_openvino
    from fasterrcnn.runs import export

    onnx = export(trained.last, tmp_path / "m.onnx").files[0]
    xml = onnx_to_openvino(onnx, tmp_path / "m.xml")[0]
    assert Detector.from_checkpoint(onnx).precision == "f32" and Detector.from_checkpoint(xml).precision == "f32"
    assert Detector.from_checkpoint(xml, precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match=r"m.onnx: onnxruntime runs float32 only; precision bf16 needs an OpenVINO .xml or a checkpoint$"):
        Detector.from_checkpoint(onnx, precision="bf16")
    with pytest.raises(ConfigError, match=r"m.xml is not an int8 model; write one with 'fasterrcnn export --int8'$"):
        Detector.from_checkpoint(xml, precision="int8")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert Detector.from_checkpoint(xml).precision == "bf16" and Detector.from_checkpoint(onnx).precision == "f32"


def test_calibrate_writes_a_new_checkpoint_and_refuses_its_input_and_the_training_data(trained, voc_root, tmp_path, capsys):
    from fasterrcnn.runs import calibrate

    out = tmp_path / "calibrated.pt"
    result = calibrate(trained.last, voc_root, out, split="test", device="cpu", quiet=True)
    assert result.output == out and result.num_images == 2 and set(result.before) == {"ece", "mAP", "detections"}
    written = Checkpoint.read(out)
    assert written.model_config.box_score_temperature == result.temperature > 0 and written.training == {}
    assert written.model_config.box_score_map == result.score_map and result.score_map[0] > 0  # read back from the file
    assert result.temperature == 1.0 and result.scaled is None  # no temperature unless asked for
    assert result.after["detections"] == result.before["detections"] and result.after["mAP"] == pytest.approx(result.before["mAP"])
    assert Checkpoint.read(trained.last).model_config.box_score_map is None  # the input is untouched
    assert Checkpoint.read(trained.last).model_config.box_score_temperature == 1.0
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        calibrate(trained.last, voc_root, out, split="test", device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="trained on; calibrate on held-out data"):
        calibrate(trained.last, voc_root, tmp_path / "other.pt", split="train", device="cpu", quiet=True)
    code = main(["calibrate", "--weights", str(trained.last), "--data", str(voc_root), "--split", "test", "--output", str(trained.last)])
    assert "--output must differ from --weights" in one_line_error(capsys, code)
    assert main(["calibrate", "--weights", str(trained.last), "--data", str(voc_root), "--split", "test", "--output", str(out), "--overwrite", "--device", "cpu", "--quiet", "--temperature"]) == 0
    printed = capsys.readouterr().out
    assert Checkpoint.read(out).model_config.box_score_temperature != 1.0  # --temperature fits and writes one
    assert "temperature" in printed and "score map sigmoid(" in printed and "before: detection ECE" in printed
    assert "temperature only: detection ECE" in printed and "after: detection ECE" in printed


def test_the_package_lists_its_public_names_and_an_eval_result_prints_short(tmp_path):
    import fasterrcnn
    from fasterrcnn.runs import EvalResult

    assert {"Detector", "FasterRCNN", "compress", "evaluate", "predict", "train", "__version__"} <= set(dir(fasterrcnn))
    curves = {"circle": (list(range(1000)), list(range(1000)))}
    result = EvalResult({"mAP": 0.86204, "pr_curves": curves}, "voc", 12, 0, tmp_path / "eval", split="val")
    assert repr(result) == f"EvalResult(mAP=0.8620 (voc) on val, 12 images, output={str(tmp_path / 'eval')!r})"
    assert repr(EvalResult({}, "", 0, 0, None)) == "EvalResult(no metrics on ?, 0 images)"


def test_a_validated_run_evaluates_about_ten_times_unless_told_and_says_so(voc_root, tmp_path):
    from fasterrcnn.config import get_preset, replace
    from fasterrcnn.runs.training import default_eval_every

    tiny = get_preset("tiny").train  # log_every 20
    assert default_eval_every(replace(tiny, max_iters=1000, epochs=None), 100) == 100
    assert default_eval_every(replace(tiny, max_iters=50, epochs=None), 100) == 20  # never more often than the records
    assert default_eval_every(replace(tiny, epochs=12, batch_size=2, log_every=1), 100) == 60  # 12 x 50 batches / 10
    assert default_eval_every(replace(tiny, epochs=12, batch_size=2, log_every=1), 100, world_size=2) == 30
    assert default_eval_every(replace(tiny, time=5.0), 100) == 0  # a time budget: at the end

    overrides = {**SMALL, "train.log_every": 2}
    train(TrainingData(voc_root, split="train"), tmp_path / "run", **{**FAST, "val": None, "overrides": overrides}, max_iters=4)
    evaluations = [r["iteration"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["type"] == "eval"]
    assert evaluations == [2, 4] and "; validation every 2 iterations\n" in (tmp_path / "run" / "log.txt").read_text()


def test_train_writes_a_picture_of_its_labels(trained, voc_root, tmp_path):
    from PIL import Image

    from fasterrcnn.data import VOCDataset
    from fasterrcnn.data.protocol import label_statistics
    from fasterrcnn.evaluation.plots import plot_labels

    with Image.open(trained.run_dir / "labels.jpg") as picture:
        assert picture.format == "JPEG" and picture.width > 500
    dataset = VOCDataset(voc_root, split="train")
    labels, boxes = label_statistics(dataset)
    truth = dataset.ground_truth()
    assert labels.tolist() == torch.cat([t["labels"] for t in truth]).tolist() and boxes.shape == (len(labels), 4)
    height, width = dataset.image_size(0)
    assert boxes[: len(truth[0]["boxes"])].tolist() == (truth[0]["boxes"] / torch.tensor([width, height, width, height])).tolist()
    assert 0 <= boxes.min() and boxes.max() <= 1
    plot_labels(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4), ["a"], tmp_path / "empty.jpg")  # no objects: empty panels
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jpg"]  # written atomically: no temporary file left


def test_train_takes_its_data_in_two_specs_and_overrides_in_either_shape(tmp_path):
    """train's data options live in TrainingData / ValidationData (not 10 flat keywords); overrides stay nested from
    the CLI to config.resolve, and a Python caller's dotted keys are nested once; unset data fields come from a
    run's config.json."""
    import inspect

    from fasterrcnn.runs.training import _nest, _recorded

    assert len(inspect.signature(train).parameters) == 20
    assert _nest({"train": {"lr": 0.01}, "model.min_size": 64}) == {"model": {"min_size": 64}, "train": {"lr": 0.01}}
    with pytest.raises(ConfigError, match="override 'lr': expected model.FIELD or train.FIELD"):
        _nest({"lr": 0.01})
    record = {"data": {"train": {"path": "/d/voc", "split": "trainval", "images": None}, "val": {"path": "/d/voc", "split": "test"}, "metric": "voc07"}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    training, validation = _recorded(TrainingData(split="train"), ValidationData(), tmp_path / "config.json")
    assert (training.path, training.split) == ("/d/voc", "train")  # the split given wins over the recorded one
    assert (validation.path, validation.split, validation.metric) == ("/d/voc", "test", "voc07")
    assert _recorded(TrainingData(split="train"), None, tmp_path / "config.json")[1] is None  # val=False stays off
    assert _recorded(TrainingData("/other"), ValidationData(), tmp_path / "config.json") == (TrainingData("/other", split="trainval"), ValidationData())
    with pytest.raises(ConfigError, match="give the training data"):
        _recorded(TrainingData(), ValidationData(), None)
