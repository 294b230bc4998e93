"""A user's files are never touched (fasterrcnn.paths and every command that writes): no link in a folder a
command owns is followed, nothing the project did not write is deleted, refusals come before the work and
before any deletion, and a full disk (or ``ulimit -f``) ends in one line with the earlier files whole.

Tiny preset on 48 px synthetic images, one or two iterations, CPU; the full-disk cases lower ``RLIMIT_FSIZE``
around the write (SIGXFSZ ignored, so a write past it fails with EFBIG, as on a full disk).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal

import pytest

from fasterrcnn.cli import main
from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.errors import DataError
from fasterrcnn.paths import FILE, WriteError, check_inside, open_replacing, owned_entries
from fasterrcnn.runs import TrainingData, train
from fasterrcnn.runs.folder import check_writable

SMALL = {"model.min_size": 48, "model.max_size": 64}
FAST = dict(preset="tiny", overrides=SMALL, batch_size=2, device="cpu", quiet=True, val=False)
TRAIN = ["--split", "train", "--preset", "tiny", "--set", "model.min_size=48", "--set", "model.max_size=64", "--batch-size", "2"]
TRAIN += ["--no-val", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=4, num_test=2, image_size=(48, 48), seed=3)


@pytest.fixture(scope="module")
def trained(voc_root, tmp_path_factory):
    return train(TrainingData(voc_root, split="train"), tmp_path_factory.mktemp("runs") / "run", **FAST, max_iters=1)


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def victim(tmp_path, name="precious.txt", text="the user's own bytes"):
    """A user's file outside every output folder, that links planted in the outputs point to."""
    path = tmp_path / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def train_args(voc_root, out, *more):
    return ["train", "--data", str(voc_root), "--output", str(out), *TRAIN, *more]


