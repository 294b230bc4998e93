"""fasterrcnn.inference: sliced inference and TTA put boxes in image pixels, merge across tiles, batch
tiles, never copy the whole image to float, and equal a plain pass when one tile covers the image.

``BrightSpot`` is an exact stand-in detector: on every input it finds the box of the pixels brighter
than 0.5 (red channel), so the expected boxes are known to the pixel."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from fasterrcnn.cli import main
from fasterrcnn.data.images import load_image_uint8
from fasterrcnn.data.synthetic import write_synthetic_voc
from fasterrcnn.detector import Detector
from fasterrcnn.errors import ConfigError, DataError
from fasterrcnn.inference import InferenceOptions, detect_image, reduced_float
from fasterrcnn.modeling.transform import GeneralizedRCNNTransform
from fasterrcnn.runs import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from test_detector import CLASS_NAMES, predictable_model  # noqa: E402

from fasterrcnn.config import get_preset, to_dict  # noqa: E402
from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES  # noqa: E402
from fasterrcnn.engine.checkpoint import save_checkpoint  # noqa: E402
from fasterrcnn.modeling.faster_rcnn import FasterRCNN  # noqa: E402


def shapes_model() -> FasterRCNN:
    """The untrained tiny model (seed 0) for the synthetic classes: deterministic detections."""
    torch.manual_seed(0)
    return FasterRCNN.from_preset("tiny", num_classes=len(SYNTHETIC_CLASSES)).eval()


def write_shapes_checkpoint(path: Path) -> Path:
    model = shapes_model()
    config = {"preset": "tiny", "model": to_dict(model.config), "train": to_dict(get_preset("tiny").train)}
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "class_names": list(SYNTHETIC_CLASSES)})
    return path


class BrightSpot(torch.nn.Module):
    """Every input's box of the pixels with red > 0.5, label 1, score 0.9 (nothing when there are none)."""

    def __init__(self):
        super().__init__()
        self.transform = GeneralizedRCNNTransform(64, 100, [0.0] * 3, [1.0] * 3)  # the full-image pass: reduced by 4
        self.calls: list[list[tuple[int, ...]]] = []

    def forward(self, images):
        self.calls.append([tuple(image.shape) for image in images])
        out = []
        for image in images:
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
            boxes = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32) if len(xs) else torch.zeros(0, 4)
            out.append({"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64), "scores": torch.full((len(boxes),), 0.9)})
        return out


def scene(height=300, width=500, box=(288, 100, 332, 140)) -> torch.Tensor:
    """uint8 [3, H, W]: dark, with one bright rectangle ``box`` (x1, y1, x2, y2)."""
    image = torch.full((3, height, width), 20, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 250
    return image


def test_an_object_cut_by_tile_edges_comes_back_whole_in_image_pixels():
    model = BrightSpot()
    # tiles of 128 with overlap 0.25 (step 96): x windows 0, 96, 192, 288, 372; y 0, 96, 172: the object is cut
    found = detect_image(model, scene(), InferenceOptions(slice=128, overlap=0.25, full_image=False))
    assert found["boxes"].tolist() == [[288, 100, 332, 140]]
    assert found["scores"].tolist() == pytest.approx([0.9]) and found["labels"].tolist() == [1]
    # tiles go through the model 4 at a time, each 128 x 128 (5 x 3 windows)
    assert [len(call) for call in model.calls] == [4, 4, 4, 3] and {s for call in model.calls for s in call} == {(3, 128, 128)}
    # NMS keeps the first of equal scores, the part seen by the tile at (192, 0), which suppresses the whole box
    nms = detect_image(BrightSpot(), scene(), InferenceOptions(slice=128, overlap=0.25, full_image=False, merge="nms"))
    assert nms["boxes"].tolist() == [[288, 100, 320, 128]]


def test_the_full_image_pass_is_reduced_and_scaled_back_and_tta_flips_back():
    model = BrightSpot()
    found = detect_image(model, scene(), InferenceOptions(slice=128, overlap=0.25))
    assert model.calls[-1] == [(3, 75, 125)]  # 300 x 500 reduced by 4 (reduction_factor for 64 / 100)
    assert found["boxes"].tolist() == [[288, 100, 332, 140]]  # the 4-aligned object, exact in both passes
    tta = detect_image(BrightSpot(), scene(), InferenceOptions(slice=128, overlap=0.25, tta=True))
    assert tta["boxes"][0].tolist() == pytest.approx([288, 100, 332, 140]) and len(tta["boxes"]) == 1
    assert tta["scores"].tolist() == pytest.approx([0.9])  # found by all three passes: weighted box fusion keeps 0.9
    alone = detect_image(BrightSpot(), scene(box=(10, 20, 30, 50)).float() / 255, InferenceOptions(tta=True))
    assert alone["boxes"][0].tolist() == pytest.approx([10, 20, 30, 50]) and len(alone["boxes"]) == 1


class LargestFloat(TorchDispatchMode):
    """Records the largest floating-point tensor any torch operation returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_float_copy_of_the_whole_image_is_made(monkeypatch):
    monkeypatch.setattr("fasterrcnn.inference.sliced._STRIP_BYTES", 3 * 4 * 800 * 16)  # strips of 16 rows of this image
    image = scene(600, 800, box=(400, 304, 440, 344))
    with LargestFloat() as seen:
        found = detect_image(BrightSpot(), image, InferenceOptions(slice=128, overlap=0.25))
    assert found["boxes"].tolist() == [[400, 304, 440, 344]]  # 8-aligned: exact in the pass reduced by 8 too
    assert seen.largest == 3 * 128 * 128  # one float tile; a strip is 3 x 16 x 800, the reduced image 3 x 75 x 100
    assert seen.largest < image.numel() // 9


def test_reduced_float_averages_blocks_strip_by_strip():
    image = torch.arange(2 * 5 * 3, dtype=torch.uint8).reshape(1, 5, 6).repeat(3, 1, 1)[:, :5, :6]
    reduced = reduced_float(image, 2)
    assert reduced.shape == (3, 3, 3)
    assert reduced[0, 0, 0].item() == pytest.approx((0 + 1 + 6 + 7) / 4 / 255)
    assert reduced[0, 2, 2].item() == pytest.approx((28 + 29) / 2 / 255)  # the partial block of the last row


def test_a_slice_covering_the_image_equals_the_plain_pass():
    detector = Detector(predictable_model(), CLASS_NAMES, device="cpu")
    array = (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    assert detector.detect(array, 0.0, slice=128) == detector.detect(array, 0.0)


def test_sliced_eval_equals_full_image_eval_when_the_slice_covers_the_image(tmp_path):
    root = write_synthetic_voc(tmp_path / "voc", num_train=0, num_test=2, image_size=(96, 128))
    detector = Detector(shapes_model(), SYNTHETIC_CLASSES, device="cpu")
    plain = evaluate(root, weights=detector, metric="coco", quiet=True)
    sliced = evaluate(root, weights=detector, metric="coco", quiet=True, slice=128)
    assert sliced.metrics["AP"] == plain.metrics["AP"] and sliced.metrics["AP50"] == plain.metrics["AP50"]


def test_detect_reads_a_path_whole_and_answers_in_its_pixels(tmp_path):
    array = np.full((200, 1000, 3), 20, dtype=np.uint8)
    array[50:90, 700:760] = 250
    path = tmp_path / "wide.png"
    Image.fromarray(array).save(path)
    detector = Detector(BrightSpot(), ["spot"], device="cpu")
    assert [d.box for d in detector.detect(path, slice=128, full_image=False)] == [(700.0, 50.0, 760.0, 90.0)]
    assert detector.detect(path, slice=128) == detector.detect(array, slice=128)
    assert load_image_uint8(path).shape == (3, 200, 1000) and load_image_uint8(path).dtype == torch.uint8
    with pytest.raises(DataError, match="wide.png: the image is 1000x200, 0 megapixels: more than"):
        load_image_uint8(path, max_pixels=1000)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="overlap"):
        InferenceOptions(slice=128, overlap=1.0)
    with pytest.raises(ConfigError, match="slice"):
        InferenceOptions(slice=8)
    with pytest.raises(ConfigError, match="merge"):
        InferenceOptions(slice=128, merge="wbf")


def test_predict_and_eval_commands_slice(tmp_path, capsys):
    weights = write_shapes_checkpoint(tmp_path / "model.pt")
    root = write_synthetic_voc(tmp_path / "voc", num_train=0, num_test=1, image_size=(96, 160))
    image = root / "JPEGImages" / "000000.jpg"
    assert main(["predict", str(image), "--weights", str(weights), "--output", str(tmp_path / "out"), "--slice", "64", "--quiet"]) == 0
    results = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 160 for r in results)
    assert Image.open(tmp_path / "out" / "000000.jpg").size == (160, 96)
    assert main(["eval", "--data", str(root), "--weights", str(weights), "--output", str(tmp_path / "ev"), "--slice", "64", "--quiet"]) == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["inference"] == {"slice": 64, "overlap": 0.2, "full_image": True, "tta": False}
    assert main(["predict", str(image), "--weights", str(weights), "--output", str(tmp_path / "o2"), "--overlap", "0.5"]) == 2
    assert "--overlap and --no-full-image go with --slice" in capsys.readouterr().err


def test_serve_slices_every_upload():
    pytest.importorskip("fastapi")  # the deploy extra, installed by make test
    from fastapi.testclient import TestClient

    from fasterrcnn.serve import create_app

    array = np.full((200, 1000, 3), 20, dtype=np.uint8)
    array[50:90, 700:760] = 250
    upload = io.BytesIO()
    Image.fromarray(array).save(upload, format="PNG")
    detector = Detector(BrightSpot(), ["spot"], device="cpu")
    client = TestClient(create_app(detector, inference=InferenceOptions(slice=128, full_image=False)))
    answer = client.post("/detect", files={"image": ("wide.png", upload.getvalue(), "image/png")}).json()
    assert [d["box"] for d in answer["detections"]] == [[700.0, 50.0, 760.0, 90.0]]
    assert [call[0] for call in detector.model.calls[:1]] == [(3, 128, 128)]  # tiles, not the whole image


def test_class_probabilities_are_refused_with_slicing_or_tta():
    """A probability row belongs to one RoI of one pass: merged or fused boxes have none."""
    from fasterrcnn.errors import ConfigError
    from fasterrcnn.inference import InferenceOptions, check_probabilities

    check_probabilities(True, InferenceOptions())
    check_probabilities(False, InferenceOptions(slice=64, tta=True))
    for options in (InferenceOptions(slice=64), InferenceOptions(tta=True)):
        with pytest.raises(ConfigError, match="^class probabilities go with plain inference"):
            check_probabilities(True, options)
