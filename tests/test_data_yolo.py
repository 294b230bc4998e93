import json
import logging
import os

import pytest
import torch
from PIL import Image

from fasterrcnn.cli import main
from fasterrcnn.data import YOLODataset, build_dataset, write_synthetic_voc
from fasterrcnn.data.convert import convert
from fasterrcnn.data.yolo import label_path
from fasterrcnn.engine.evaluator import default_metric, evaluate_results
from fasterrcnn.errors import DataError

NAMES = "names: [cat, dog, bird]\n"


def write_yolo(root, images, yaml=None, split="train"):
    """images: {relative image path under images/<split>/: ((height, width), label text or None)}."""
    for name, ((height, width), labels) in images.items():
        image = root / "images" / split / name
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (width, height), (10, 200, 30)).save(image)
        if labels is not None:
            label = label_path(image)
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(labels)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml if yaml is not None else f"train: images/train\nval: images/val\n{NAMES}")
    return yaml_path


def one_image(tmp_path, labels, size=(20, 40), **kwargs):
    return YOLODataset(write_yolo(tmp_path, {"a.png": (size, labels)}), **kwargs)


def test_label_path_replaces_the_last_images_folder():
    assert label_path("/d/images/train/x.jpg") == label_path("/d/images/train/x.png")
    assert str(label_path("/d/images/train/x.jpg")) == "/d/labels/train/x.txt"
    assert str(label_path("/images/d/images/x.jpeg")) == "/images/d/labels/x.txt"
    assert str(label_path("/d/pictures/images.jpg")) == "/d/pictures/images.txt"  # no images folder: next to it


def test_sample_boxes_from_normalized_centre_and_size(tmp_path):
    labels = "0 0.5 0.5 0.5 0.5\n\n2 0.125 0.25 0.25 0.5\n1 0.1 0.2 0.3 0.2 0.2 0.9\n"
    dataset = one_image(tmp_path, labels)  # h 20, w 40
    assert dataset.classes == ("cat", "dog", "bird")
    assert dataset.ids == ["a"]
    assert dataset.split == "train"
    assert dataset.image_size(0) == (20, 40)
    assert dataset.image_path(0) == tmp_path / "images" / "train" / "a.png"
    image, target = dataset[0]
    assert image.shape == (3, 20, 40) and image.dtype == torch.float32
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 15.0], [0.0, 0.0, 10.0, 10.0], [4.0, 4.0, 12.0, 18.0]]))
    assert torch.equal(target["labels"], torch.tensor([1, 3, 2]))  # class index + 1; the polygon's bounding box
    assert target["image_id"] == "a" and target["orig_size"] == (20, 40)
    (truth,) = dataset.ground_truth()
    assert torch.equal(truth["boxes"], target["boxes"]) and torch.equal(truth["labels"], target["labels"])
    assert torch.equal(truth["difficult"], torch.tensor([False, False, False]))
    assert default_metric(dataset) == "voc"


def test_missing_or_empty_label_file_is_an_image_without_objects(tmp_path):
    dataset = YOLODataset(write_yolo(tmp_path, {"a.png": ((8, 8), None), "b.png": ((8, 8), "\n")}))
    assert dataset.ids == ["a", "b"]
    for i in range(2):
        assert dataset[i][1]["boxes"].shape == (0, 4) and dataset[i][1]["labels"].shape == (0,)
    assert YOLODataset(tmp_path, drop_empty=True).ids == []


def test_names_mapping_nc_and_split_choice(tmp_path):
    yaml = "train: images/train\nnc: 2\nnames:\n  1: dog\n  0: cat\n"
    dataset = YOLODataset(write_yolo(tmp_path, {"a.png": ((8, 8), "1 0.5 0.5 0.5 0.5")}, yaml=yaml), split="trainval")
    assert dataset.classes == ("cat", "dog") and dataset.split == "train"
    assert torch.equal(dataset[0][1]["labels"], torch.tensor([2]))
    with pytest.raises(DataError) as info:
        YOLODataset(tmp_path, split="test")
    assert str(info.value) == f"{tmp_path / 'data.yaml'}: has no 'test' split (it has: train)"
    with pytest.raises(DataError) as info:
        YOLODataset(tmp_path, classes=["dog", "cat"])
    assert str(info.value) == f"{tmp_path / 'data.yaml'}: names cat, dog differ from the expected classes dog, cat"