# -- the module's rules ------------------------------------------------------------------------------------------
def test_owned_entries_follow_the_layout_and_name_everything_else(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.pt").write_text("")
    (tmp_path / "ckpt" / "mine.ckpt").write_text("")
    (tmp_path / "log.txt").write_text("")
    (tmp_path / "link.txt").symlink_to(tmp_path / "log.txt")
    (tmp_path / "log.txt.d").mkdir()
    owned, foreign = owned_entries(tmp_path, {r"log\.txt|link\.txt|log\.txt\.d": FILE, "ckpt": {r"last\.pt": FILE}})
    assert owned == [tmp_path / "ckpt" / "last.pt", tmp_path / "ckpt", tmp_path / "log.txt"]
    assert foreign == ["ckpt/mine.ckpt", "link.txt", "log.txt.d"]  # a link, and a folder where a file is written


def test_an_output_is_never_written_through_a_link_nor_over_a_folder(tmp_path):
    target = victim(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "lines.jsonl").symlink_to(target)
    with open_replacing(tmp_path / "out" / "lines.jsonl") as f:
        f.write("new\n")
    assert target.read_text() == "the user's own bytes" and not (tmp_path / "out" / "lines.jsonl").is_symlink()
    (tmp_path / "out" / "sub").symlink_to(target.parent)
    with pytest.raises(DataError, match="is a symbolic link inside the output folder"):
        check_inside(tmp_path / "out", "sub/a.jpg")
    (tmp_path / "out" / "a.jpg").mkdir()
    with pytest.raises(DataError, match="is a folder where this command writes a file"):
        check_inside(tmp_path / "out", "a.jpg")


# -- the run folder: its lock, the write probe, --overwrite -------------------------------------------------------
def test_a_lock_that_is_a_link_or_a_foreign_file_is_refused_and_never_written_or_shown(voc_root, tmp_path, capsys):
    target = victim(tmp_path, text="secret line")
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").symlink_to(target)
    err = one_line_error(capsys, main(train_args(voc_root, run, "--max-iters", "1")))
    assert f"{run / '.lock'}: is a symbolic link; it is not a fasterrcnn lock" in err and "secret" not in err
    assert target.read_text() == "secret line" and not (run / "checkpoints").exists()

    (run / ".lock").unlink()
    (run / ".lock").write_text("secret line")  # a file of someone else's under the lock's name
    err = one_line_error(capsys, main(train_args(voc_root, run, "--max-iters", "1")))
    assert "holds something other than a PID line" in err and "secret" not in err
    assert (run / ".lock").read_text() == "secret line"


def test_the_write_probe_never_writes_through_a_link(tmp_path):
    target = victim(tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / f".write-test-{os.getpid()}").symlink_to(target)  # the probe's name before it was random
    check_writable(folder)
    assert target.read_text() == "the user's own bytes"


def test_train_overwrite_deletes_only_what_a_run_writes_and_only_once_the_run_is_accepted(trained, voc_root, tmp_path, capsys):
    run = shutil.copytree(trained.run_dir, tmp_path / "run")  # an earlier run
    (run / "checkpoints" / "my_model_v3.ckpt").write_text("mine")
    (run / "tb" / "mylogs").mkdir()
    err = one_line_error(capsys, main(train_args(voc_root, run, "--max-iters", "1", "--overwrite")))
    assert "holds files that fasterrcnn did not write (checkpoints/my_model_v3.ckpt, tb/mylogs), so --overwrite would delete them" in err
    assert (run / "checkpoints" / "my_model_v3.ckpt").read_text() == "mine" and (run / "tb" / "mylogs").is_dir()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 1  # nothing deleted

    (run / "checkpoints" / "my_model_v3.ckpt").unlink()
    (run / "tb" / "mylogs").rmdir()
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    err = one_line_error(capsys, main(train_args(voc_root, run, "--max-iters", "1", "--overwrite", "--set", "model.no_such_field=1")))
    assert "no_such_field" in err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # refused: the earlier run is whole

    train(TrainingData(voc_root, split="train"), run, **FAST, max_iters=2, overwrite=True)  # accepted: the earlier run's files go
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 2
    assert len(list((run / "tb").iterdir())) == 1  # this run's event file only


def test_a_runs_tb_or_checkpoints_that_is_a_link_is_refused_in_one_line(trained, voc_root, tmp_path, capsys):
    target = victim(tmp_path)
    run = shutil.copytree(trained.run_dir, tmp_path / "run")
    for name in ("tb", "checkpoints"):
        kept = tmp_path / f"{name}.kept"
        (run / name).rename(kept)
        (run / name).symlink_to(target.parent, target_is_directory=True)
        for extra in (["--overwrite"], ["--resume"]):
            err = one_line_error(capsys, main(train_args(voc_root, run, "--max-iters", "2", *extra)))
            assert f"{run / name}: is a link or a file, not a folder of this run" in err
        (run / name).unlink()
        kept.rename(run / name)
    assert sorted(p.name for p in target.parent.iterdir()) == ["precious.txt"] and target.read_text() == "the user's own bytes"


# -- predict, eval, demo, export ------------------------------------------------------------------------------------
def test_predict_overwrite_replaces_links_and_never_writes_through_them(trained, voc_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    image = sorted((voc_root / "JPEGImages").iterdir())[0]
    (photos / "a.jpg").write_bytes(image.read_bytes())
    original = (photos / "a.jpg").read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "detections.jsonl").symlink_to(photos / "a.jpg")  # a link to an input photo
    (out / "a.jpg").symlink_to(photos / "a.jpg")
    args = ["predict", "--weights", str(trained.last), str(photos / "a.jpg"), "--output", str(out), "--quiet", "--device", "cpu"]
    assert main([*args, "--overwrite"]) == 0
    assert (photos / "a.jpg").read_bytes() == original
    assert not (out / "detections.jsonl").is_symlink() and json.loads((out / "detections.jsonl").read_text())["image_id"] == "a"
    assert not (out / "a.jpg").is_symlink() and (out / "a.jpg").read_bytes() != original  # the drawn picture


def test_an_output_name_that_is_a_folder_is_refused_before_the_work(trained, voc_root, tmp_path, monkeypatch, capsys):
    import fasterrcnn.engine.evaluator as evaluator
    import fasterrcnn.runs.prediction as prediction

    monkeypatch.setattr(prediction, "load_detector", lambda *a, **k: pytest.fail("the model was loaded before checking the outputs"))
    monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated before checking the output"))
    image = sorted((voc_root / "JPEGImages").iterdir())[0]
    (tmp_path / "p").mkdir()
    (tmp_path / "q" / "a.jpg").mkdir(parents=True)
    (tmp_path / "p" / "a.jpg").write_bytes(image.read_bytes())  # output a.jpg
    (tmp_path / "q" / "a.jpg" / "b.jpg").write_bytes(image.read_bytes())  # output a.jpg/b.jpg: a.jpg a folder
    args = ["predict", "--weights", str(trained.last), str(tmp_path / "p" / "a.jpg"), str(tmp_path / "q"), "--output", str(tmp_path / "out")]
    assert "a.jpg would be both a file and the folder of a.jpg/b.jpg" in one_line_error(capsys, main(args))

    (tmp_path / "out" / "a.jpg").mkdir(parents=True)
    args = ["predict", "--weights", str(trained.last), str(tmp_path / "p" / "a.jpg"), "--output", str(tmp_path / "out"), "--overwrite"]
    assert f"{tmp_path / 'out' / 'a.jpg'}: is a folder where this command writes a file" in one_line_error(capsys, main(args))

    (tmp_path / "eval" / "metrics.json").mkdir(parents=True)
    args = ["eval", "--weights", str(trained.last), "--data", str(voc_root), "--output", str(tmp_path / "eval"), "--overwrite"]
    assert "metrics.json: is a folder where this command writes a file" in one_line_error(capsys, main(args))

    (tmp_path / "model.onnx").mkdir()
    args = ["export", "--weights", str(trained.last), "--output", str(tmp_path / "model.onnx"), "--overwrite"]
    assert f"{tmp_path / 'model.onnx'}: is a folder; --output names the file to write" in one_line_error(capsys, main(args))
    args = ["compress", "--weights", str(trained.last), "--output", str(tmp_path / "model.onnx"), "--overwrite"]
    assert "is a folder; --output names the file to write" in one_line_error(capsys, main(args))


def test_export_never_replaces_the_checkpoint_it_exports(trained, tmp_path, capsys):
    weights = tmp_path / "model.bin"
    weights.write_bytes(trained.last.read_bytes())
    before = weights.read_bytes()
    for output in (weights, tmp_path / "model.xml"):  # the checkpoint itself; the .bin beside the .xml
        args = ["export", "--weights", str(weights), "--output", str(output), "--overwrite"]
        assert f"{weights} is the input {weights}, which is never written over" in one_line_error(capsys, main(args))
    (tmp_path / "link.onnx").symlink_to(weights)
    args = ["export", "--weights", str(weights), "--output", str(tmp_path / "link.onnx"), "--overwrite"]
    assert "which is never written over" in one_line_error(capsys, main(args))
    assert weights.read_bytes() == before and not (tmp_path / "model.xml").exists()


def test_eval_output_inside_a_yolo_split_folder_is_refused(trained, voc_root, tmp_path, capsys):
    yolo = tmp_path / "yolo"
    (yolo / "images" / "val").mkdir(parents=True)
    (yolo / "labels" / "val").mkdir(parents=True)
    for image in sorted((voc_root / "JPEGImages").iterdir())[:2]:
        (yolo / "images" / "val" / image.name).write_bytes(image.read_bytes())
        (yolo / "labels" / "val" / f"{image.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (yolo / "data.yaml").write_text(f"path: .\ntrain: images/val\nval: images/val\nnames: {list(SYNTHETIC_CLASSES)}\n")
    args = ["eval", "--weights", str(trained.last), "--data", str(yolo), "--split", "val", "--output", str(yolo / "images" / "val" / "eval")]
    err = one_line_error(capsys, main(args))
    assert f"lies inside the input folder {yolo / 'images' / 'val'}, which is searched recursively" in err
    assert sorted(p.name for p in (yolo / "images" / "val").iterdir()) == ["000000.jpg", "000001.jpg"]  # nothing written there


def test_demo_refuses_a_folder_that_is_not_an_earlier_demos(tmp_path, capsys):
    out = tmp_path / "demo"
    for relative, text in (("data/JPEGImages/000001.jpg", "my photo"), ("data/ImageSets/Main/train.txt", "000001\n")):
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text(text)
    err = one_line_error(capsys, main(["demo", "--output", str(out), "--max-iters", "1", "--quiet"]))
    assert "is not empty and not an earlier demo's folder (no .fasterrcnn-demo in it)" in err
    assert (out / "data" / "JPEGImages" / "000001.jpg").read_text() == "my photo"
    assert (out / "data" / "ImageSets" / "Main" / "train.txt").read_text() == "000001\n"
    assert sorted(p.name for p in (out / "data" / "JPEGImages").iterdir()) == ["000001.jpg"]

    (out / ".fasterrcnn-demo").write_text("")  # an earlier demo's folder, with a file the demo does not write
    (out / "data" / "JPEGImages" / "mine.png").write_text("")
    err = one_line_error(capsys, main(["demo", "--output", str(out), "--max-iters", "1", "--quiet"]))
    assert "holds files the demo did not write (data/JPEGImages/mine.png)" in err and (out / "data" / "JPEGImages" / "mine.png").exists()


def test_a_stale_partial_download_is_removed_by_the_next_download(tmp_path, monkeypatch):
    import fasterrcnn.pretrained as pretrained

    entry = pretrained.PretrainedFile("x", "http://127.0.0.1:9/x-0123abcd.pth", pretrained.IMAGENET_BACKBONE, ("tiny",), "")
    folder = tmp_path / "cache"
    folder.mkdir()
    stale, fresh = folder / f".{entry.filename}.0123456789ab.tmp", folder / f".{entry.filename}.ba9876543210.tmp"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"in progress")
    os.utime(stale, (0, 0))  # untouched for long: a killed download's
    monkeypatch.setattr(pretrained.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(DataError, match="cannot download"):
        pretrained.download_file(entry, folder, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == [fresh.name]  # a download in progress is spared


# -- a full disk, a closed terminal ----------------------------------------------------------------------------------
@contextlib.contextmanager
def file_size_limit(limit):
    """Files of this process may not grow past ``limit`` bytes (SIGXFSZ ignored: the write fails with EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_past_the_file_size_limit_is_a_write_error_and_the_previous_file_survives(trained, tmp_path):
    import torch

    from fasterrcnn.engine.checkpoint import save_checkpoint

    last = tmp_path / "last.pt"
    save_checkpoint(last, {"iteration": 1})
    with pytest.raises(WriteError) as info, file_size_limit(4096):
        save_checkpoint(last, {"iteration": 2, "weights": torch.zeros(10_000)})  # torch: "unexpected pos 704 vs 598"
    assert str(info.value).startswith(f"{last}: cannot write checkpoint (the disk is full or the file system refused it: File too large")
    assert load_checkpoint(last) == {"iteration": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_predict_past_the_file_size_limit_is_one_line(trained, voc_root, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    import fasterrcnn.runs.prediction as prediction

    photo = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(photo)
    save = prediction.atomic_save

    def limited(path, writer):
        with file_size_limit(500):  # the drawn picture of the noise needs more
            return save(path, writer)

    monkeypatch.setattr(prediction, "atomic_save", limited)
    out = tmp_path / "out"
    code = main(["predict", "--weights", str(trained.last), str(photo), "--output", str(out), "--quiet", "--device", "cpu", "--precision", "f32"])
    err = one_line_error(capsys, code)
    assert f"{out / 'noise.jpg'}: cannot write the picture (the file size limit or quota is reached: File too large)" in err
    assert not (out / "noise.jpg").exists()


def test_sighup_stops_training_like_sigterm_and_releases_the_lock(voc_root, tmp_path, monkeypatch, capsys):
    from fasterrcnn.engine.logging import MetricsLogger

    log_step = MetricsLogger.log_step

    def hang_up_at_the_first_step(self, iteration, *args, **kwargs):
        log_step(self, iteration, *args, **kwargs)
        if iteration == 1:
            os.kill(os.getpid(), signal.SIGHUP)  # the terminal closed

    monkeypatch.setattr(MetricsLogger, "log_step", hang_up_at_the_first_step)
    received = []
    previous = signal.signal(signal.SIGHUP, lambda *args: received.append(args))  # never the default: it ends pytest
    try:
        code = main(train_args(voc_root, tmp_path / "run", "--max-iters", "4"))
    finally:
        signal.signal(signal.SIGHUP, previous)
    err = capsys.readouterr().err.strip()
    assert code == 129 and received == [], err
    assert err.startswith("fasterrcnn: SIGHUP received: stopped after iteration 1, checkpoint saved to") and "--resume" in err
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["iteration"] == 1
    assert (tmp_path / "run" / ".lock").read_text() == ""  # released


# -- every command that writes, with a planted link and a foreign file in its output ----------------------------------
def test_every_command_that_writes_leaves_a_planted_links_target_and_a_foreign_file_alone(trained, voc_root, tmp_path, capsys):
    target = victim(tmp_path)
    weights = [str(trained.last)]

    def planted(folder, link_name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "foreign.txt").write_text("not the project's")
        (folder / link_name).symlink_to(target)
        return folder

    def check(folder, link_name):
        assert target.read_text() == "the user's own bytes", folder
        assert (folder / "foreign.txt").read_text() == "not the project's", folder
        assert sorted(p.name for p in target.parent.iterdir()) == ["precious.txt"], folder
        return not (folder / link_name).is_symlink()  # replaced (the link itself) or left

    run = planted(tmp_path / "train", "config.json")
    assert main(train_args(voc_root, run, "--max-iters", "1", "--overwrite")) == 2
    check(run, "config.json")
    run = planted(tmp_path / "train_lock", ".lock")
    (run / "foreign.txt").unlink()
    assert main(train_args(voc_root, run, "--max-iters", "1")) == 2
    (run / "foreign.txt").write_text("not the project's")
    check(run, ".lock")

    out = planted(tmp_path / "eval", "metrics.json")
    assert main(["eval", "--weights", *weights, "--data", str(voc_root), "--output", str(out), "--overwrite", "--quiet", "--device", "cpu"]) == 0
    assert check(out, "metrics.json") and json.loads((out / "metrics.json").read_text())["num_images"] == 2

    image = sorted((voc_root / "JPEGImages").iterdir())[0]
    out = planted(tmp_path / "predict", "detections.jsonl")
    assert main(["predict", "--weights", *weights, str(image), "--output", str(out), "--overwrite", "--quiet", "--device", "cpu"]) == 0
    assert check(out, "detections.jsonl")

    out = planted(tmp_path / "demo", "data")
    assert main(["demo", "--output", str(out), "--max-iters", "1", "--quiet"]) == 2
    check(out, "data")

    out = planted(tmp_path / "compress", "small.pt")
    assert main(["compress", "--weights", *weights, "--ranks", "8", "4", "--output", str(out / "small.pt"), "--overwrite"]) == 0
    assert check(out, "small.pt") and load_checkpoint(out / "small.pt")["config"]["model"]

    out = planted(tmp_path / "convert", "data.yaml")
    assert main(["convert", str(voc_root), str(out), "--to", "yolo"]) == 2
    check(out, "data.yaml")

    out = planted(tmp_path / "calibrate", "calibrated.pt")
    args = ["calibrate", "--weights", *weights, "--data", str(voc_root), "--split", "test", "--output", str(out / "calibrated.pt")]
    assert main([*args, "--overwrite", "--quiet", "--device", "cpu"]) == 0
    assert check(out, "calibrated.pt") and load_checkpoint(out / "calibrated.pt")["config"]["model"]["box_score_temperature"] > 0

    out = planted(tmp_path / "benchmark", "benchmark.csv")
    args = ["benchmark", "--weights", *weights, "--data", str(voc_root), "--paths", "eager f32", "--output", str(out / "benchmark.csv")]
    assert main([*args, "--overwrite", "--quiet"]) == 0
    assert check(out, "benchmark.csv") and (out / "benchmark.csv").read_text().startswith("path,available")

    pytest.importorskip("onnx")  # the 'deploy' extra
    out = planted(tmp_path / "export", "model.onnx")
    assert main(["export", "--weights", *weights, "--output", str(out / "model.onnx"), "--overwrite"]) == 0
    assert check(out, "model.onnx") and (out / "model.onnx").stat().st_size > 1000
    capsys.readouterr()

