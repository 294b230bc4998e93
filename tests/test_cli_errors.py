"""Bad input on the command line: one stderr line ``fasterrcnn: error: ...`` naming the file, exit code 2."""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest
import torch

from fasterrcnn.cli import main
from fasterrcnn.data.synthetic import write_synthetic_voc
from fasterrcnn.errors import DataError

SMALL = ["--set", "model.min_size=48", "--set", "model.max_size=64", "--batch-size", "2", "--quiet", "--no-val"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=3, num_test=1, image_size=(48, 48), seed=2)


@pytest.fixture
def voc_root(pristine, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(pristine, root)
    return root


def train_args(root, out, *extra):
    return ["train", "--data", str(root), "--split", "train", "--preset", "tiny", "--output", str(out), "--max-iters", "2", *SMALL, *extra]


def assert_one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fasterrcnn: error: "), lines[0]
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    assert "Traceback" not in err


def first_id(root):
    return (root / "ImageSets" / "Main" / "train.txt").read_text().split()[0]


def test_missing_data_path(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert_one_line_error(capsys, main(train_args(missing, tmp_path / "out")), missing)


def test_broken_xml(voc_root, tmp_path, capsys):
    xml = voc_root / "Annotations" / f"{first_id(voc_root)}.xml"
    xml.write_text(xml.read_text()[:-40])
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "out", "--on-bad-image", "error")), xml, "XML")


def test_unknown_class(voc_root, tmp_path, capsys):
    code = main(train_args(voc_root, tmp_path / "out", "--classes", "nothing,else"))
    assert_one_line_error(capsys, code, voc_root / "Annotations", "unknown class")


def test_truncated_image(voc_root, tmp_path, capsys):
    for image in (voc_root / "JPEGImages").iterdir():  # all of them: the first batch fails, whatever the order
        image.write_bytes(image.read_bytes()[:300])
    out = tmp_path / "out"
    code = main(train_args(voc_root, out, "--on-bad-image", "error"))
    assert_one_line_error(capsys, code, voc_root / "JPEGImages", ".jpg: cannot read image")
    assert not (out / "checkpoints" / "last.pt").exists()


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory):
    """A checkpoint of an untrained tiny model (no training needed to test predict's input checks)."""
    from fasterrcnn.config import to_dict
    from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES
    from fasterrcnn.engine.checkpoint import save_checkpoint
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    model = FasterRCNN.from_preset("tiny", num_classes=len(SYNTHETIC_CLASSES), min_size=48, max_size=64)
    path = tmp_path_factory.mktemp("weights") / "untrained.pt"
    state = {"model": model.state_dict(), "config": {"preset": "tiny", "model": to_dict(model.config)}}
    save_checkpoint(path, {**state, "class_names": list(SYNTHETIC_CLASSES)})
    return path


