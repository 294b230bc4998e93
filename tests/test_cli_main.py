"""End-to-end command-line tests on tiny generated VOC and COCO sets (tiny preset, a few iterations, CPU)."""

from __future__ import annotations

import argparse
import json
import re
import os

import pytest
import torch

from fasterrcnn.cli import build_parser, main
from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.engine.checkpoint import load_checkpoint
from fasterrcnn.engine.logging import read_metrics
from fasterrcnn.engine.report import REPORT_FILES

SMALL = ["--set", "model.min_size=64", "--set", "model.max_size=96", "--batch-size", "2", "--quiet"]
COCO_CATEGORY_IDS = [10, 20, 30, 40, 50]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("data") / "voc", num_train=6, num_test=3, image_size=(64, 64), seed=1)


@pytest.fixture(scope="module")
def coco_json(voc_root):
    """A COCO instances file of the VOC 'train' images, with non-contiguous category ids."""
    dataset = VOCDataset(voc_root, split="train", classes=SYNTHETIC_CLASSES)
    images, annotations = [], []
    for index, entry in enumerate(dataset.ground_truth()):
        h, w = dataset.image_size(index)
        images.append({"id": 100 + index, "file_name": f"{entry['image_id']}.jpg", "width": w, "height": h})
        for box, label in zip(entry["boxes"].tolist(), entry["labels"].tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + index,
                    "category_id": COCO_CATEGORY_IDS[label - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, SYNTHETIC_CLASSES)]
    path = voc_root.parent / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def voc_run(voc_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    args = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--output", str(out)]
    args += ["--max-iters", "4", "--checkpoint-every", "2", "--eval-every", "2", "--log-every", "1", *SMALL]
    assert main(args) == 0
    return out


def test_train_writes_the_run_folder(voc_run, voc_root):
    assert sorted(os.listdir(voc_run / "checkpoints")) == ["best.pt", "iter_0000002.pt", "iter_0000004.pt", "last.pt"]
    for name in ("config.json", "metrics.jsonl", "results.png", "confusion_matrix.png", "samples.jpg"):
        assert (voc_run / name).stat().st_size > 0, name
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(voc_run / "tb"))
    config = json.loads((voc_run / "config.json").read_text())
    assert config["preset"] == "tiny" and config["model"]["min_size"] == 64 and config["model"]["num_classes"] == 5
    assert config["train"]["max_iters"] == 4 and config["train"]["batch_size"] == 2
    assert config["class_names"] == list(SYNTHETIC_CLASSES)
    assert config["data"]["train"] == {"format": "voc", "path": str(voc_root), "split": "train"}
    assert config["data"]["val"] == {"format": "voc", "path": str(voc_root), "split": "test"} and config["data"]["metric"] == "voc"
    records = read_metrics(voc_run / "metrics.jsonl")
    train = [r for r in records if r["type"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    expected = {"type", "iteration", "epoch", "lr", "time", "loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert set(train[0]) == expected
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["iteration"] for r in evals] == [2, 4] and all("mAP" in r for r in evals)
    state = load_checkpoint(voc_run / "checkpoints" / "last.pt")
    assert state["iteration"] == 4 and state["class_names"] == list(SYNTHETIC_CLASSES)
    assert state["config"]["preset"] == "tiny" and state["config"]["model"]["min_size"] == 64
    assert "label_to_category_id" not in state


def test_eval_weights_then_detections(voc_run, voc_root, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(voc_run / "checkpoints" / "last.pt"), "--data", str(voc_root), "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "voc" and 0.0 <= metrics["mAP"] <= 1.0
    assert set(metrics["per_class"]) | set(metrics["classes_without_gt"]) == set(SYNTHETIC_CLASSES)
    assert (out / "pr_curves.png").stat().st_size > 0
    assert sorted(os.listdir(out)) == sorted(["metrics.json", "pr_curves.png", "detections.json", *REPORT_FILES])
    assert "mAP" in printed and all(name in printed for name in metrics["per_class"])
    table = printed.splitlines()
    assert table[0].split() == ["class", "instances", "detections", "precision", "recall", "AP@0.5"]
    per_class = (out / "per_class.csv").read_text().splitlines()
    assert len(per_class) == 1 + len(SYNTHETIC_CLASSES) and per_class[0].startswith("class,instances,detections,")
    detections = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in detections} <= set(VOCDataset(voc_root, split="test").ids)

    again = tmp_path / "again"
    args = ["eval", "--detections", str(out / "detections.json"), "--data", str(voc_root), "--output", str(again)]
    assert main(args + ["--classes", ",".join(SYNTHETIC_CLASSES), "--metric", "voc"]) == 0
    assert json.loads((again / "metrics.json").read_text())["mAP"] == metrics["mAP"]
    assert main(args + ["--metric", "coco"]) == 2  # the folder holds the first evaluation's files
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads((again / "metrics.json").read_text())["mAP"] == metrics["mAP"]  # untouched
    assert main(args + ["--metric", "coco", "--overwrite"]) == 0
    coco_metrics = json.loads((again / "metrics.json").read_text())
    assert coco_metrics["metric"] == "coco" and {"AP", "AP50", "AP75"} <= set(coco_metrics)


def test_predict_writes_pictures_and_detections(voc_run, voc_root, tmp_path):
    out = tmp_path / "pred"
    images = voc_root / "JPEGImages"
    single = sorted(images.iterdir())[0]
    args = ["predict", "--weights", str(voc_run / "checkpoints" / "best.pt"), str(images), "--output", str(out)]
    assert main(args + ["--score-threshold", "0.0", "--quiet"]) == 0
    stems = {p.stem for p in images.iterdir()}
    assert {p.stem for p in out.glob("*.jpg")} == stems
    detections = json.loads((out / "detections.json").read_text())
    assert isinstance(detections, list) and {d["image_id"] for d in detections} <= stems
    assert all(d["category_name"] == SYNTHETIC_CLASSES[d["category_id"] - 1] for d in detections)
    assert main(["predict", "--weights", str(voc_run / "checkpoints" / "last.pt"), str(single), "--output", str(tmp_path / "one"), "--quiet"]) == 0
    assert [p.name for p in (tmp_path / "one").glob("*.jpg")] == [f"{single.stem}.jpg"]


def test_eval_and_predict_with_precision(voc_run, voc_root, tmp_path, capsys):
    """--precision: recorded in metrics.json and in each detections.jsonl line; auto is f32 on a CPU without bf16
    instructions (conftest.cpu_without_bf16); --amp is the deprecated spelling of --precision bf16."""
    weights = str(voc_run / "checkpoints" / "last.pt")
    runs = {}
    for name, extra in (("auto", []), ("bf16", ["--precision", "bf16"]), ("amp", ["--amp"])):
        out = tmp_path / name
        assert main(["eval", "--weights", weights, "--data", str(voc_root), "--output", str(out), "--quiet", *extra]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["precision"] == ("f32" if name == "auto" else "bf16")
        runs[name] = json.loads((out / "detections.json").read_text())
    assert runs["bf16"] and runs["auto"] and runs["amp"] == runs["bf16"]
    assert [d["score"] for d in runs["bf16"]] != [d["score"] for d in runs["auto"]]  # bf16 rounding: it ran in bf16
    assert "fasterrcnn: WARNING: --amp is deprecated: use --precision bf16" in capsys.readouterr().err
    out = tmp_path / "pred"
    args = ["predict", "--weights", weights, str(voc_root / "JPEGImages"), "--output", str(out), "--quiet", "--device", "cpu", "--overwrite"]
    assert main(args + ["--precision", "bf16", "--score-threshold", "0.0"]) == 0
    lines = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert lines and {line["precision"] for line in lines} == {"bf16"}
    capsys.readouterr()
    for extra, message in (
        (["--amp-dtype", "bf16"], "--amp-dtype goes with --amp"),
        (["--amp", "--precision", "f32"], "--amp is the old spelling of --precision bf16; give --precision alone"),
        (["--precision", "fp16"], "precision fp16 runs on CUDA only; on the CPU use bf16, f32 or auto"),
        (["--precision", "int8"], "precision int8 runs an OpenVINO file written by 'fasterrcnn export --int8' (pass that .xml as the weights)"),
    ):
        assert main(args + extra) == 2
        assert capsys.readouterr().err == f"fasterrcnn: error: {message}\n"


def test_coco_train_eval_predict(coco_json, voc_root, tmp_path):
    run = tmp_path / "run"
    images = str(voc_root / "JPEGImages")
    args = ["train", "--data", str(coco_json), "--images", images, "--val-data", str(coco_json), "--val-images", images]
    assert main(args + ["--preset", "tiny", "--output", str(run), "--max-iters", "2", *SMALL]) == 0
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["label_to_category_id"] == dict(enumerate(COCO_CATEGORY_IDS, start=1))
    evals = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]
    assert len(evals) == 1 and evals[0]["metric"] == "coco" and "AP" in evals[0]

    out = tmp_path / "eval"
    assert main(["eval", "--weights", str(run / "checkpoints" / "last.pt"), "--data", str(coco_json), "--images", images, "--output", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == "coco" and {"AP", "AP50", "AP75", "per_class"} <= set(metrics)
    assert (out / "pr_curves.png").stat().st_size > 0
    assert main(["eval", "--detections", str(out / "detections.json"), "--data", str(coco_json), "--images", images, "--output", str(tmp_path / "e2"), "--metric", "voc"]) == 0
    assert "mAP" in json.loads((tmp_path / "e2" / "metrics.json").read_text())

    pred = tmp_path / "pred"
    assert main(["predict", "--weights", str(run / "checkpoints" / "last.pt"), images, "--output", str(pred), "--score-threshold", "0", "--quiet"]) == 0
    detections = json.loads((pred / "detections.json").read_text())
    assert {d["category_id"] for d in detections} <= set(COCO_CATEGORY_IDS)


def test_resume_gives_identical_weights(voc_root, tmp_path):
    common = ["train", "--data", str(voc_root), "--split", "train", "--preset", "tiny", "--no-val", "--seed", "7", *SMALL]
    # lr_steps inside the run, warm-up crossing the resume point
    # 3 batches per epoch: the resume point (2) is inside epoch 0, warm-up and the lr step come after it
    common += ["--set", "train.warmup_iters=3", "--set", "train.lr_steps=[3]", "--log-every", "1"]
    assert main(common + ["--output", str(tmp_path / "full"), "--max-iters", "4"]) == 0
    assert main(common + ["--output", str(tmp_path / "half"), "--max-iters", "2"]) == 0
    torch.manual_seed(999)  # the resumed run must not depend on the process's RNG
    assert main(common + ["--output", str(tmp_path / "half"), "--max-iters", "4", "--resume"]) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt")
    assert full["iteration"] == resumed["iteration"] == 4 and resumed["epoch"] == 1
    assert full["model"].keys() == resumed["model"].keys()
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    train = [r for r in read_metrics(tmp_path / "half" / "metrics.jsonl") if r["type"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    assert [r["lr"] for r in train] == [r["lr"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]


def test_config_precedence(voc_root, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"preset": "tiny", "model": {"rpn_nms_thresh": 0.5, "min_size": 64}, "train": {"lr": 0.5, "momentum": 0.8}}))
    out = tmp_path / "run"
    args = ["train", "--data", str(voc_root), "--split", "train", "--config", str(config), "--output", str(out), "--no-val"]
    args += ["--set", "model.rpn_nms_thresh=0.6", "--set", "train.lr=0.25", "--set", "train.lr_steps=[1,2]", "--lr", "0.01"]
    args += ["--max-iters", "1", "--batch-size", "2", "--quiet", "--set", "model.max_size=96"]
    assert main(args) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["preset"] == "tiny"
    assert saved["model"]["rpn_nms_thresh"] == 0.6 and saved["model"]["min_size"] == 64  # --set > file > preset
    assert saved["train"]["lr"] == 0.01 and saved["train"]["momentum"] == 0.8  # flag > --set > file
    assert saved["train"]["lr_steps"] == [1, 2]


def test_help_mentions_every_option(capsys):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subparsers.choices) == {"train", "eval", "predict", "compress", "calibrate", "export", "benchmark", "convert", "demo", "serve"}
    for name, subparser in subparsers.choices.items():
        assert main([name, "--help"]) == 0
        text = capsys.readouterr().out
        hidden = {"--amp", "--amp-dtype"} if name in ("eval", "predict", "serve") else set()  # the deprecated spelling of --precision
        assert {s for action in subparser._actions if action.help == argparse.SUPPRESS for s in action.option_strings} == hidden
        options = [s for action in subparser._actions if action.help != argparse.SUPPRESS for s in action.option_strings]
        assert options, name
        for option in options:
            assert option in text, f"{name} --help does not mention {option}"
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
    for option in ("--data", "--val-data", "--preset", "--output", "--epochs", "--max-iters", "--batch-size", "--lr", "--resume", "--config", "--set", "--num-workers", "--seed", "--eval-every", "--split", "--val-split", "--images", "--classes", "--backbone-weights", "--quiet", "--grad-clip", "--checkpoint-every"):
        assert option in [s for a in subparsers.choices["train"]._actions for s in a.option_strings], option


def test_the_demo_schedule_follows_its_length_by_the_general_rule():
    import fasterrcnn.runs.demo_run as demo
    from fasterrcnn.config import get_preset
    from fasterrcnn.engine.schedule import scale_schedule

    assert "lr_steps" not in demo.DEMO_TRAIN and "warmup_iters" not in demo.DEMO_TRAIN
    tiny = get_preset(demo.DEMO_PRESET).train
    # the steps the demo used to set by hand: 1500 of 2000, scaled to --max-iters; warm-up 100 up to 2000
    for max_iters in (2000, 1000, 400, 3):
        placed = scale_schedule(tiny, max_iters, tiny.max_iters)
        assert placed.lr_steps == (round(1500 * max_iters / 2000),), max_iters
    assert scale_schedule(tiny, demo.DEMO_TRAIN["max_iters"], tiny.max_iters).warmup_iters == 100


def test_demo_pipeline_with_a_tiny_schedule(tmp_path, monkeypatch, capsys):
    import fasterrcnn.runs.demo_run as demo

    monkeypatch.setattr(demo, "DEMO_NUM_TRAIN", 4)
    monkeypatch.setattr(demo, "DEMO_NUM_TEST", 2)
    monkeypatch.setattr(demo, "DEMO_NUM_VAL", 2)
    monkeypatch.setattr(demo, "DEMO_IMAGE_SIZE", (48, 48))
    monkeypatch.setattr(demo, "DEMO_TRAIN", {"max_iters": 2, "lr_steps": [1], "batch_size": 2})
    monkeypatch.setattr(demo, "DEMO_NUM_PICTURES", 2)
    monkeypatch.setattr(demo, "DEMO_BENCHMARK_PATHS", ("eager f32", "openvino int8"))  # no export: fast
    assert main(["demo", "--output", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    table = out.split("inference paths on this CPU")[1].splitlines()[1:]
    assert table[0].split()[:2] == ["path", "mAP"] and table[1].startswith("eager f32") and table[2].startswith("openvino int8")
    assert (tmp_path / "benchmark.csv").read_text().splitlines()[1].startswith("eager f32,True,,")
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert f"test mAP@0.5 = {metrics['mAP']:.4f}" in out and str(tmp_path / "predictions") in out
    assert metrics["metric"] == "voc" and metrics["num_images"] == 2
    assert len(list((tmp_path / "predictions").glob("*.jpg"))) == 2
    assert (tmp_path / "train" / "checkpoints" / "last.pt").is_file()
    # the demo validates during training (on its val split, not the test images): results.csv has a row per validation
    rows = (tmp_path / "train" / "results.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["iteration", "epoch", "lr"] and [r.split(",")[0] for r in rows[1:]] == ["1", "2"]
    assert (tmp_path / "train" / "results.png").is_file()
    for name in REPORT_FILES:
        assert (tmp_path / "train" / name).is_file() and (tmp_path / "eval" / name).is_file(), name
    assert str(tmp_path / "train") in out and "results.csv" in out and "confusion_matrix.png" in out
    assert (tmp_path / "data" / "ImageSets" / "Main" / "test.txt").is_file()
    assert (tmp_path / demo.DEMO_MARKER).is_file()  # what makes the folder the demo's: a next demo may replace it
    demo._check_folder(tmp_path)


def test_predict_with_a_torchvision_detection_file(tmp_path):
    # A torchvision-format COCO detector file (seeded weights, 91 outputs) used as it is.
    import torchvision_reference as reference
    from PIL import Image

    from fasterrcnn import Detector
    from fasterrcnn.data.coco_names import COCO_91_CLASSES

    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    weights = tmp_path / f"{name}.pth"
    torch.save(reference.seeded_state_dict(name), weights)
    image = tmp_path / "photo.png"
    pixels = (reference.rand_image(reference.parity_case(name)["seed"]) * 255).round().byte()
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(image)

    args = ["predict", str(image), "--preset", "mobilenet_v3_large_320_fpn", "--weights", str(weights)]
    args += ["--classes", "coco", "--output", str(tmp_path / "out"), "--score-threshold", "0.05", "--quiet"]
    assert main(args) == 0
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert (tmp_path / "out" / "photo.jpg").stat().st_size > 0

    expected = Detector.from_torchvision("mobilenet_v3_large_320_fpn", weights, device="cpu").detect(image, score_threshold=0.05)
    assert len(results) == len(expected) > 0
    for result, detection in zip(results, expected):
        assert result["image_id"] == "photo"
        assert result["category_id"] == detection.label  # the 91-id layout: label == COCO category id
        assert result["category_name"] == COCO_91_CLASSES[detection.label - 1] == detection.class_name
        x1, y1, x2, y2 = detection.box
        assert result["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        assert result["score"] == pytest.approx(detection.score, abs=1e-6)


def test_predict_classes_without_preset_is_a_usage_error(voc_run, voc_root, tmp_path, capsys):
    image = next((voc_root / "JPEGImages").iterdir())
    args = ["predict", str(image), "--weights", str(voc_run / "checkpoints" / "last.pt"), "--classes", "coco"]
    assert main(args + ["--output", str(tmp_path / "out")]) == 2
    assert "--classes goes with --preset" in capsys.readouterr().err


def test_coco_drop_empty_leaves_out_images_without_objects(coco_json, voc_root, tmp_path, capsys):
    data = json.loads(coco_json.read_text())
    first = data["images"][0]
    data["images"].append({**first, "id": 999})  # the same picture, listed without annotations
    path = tmp_path / "with_empty.json"
    path.write_text(json.dumps(data))
    common = ["train", "--data", str(path), "--images", str(voc_root / "JPEGImages"), "--preset", "tiny", "--no-val"]
    common += ["--max-iters", "1", *SMALL]
    assert main(common + ["--output", str(tmp_path / "kept")]) == 0
    assert f"on {len(data['images'])} images" in capsys.readouterr().out
    assert main(common + ["--output", str(tmp_path / "dropped"), "--drop-empty"]) == 0
    assert f"on {len(data['images']) - 1} images" in capsys.readouterr().out


@pytest.mark.parametrize("preset_env, expected", [(None, "1"), ("0", "0")])
def test_importing_fasterrcnn_turns_on_huge_pages_unless_set(preset_env, expected):
    # torch's CPU allocator reads THP_MEM_ALLOC_ENABLE once; fasterrcnn sets it before torch loads.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if preset_env is not None:
        env["THP_MEM_ALLOC_ENABLE"] = preset_env
    code = "import fasterrcnn, os, sys; assert 'torch' not in sys.modules; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_compress_writes_a_checkpoint_that_eval_and_predict_load(voc_run, voc_root, tmp_path, capsys):
    compressed = tmp_path / "svd.pt"
    assert main(["compress", "--weights", str(voc_run / "checkpoints" / "last.pt"), "--ranks", "32", "16", "--output", str(compressed)]) == 0
    printed = capsys.readouterr().out
    assert "fc6: 6272 -> 256, rank 32: multiply-adds per RoI 1,605,632 -> 208,896" in printed
    assert "fc7: 256 -> 256, rank 16" in printed
    state = load_checkpoint(compressed)
    assert state["config"]["model"]["box_head_ranks"] == [32, 16] and "optimizer" not in state
    assert state["class_names"] == list(SYNTHETIC_CLASSES)
    assert main(["eval", "--weights", str(compressed), "--data", str(voc_root), "--output", str(tmp_path / "eval"), "--quiet"]) == 0
    assert 0.0 <= json.loads((tmp_path / "eval" / "metrics.json").read_text())["mAP"] <= 1.0
    image = voc_root / "JPEGImages" / f"{VOCDataset(voc_root, split='test').ids[0]}.jpg"
    assert main(["predict", str(image), "--weights", str(compressed), "--output", str(tmp_path / "pred"), "--quiet"]) == 0
    assert (tmp_path / "pred" / "detections.json").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ranks", "32", "300"], r"fc7 is 256 -> 256, so its rank must be in \[1, 256\], got 300"),
        (["--ranks", "32", "0"], r"argument --ranks: must be >= 1, got 0"),
    ],
)
def test_compress_bad_ranks_is_a_one_line_error(voc_run, tmp_path, capsys, extra, message):
    out = tmp_path / "svd.pt"
    code = main(["compress", "--weights", str(voc_run / "checkpoints" / "last.pt"), "--output", str(out), *extra])
    assert code == 2 and not out.exists()
    assert re.search(message, capsys.readouterr().err)


def test_compress_refuses_to_overwrite_the_trained_checkpoint(voc_run, capsys):
    last = voc_run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert main(["compress", "--weights", str(last), "--output", str(last)]) == 2
    assert "--output must differ from --weights" in capsys.readouterr().err and last.read_bytes() == before


def test_image_size_sets_the_short_and_the_long_side_and_patience_the_train_field():
    from fasterrcnn.cli import build_parser
    from fasterrcnn.cli.train import overrides_of

    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--image-size", "640", "--patience", "3", "--set", "model.min_size=800"])
    assert overrides_of(args) == {"model": {"min_size": 640, "max_size": 640}, "train": {"patience": 3}}


@pytest.mark.parametrize("command", ["train", "eval"])
def test_data_help_names_every_format(command, capsys):
    from pathlib import Path

    from fasterrcnn.cli import main

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "a COCO instances JSON file or a YOLO data.yaml" in text and "YOLO: a key of data.yaml" in text
    assert "VOC split used for validation" not in text and "VOC split: ImageSets" not in text
    index = (Path(__file__).resolve().parents[1] / "docs" / "index.md").read_text()
    assert "PASCAL VOC folders, COCO JSON files or YOLO `data.yaml` sets" in index