@pytest.mark.parametrize(
    "yaml, problem",
    [
        ("train: [a\n", "not valid YAML (line 2 column 1: expected ',' or ']', but got '<stream end>')"),
        ("- a\n- b\n", "is not a YOLO data.yaml (expected a mapping with train, val and names)"),
        ("train: images/train\n", "needs 'names': the class names, a list or a mapping {index: name}"),
        ("train: images/train\nnames: {0: a, 2: b}\n", "'names' keys must be the class indices 0..1, got [0, 2]"),
        ("train: images/train\nnames: {0: a, x: b}\n", "'names' keys must be the class indices 0..1, got [0, 'x']"),
        ("train: images/train\nnames: [a]\nnc: 1%s\n" % ("0" * 5000), "not valid YAML (Exceeds the limit (4300 digits) for integer string conversion: value has 5001 digits)"),
        ("train: images/train\nnames: [a, a]\n", "'names' lists a class twice: ['a', 'a']"),
        # an alias bomb (each level 9 times the one before) is refused at its first alias, never expanded
        ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nnames: [*b, *b]\n",
         "not valid YAML (line 2 column 8: found the alias *a: aliases are not read here, write the value out)"),
        ("train: images/train\nnc: 3\nnames: [a, b]\n", "nc is 3 but 'names' has 2 classes"),
    ],
)
def test_bad_data_yaml_is_a_one_line_error(tmp_path, yaml, problem):
    path = write_yolo(tmp_path, {"a.png": ((8, 8), None)}, yaml=yaml)
    with pytest.raises(DataError) as info:
        YOLODataset(path, on_bad_image="skip")
    assert str(info.value) == f"{path}: {problem}"


@pytest.mark.parametrize(
    "labels, problem",
    [
        ("0 0.5 0.5 0.5\n", "line 1: 4 values, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...)"),
        ("\n0 0.5 0.5 0.5 0.5 0.5\n", "line 2: 6 values, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...)"),
        ("0 0.5 abc 0.5 0.5\n", "line 1: 'abc' is not a number"),
        ("0 0.5 nan 0.5 0.5\n", "line 1: 'nan' is not a finite number"),
        ("0 inf 0.5 0.5 0.5\n", "line 1: 'inf' is not a finite number"),
        ("3 0.5 0.5 0.5 0.5\n", "line 1: class 3 is not one of the 3 classes of 'names' (0..2)"),
        ("-1 0.5 0.5 0.5 0.5\n", "line 1: class -1 is not one of the 3 classes of 'names' (0..2)"),
        ("0.5 0.5 0.5 0.5 0.5\n", "line 1: class 0.5 is not one of the 3 classes of 'names' (0..2)"),
        ("0 12 30 4 8\n", "line 1: coordinate 12 is outside [0, 1] (YOLO labels are divided by the image size)"),
        ("0 0.5 0.5 -0.2 0.5\n", "line 1: coordinate -0.2 is outside [0, 1] (YOLO labels are divided by the image size)"),
    ],
)
def test_bad_label_line_names_the_file_and_line(tmp_path, labels, problem):
    with pytest.raises(DataError) as info:
        one_image(tmp_path, labels)
    assert str(info.value) == f"{tmp_path / 'labels' / 'train' / 'a.txt'}: {problem}"


def test_slightly_outside_is_clipped_and_empty_dropped_with_one_warning(tmp_path, caplog):
    labels = "0 0.995 0.5 0.02 0.5\n1 0.5 0.5 0 0.5\n2 0.25 0.5 0.5 1\n"  # x2 = 1.005; zero width; inside
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = one_image(tmp_path, labels, size=(10, 100))
    _, target = dataset[0]
    assert torch.allclose(target["boxes"], torch.tensor([[98.5, 2.5, 100.0, 7.5], [0.0, 0.0, 50.0, 10.0]]))
    assert torch.equal(target["labels"], torch.tensor([1, 3]))
    assert (dataset.num_clipped, dataset.num_dropped) == (1, 1)
    (record,) = [r for r in caplog.records if "clipped" in r.getMessage()]
    assert record.getMessage() == (
        f"YOLO {tmp_path / 'data.yaml'} (train): 1 boxes clipped to the image, 1 empty boxes dropped "
        f"(the first in {tmp_path / 'labels' / 'train' / 'a.txt'})"
    )