def test_predict_unreadable_and_missing_images(untrained_weights, tmp_path, capsys):
    weights = str(untrained_weights)
    missing = tmp_path / "missing.jpg"
    assert_one_line_error(capsys, main(["predict", "--weights", weights, str(missing), "--output", str(tmp_path / "p")]), missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(capsys, main(["predict", "--weights", weights, str(empty), "--output", str(tmp_path / "p")]), empty)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    code = main(["predict", "--weights", weights, str(bad), "--output", str(tmp_path / "p"), "--on-bad-image", "error", "--precision", "f32"])
    assert_one_line_error(capsys, code, bad, "cannot read image")
    assert json.loads((tmp_path / "p" / "detections.json").read_text()) == []  # it covers the images read: none
    missing_weights = tmp_path / "w.pt"
    code = main(["predict", "--weights", str(missing_weights), str(bad), "--output", str(tmp_path / "q")])
    assert_one_line_error(capsys, code, missing_weights, "no such checkpoint")


class Payload:
    """Unpickling this runs ``touch MARKER`` (a pickle ``__reduce__`` payload, as in a malicious checkpoint)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_unsafe_or_broken_checkpoint(voc_root, tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    live = tmp_path / "live.pt"
    torch.save({"x": Payload(tmp_path / "live_payload_ran")}, live)
    torch.load(live, weights_only=False)  # the payload is live: full unpickling runs it
    assert (tmp_path / "live_payload_ran").exists()

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Payload(marker)}, evil)
    code = main(["eval", "--weights", str(evil), "--data", str(voc_root), "--output", str(tmp_path / "e")])
    assert_one_line_error(capsys, code, evil, "refused to load")
    image = voc_root / "JPEGImages" / f"{first_id(voc_root)}.jpg"
    code = main(["predict", "--weights", str(evil), str(image), "--output", str(tmp_path / "p")])
    assert_one_line_error(capsys, code, evil, "refused to load")
    code = main(train_args(voc_root, tmp_path / "bb", "--backbone-weights", str(evil)))
    assert_one_line_error(capsys, code, evil, "refused by safe loading")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(evil, run / "checkpoints" / "last.pt")
    code = main(train_args(voc_root, run, "--resume"))
    assert_one_line_error(capsys, code, run / "checkpoints" / "last.pt", "refused to load")
    from fasterrcnn.detector import Detector

    with pytest.raises(DataError, match="refused to load"):
        Detector.from_checkpoint(evil)
    assert not marker.exists()  # never unpickled with code execution

    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, plain)
    code = main(["eval", "--weights", str(plain), "--data", str(voc_root), "--output", str(tmp_path / "e")])
    assert_one_line_error(capsys, code, plain, "not a fasterrcnn checkpoint")


def test_config_files_are_data_never_code(voc_root, tmp_path, capsys):
    marker = tmp_path / "config_ran"
    command = f"__import__('os').system('touch {marker}')"
    config = tmp_path / "config.py"
    config.write_text(command + "\n")
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "o", "--config", str(config))), config, "not valid JSON")
    yaml = tmp_path / "config.yaml"  # YAML's python tags are not data either
    yaml.write_text(f'preset: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "o", "--config", str(yaml))), yaml, "not valid YAML")
    config = tmp_path / "config.json"  # strings stay strings, however they look
    config.write_text(json.dumps({"preset": "tiny", "train": {"lr": command}}))
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "o", "--config", str(config))), "train.lr", "must be a finite number")
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "o", "--set", f"train.seed={command}")), "seed")
    assert not marker.exists()


def test_bad_detections_file(voc_root, tmp_path, capsys):
    broken = tmp_path / "dets.json"
    broken.write_text("[{")
    args = ["eval", "--detections", str(broken), "--data", str(voc_root), "--split", "test", "--output", str(tmp_path / "e")]
    assert_one_line_error(capsys, main(args), broken)
    broken.write_text(json.dumps([{"image_id": "nope", "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]))
    assert_one_line_error(capsys, main(args), broken, "nope")


def test_bad_coco_json(tmp_path, capsys):
    bad = tmp_path / "instances.json"
    bad.write_text('{"images": [')
    assert_one_line_error(capsys, main(train_args(bad, tmp_path / "out")), bad)


def test_bad_options_and_config(voc_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--set", "train.no_such_field=1")), "no_such_field")
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--set", "train.lr=fast")), "lr")
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--set", "lr=1")), "--set")
    config = tmp_path / "config.json"
    config.write_text("{not json")
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--config", str(config))), config)
    config.write_text(json.dumps({"preset": "tiny", "optimizer": {}}))
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--config", str(config))), config, "optimizer")
    args = train_args(voc_root, out)
    args[args.index("tiny")] = "no_such_preset"
    assert_one_line_error(capsys, main(args), "no_such_preset")
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--resume")), out / "checkpoints" / "last.pt")
    if not torch.cuda.is_available():
        assert_one_line_error(capsys, main(train_args(voc_root, out, "--device", "cuda:7")), "CUDA is not available")
    assert_one_line_error(capsys, main(train_args(voc_root, out, "--device", "toaster")), "toaster")


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path)]) == 2  # --output missing
    err = capsys.readouterr().err
    assert "--output" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--data", str(tmp_path), "--output", str(tmp_path)]) == 2  # --weights or --detections
    assert "--weights" in capsys.readouterr().err
    assert main(["train", "--data", "x", "--output", "y", "--max-iters", "0"]) == 2
    assert ">= 1" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main([]) == 2


def test_existing_run_needs_resume(voc_root, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"")
    assert_one_line_error(capsys, main(train_args(voc_root, out)), "--resume")


def test_an_image_or_text_file_as_weights_is_named_for_what_it_is(voc_root, tmp_path, capsys):
    image = voc_root / "JPEGImages" / f"{first_id(voc_root)}.jpg"
    notes, empty = tmp_path / "notes.txt", tmp_path / "empty.pt"
    notes.write_text("remember to train\n")
    empty.write_bytes(b"")
    for weights, kind in ((image, "it is a JPEG image"), (notes, "it is a text file"), (empty, "the file is empty")):
        code = main(["predict", "--weights", str(weights), str(image), "--output", str(tmp_path / "p"), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2
        assert err == f"fasterrcnn: error: {weights}: not a checkpoint ({kind})\n"
    code = main(["predict", "--weights", str(image), "--preset", "resnet50_fpn", str(image), "--output", str(tmp_path / "p")])
    assert_one_line_error(capsys, code, f"{image}: not a PyTorch weights file (it is a JPEG image)")


# -- Hostile input: each of these ended in a traceback, a hang or unbounded memory -------------------------------
def assert_usage_error(capsys, code, *fragments):
    """An option refused by the parser: one line ``fasterrcnn CMD: error: argument ...``, exit 2."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and ": error: argument" in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


@pytest.mark.timeout(60)  # the old code opened the named pipe and waited for a writer forever
def test_predict_skips_a_named_pipe_in_a_folder(untrained_weights, voc_root, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(voc_root / "JPEGImages" / f"{first_id(voc_root)}.jpg", photos / "a.jpg")
    os.mkfifo(photos / "b.jpg")
    code = main(["predict", "--weights", str(untrained_weights), str(photos), "--output", str(tmp_path / "p"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"fasterrcnn: WARNING: skipping {photos / 'b.jpg'}: is a named pipe (FIFO), not a regular file" in err.splitlines()
    assert [json.loads(line)["image_id"] for line in (tmp_path / "p" / "detections.jsonl").read_text().splitlines()] == ["a"]
    code = main(["predict", "--weights", str(untrained_weights), str(photos / "b.jpg"), "--output", str(tmp_path / "q"), "--on-bad-image", "error", "--precision", "f32"])
    assert_one_line_error(capsys, code, f"{photos / 'b.jpg'}: is a named pipe (FIFO), not a regular file")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1.5"])
def test_score_threshold_outside_0_1_is_refused(untrained_weights, voc_root, tmp_path, capsys, value):
    image = voc_root / "JPEGImages" / f"{first_id(voc_root)}.jpg"
    code = main(["predict", "--weights", str(untrained_weights), str(image), "--output", str(tmp_path / "p"), "--score-threshold", value])
    assert_usage_error(capsys, code, "--score-threshold: must be a number in [0, 1]")
    code = main(["eval", "--weights", str(untrained_weights), "--data", str(voc_root), "--output", str(tmp_path / "e"), "--score-threshold", value])
    assert_usage_error(capsys, code, "--score-threshold: must be a number in [0, 1]")
    assert not (tmp_path / "p").exists() and not (tmp_path / "e").exists()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\npreset: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"


@pytest.mark.parametrize(
    "name, text, problem",
    [
        ("bomb.yaml", BOMB, "not valid YAML (line 2 column 8: found the alias *a: aliases are not read here, write the value out)"),
        ("digits.json", '{"model": {"box_detections_per_img": 1%s}}' % ("0" * 5000), "model.box_detections_per_img = inf: must be an integer"),
        ("overflow.json", '{"train": {"lr": 1%s}}' % ("0" * 400), "train.lr = inf: must be a finite number"),
        ("deep.json", '{"model": %s}' % ("[" * 20000 + "]" * 20000), "JSON nested too deeply to read"),
        ("deep.yaml", "model: %s\n" % ("[" * 1500 + "]" * 1500), "not valid YAML (nested too deeply to read)"),
    ],
)  # fmt: skip
def test_hostile_config_files_are_one_line_errors(voc_root, tmp_path, capsys, name, text, problem):
    config = tmp_path / name
    config.write_text(text)
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "out", "--config", str(config))), problem)


def test_hostile_set_values_and_sizes_are_one_line_errors(voc_root, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--set", "model.min_size=1" + "0" * 5000], "model.min_size = inf: must be an integer"),
        (["--set", "train.lr=1" + "0" * 400], "train.lr = inf: must be a finite number"),
        (["--set", "model.image_mean=" + "[" * 20000 + "]" * 20000], "--set model.image_mean: JSON nested too deeply to read"),
        (["--set", "model.representation_size=100000000"], "model.representation_size = 100000000: must be <= 16384"),
        (["--set", "model.min_size=100000", "--set", "model.max_size=100000"], "model.min_size = 100000: must be <= 8192"),
    ]
    for extra, problem in cases:
        assert_one_line_error(capsys, main(train_args(voc_root, out, *extra)), problem)
    args = train_args(voc_root, out, "--time", "1e300")
    del args[args.index("--max-iters") : args.index("--max-iters") + 2]
    assert_one_line_error(capsys, main(args), "train.time = 1e+300: must be <= 14400.0")
    assert not (out / "checkpoints").exists()


def test_an_allocation_failure_is_one_line(voc_root, tmp_path, capsys, monkeypatch):
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 400000000000 bytes.")

    monkeypatch.setattr(FasterRCNN, "from_config", allocate)
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "out")), "out of memory (", "not enough memory: you tried to allocate 400000000000 bytes")


