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