def test_skip_policy_keeps_the_good_images(tmp_path, caplog):
    images = {"good.png": ((8, 8), "0 0.5 0.5 0.5 0.5"), "bad.png": ((8, 8), "7 0.5 0.5 0.5 0.5")}
    path = write_yolo(tmp_path, images)
    (tmp_path / "images" / "train" / "broken.jpg").write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = YOLODataset(path, on_bad_image="skip")
    assert dataset.ids == ["good"]
    assert dataset.skipped == [
        (str(tmp_path / "labels" / "train" / "bad.txt"), "line 1: class 7 is not one of the 3 classes of 'names' (0..2)"),
        (str(tmp_path / "images" / "train" / "broken.jpg"), "cannot read image (not an image, or a format Pillow cannot read)"),
    ]  # fmt: skip
    assert caplog.records[-1].getMessage().startswith(f"YOLO {path} (train): 2 of 3 images skipped (bad files")
    (tmp_path / "images" / "train" / "good.png").write_bytes(b"")
    with pytest.raises(DataError) as info:
        YOLODataset(path, on_bad_image="skip")
    assert str(info.value).startswith(f"{path}: none of its 3 images can be used (the first: ")


@pytest.mark.timeout(30)  # the old code opened the named pipe and waited for a writer forever
def test_label_files_that_are_not_regular_or_too_large_skip_their_image(tmp_path):
    names = ("good", "pipe", "zero", "huge", "binary")
    path = write_yolo(tmp_path, {f"{name}.png": ((8, 8), "0 0.5 0.5 0.5 0.5") for name in names})
    labels = tmp_path / "labels" / "train"
    for name in names[1:]:
        (labels / f"{name}.txt").unlink()
    os.mkfifo(labels / "pipe.txt")
    os.symlink("/dev/zero", labels / "zero.txt")  # read without a bound: gigabytes, then MemoryError
    with open(labels / "huge.txt", "wb") as f:  # sparse: no disk space used
        f.truncate(20 * 2**20)
    (labels / "binary.txt").write_bytes(b"0 0.5 0.5 0.5 \xff\n")
    dataset = YOLODataset(path, on_bad_image="skip")
    assert dataset.ids == ["good"]
    assert dataset.skipped == [
        (str(labels / "binary.txt"), "label file is not UTF-8 text (byte 14)"),
        (str(labels / "huge.txt"), "label file is 20 MiB, more than the 16 MiB any real one needs"),
        (str(labels / "pipe.txt"), "is a named pipe (FIFO), not a regular file"),
        (str(labels / "zero.txt"), "is a character device, not a regular file"),
    ]


def test_image_lists_root_path_and_exported_parent_paths(tmp_path):
    root = tmp_path / "set"
    write_yolo(root, {"a.png": ((8, 8), "0 0.5 0.5 0.5 0.5"), "sub/b.png": ((8, 8), "1 0.5 0.5 1 1")}, yaml="")
    (root / "val.txt").write_text("./images/train/sub/b.png\n\nimages/train/a.png\nimages/train/missing.png\n")
    yaml = tmp_path / "cfg" / "my.yaml"
    yaml.parent.mkdir()
    yaml.write_text(f"path: ../set\ntrain: ../images/train\nval: val.txt\ntest: [images/train/a.png]\n{NAMES}")
    train = build_dataset(yaml, split="train")
    assert isinstance(train, YOLODataset)
    assert train.ids == ["a", "sub/b"]  # folders are searched recursively; ids relative to the folder
    with pytest.raises(DataError) as info:
        build_dataset(yaml, split="val")
    assert str(info.value) == f"{root / 'images' / 'train' / 'missing.png'}: image file not found"
    val = build_dataset(yaml, split="val", on_bad_image="skip")
    assert val.ids == ["images/train/sub/b", "images/train/a"]
    assert torch.equal(val[0][1]["labels"], torch.tensor([2]))
    assert build_dataset(yaml, split="test").ids == ["a"]


def test_missing_split_folder_and_listed_twice(tmp_path):
    path = write_yolo(tmp_path, {"a.png": ((8, 8), None)}, yaml=f"train: images/train\nval: images/val\n{NAMES}")
    with pytest.raises(DataError) as info:
        YOLODataset(path, split="val")
    assert str(info.value) == f"{path}: val: images/val not found ({tmp_path / 'images' / 'val'})"
    path.write_text(f"train: [images/train, images/train/a.png]\n{NAMES}")
    dataset = YOLODataset(path, on_bad_image="skip")
    assert dataset.ids == ["a"]
    assert dataset.skipped == [(str(tmp_path / "images" / "train" / "a.png"), "image is listed more than once")]
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "train" / "a.jpg")
    path.write_text(f"train: images/train\n{NAMES}")
    with pytest.raises(DataError) as info:
        YOLODataset(path)
    assert str(info.value) == f"{tmp_path / 'images' / 'train' / 'a.png'}: has the id 'a' of another image (the same path with another suffix)"