def test_torchrun_variables_that_do_not_fit_are_one_line(voc_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "out")), "environment variable WORLD_SIZE='abc' is not an integer")
    for name, value in (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert_one_line_error(capsys, main(train_args(voc_root, tmp_path / "out")), "environment variable MASTER_ADDR is not set")


@pytest.mark.parametrize(
    "mapping, problem",
    [
        ([1, 2, 3], "label_to_category_id is a list, expected a mapping {label: category id}"),
        ("1,2,3", "label_to_category_id is a str, expected a mapping {label: category id}"),
        ({1: 10, 2: 20}, "label_to_category_id must map each label 1..5 to an integer category id"),
        ({1: 10, 2: 20, 3: 30, 4: 40, 5: "x"}, "label_to_category_id must map each label 1..5 to an integer category id"),
    ],
)
def test_a_checkpoint_with_bad_category_ids_is_refused(untrained_weights, voc_root, tmp_path, capsys, mapping, problem):
    state = torch.load(untrained_weights, weights_only=True)
    weights = tmp_path / "coco.pt"
    torch.save({**state, "label_to_category_id": mapping}, weights)
    image = voc_root / "JPEGImages" / f"{first_id(voc_root)}.jpg"
    code = main(["predict", "--weights", str(weights), str(image), "--output", str(tmp_path / "p"), "--quiet"])
    assert_one_line_error(capsys, code, f"{weights}: checkpoint's {problem}")


def test_a_checkpoint_with_a_huge_input_size_is_refused(untrained_weights, voc_root, tmp_path, capsys):
    state = torch.load(untrained_weights, weights_only=True)
    state["config"]["model"].update(min_size=100000, max_size=100000)
    weights = tmp_path / "huge.pt"
    torch.save(state, weights)
    image = voc_root / "JPEGImages" / f"{first_id(voc_root)}.jpg"
    code = main(["predict", "--weights", str(weights), str(image), "--output", str(tmp_path / "p"), "--quiet"])
    assert_one_line_error(capsys, code, weights, "model.min_size = 100000: must be <= 8192")


@pytest.fixture(scope="module")
def trained_run(pristine, tmp_path_factory):
    """A run folder after one training iteration: config.json, metrics.jsonl, checkpoints/last.pt."""
    out = tmp_path_factory.mktemp("trained") / "run"
    args = train_args(pristine, out)
    args[args.index("--max-iters") + 1] = "1"
    assert main(args + ["--set", "train.log_every=1"]) == 0
    return out


def tamper_state(change):
    def tamper(run):
        path = run / "checkpoints" / "last.pt"
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)

    return tamper