def test_folder_with_data_yaml_is_detected(tmp_path):
    write_yolo(tmp_path / "y", {"a.png": ((8, 8), "0 0.5 0.5 0.5 0.5")})
    dataset = build_dataset(tmp_path / "y", split="train", classes=("cat", "dog", "bird"))
    assert isinstance(dataset, YOLODataset) and dataset.ids == ["a"]
    metrics = evaluate_results(
        [{"image_id": "a", "category_id": 1, "bbox": [2.0, 2.0, 4.0, 4.0], "score": 0.9}], dataset, metric="voc"
    )
    assert metrics["mAP"] == pytest.approx(1.0)
    metrics = evaluate_results(
        [{"image_id": "a", "category_id": 1, "bbox": [2.0, 2.0, 4.0, 4.0], "score": 0.9}], dataset, metric="coco"
    )
    assert metrics["AP"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def yolo_root(tmp_path_factory):
    base = tmp_path_factory.mktemp("yolo")
    voc = write_synthetic_voc(base / "voc", num_train=4, num_test=2, image_size=(64, 64), seed=1)
    convert(voc, base / "yolo", to="yolo", splits=["train", "test=val"])
    return base / "yolo"


def test_train_eval_predict_from_the_command_line(yolo_root, tmp_path, capsys):
    small = ["--set", "model.min_size=64", "--set", "model.max_size=96", "--batch-size", "2", "--quiet"]
    run = tmp_path / "run"
    args = ["train", "--data", str(yolo_root), "--preset", "tiny"]  # validates on data.yaml's val (it has no test)
    assert main(args + ["--output", str(run), "--max-iters", "2", *small]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["class_names"] == ["circle", "cross", "square", "star", "triangle"]
    assert config["data"]["metric"] == "voc" and config["data"]["val"]["split"] == "val"
    assert "training tiny on 4 images (5 classes, train)" in capsys.readouterr().out

    weights = str(run / "checkpoints" / "last.pt")
    out = tmp_path / "eval"
    assert main(["eval", "--weights", weights, "--data", str(yolo_root / "data.yaml"), "--split", "val", "--output", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "voc" and metrics["data"]["split"] == "val" and metrics["num_images"] == 2
    detections = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in detections} <= {"000004", "000005"}
    assert main(["eval", "--weights", weights, "--data", str(yolo_root), "--split", "val", "--metric", "coco", "--output", str(tmp_path / "e2"), "--quiet"]) == 0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["metric"] == "coco"

    assert main(["eval", "--weights", weights, "--data", str(yolo_root), "--split", "test", "--output", str(tmp_path / "e3")]) == 2
    assert f"{yolo_root / 'data.yaml'}: has no 'test' split (it has: train, val)" in capsys.readouterr().err

    assert main(["predict", "--weights", weights, str(yolo_root / "images" / "val"), "--output", str(tmp_path / "pred"), "--quiet"]) == 0
    assert (tmp_path / "pred" / "000004.jpg").is_file()


def test_yolo_data_validates_and_evaluates_on_val_and_every_line_names_the_split(yolo_root, tmp_path, capsys):
    """ultralytics' convention: with val and test in data.yaml, train validates (and picks best.pt) on val and
    eval scores val unless told otherwise; the held-out test is never the selection split."""
    import shutil

    root = tmp_path / "yolo"
    shutil.copytree(yolo_root, root)
    for kind in ("images", "labels"):
        shutil.copytree(root / kind / "train", root / kind / "test")  # a test split of 4 images, val has 2
    (root / "data.yaml").write_text((root / "data.yaml").read_text() + "test: images/test\n")
    run = tmp_path / "run"
    small = ["--set", "model.min_size=64", "--set", "model.max_size=96", "--batch-size", "2", "--quiet"]
    assert main(["train", "--data", str(root), "--preset", "tiny", "--output", str(run), "--max-iters", "1", *small]) == 0
    out = capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["data"]["val"]["split"] == "val"
    assert "training tiny on 4 images (5 classes, train)" in out and "; validating on val (2 images)" in out
    assert "evaluation at iteration 1 on val: mAP " in out and "validation mAP (voc) on val at iteration 1: " in out

    weights = str(run / "checkpoints" / "last.pt")
    assert main(["eval", "--weights", weights, "--data", str(root), "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["data"]["split"] == "val" and metrics["num_images"] == 2
    assert "mAP (voc) on val: " in capsys.readouterr().out