def first_buffer(state):
    return next(iter(state["optimizer"]["state"].values()))


@pytest.mark.parametrize(
    "tamper, problem",
    [
        (lambda run: (run / "config.json").write_text('{"preset": "tiny", "lr": NaN}'), "config.json: holds NaN or Infinity"),
        (lambda run: (run / "config.json").write_text('{"preset": "tiny", "changes": "none"}'), "config.json: 'changes' must be a list"),
        (lambda run: (run / "metrics.jsonl").write_text('[1, 2]\n{"iteration": 1}\n'), "metrics.jsonl: line 1: expected a JSON object (one record), got list"),
        (lambda run: (run / "metrics.jsonl").write_bytes(b'{"iteration": 1, "x": "\xff"}\n'), "metrics.jsonl: metrics file is not UTF-8 text (byte 23)"),
        (tamper_state(lambda s: first_buffer(s).update(momentum_buffer=torch.zeros(3))), "optimizer state 'momentum_buffer' is [3] for a parameter of shape"),
        (tamper_state(lambda s: s["scheduler"].update(iteration="one")), "scheduler.iteration is 'one', expected a finite number"),
        (tamper_state(lambda s: s.update(iteration=-5)), "iteration is -5, expected a whole number >= 0"),
        (tamper_state(lambda s: s.update(best_metric="high")), "best_metric is 'high', expected a finite number or None"),
        (tamper_state(lambda s: s["rng"].update(torch=torch.zeros(3))), "holds a training state that does not fit"),
        (tamper_state(lambda s: s["rng"].update(python="x")), "holds a training state that does not fit"),
        (tamper_state(lambda s: s["optimizer"].update(param_groups=[])), "holds a training state that does not fit"),
    ],
)  # fmt: skip
def test_resume_from_tampered_run_files_is_one_line(trained_run, tmp_path, capsys, tamper, problem):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    tamper(run)
    args = train_args(run.parent / "unused", run, "--resume")
    args[args.index("--data") + 1] = json.loads((trained_run / "config.json").read_text())["data"]["train"]["path"]
    assert_one_line_error(capsys, main(args), problem)
