"""Untrusted image files in data sets: a malformed EXIF block goes through the bad-image policy in every
command, a huge image is decoded reduced (boxes scaled to it, detections scored in the file's pixels), and a
named pipe or an icon (whose size only decoding tells) is refused before Pillow reads it."""

from __future__ import annotations

import io
import logging
import os
import struct

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from fasterrcnn.data import VOCDataset, build_dataset
from fasterrcnn.data.images import check_image, image_size, load_image
from fasterrcnn.errors import DataError


def write_voc(root, images: dict, boxes: dict) -> None:
    """A VOC folder: ``images`` id -> writer(path) of ``<id>.<suffix>``, ``boxes`` id -> (file name, (h, w), [VOC box])."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id, (filename, (height, width), box) in boxes.items():
        images[image_id](root / "JPEGImages" / filename)
        bndbox = "".join(f"<{tag}>{value}</{tag}>" for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box))
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height></size>"
            f"<object><name>dog</name><bndbox>{bndbox}</bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in boxes))


def photo(size, seed=0):
    """An RGB image of ``size`` (h, w) with smooth content and a bright rectangle (detectable, compressible)."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), np.full_like(x, 60 + seed)], axis=2)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = (250, 250, 20)
    return Image.fromarray(pixels.astype(np.uint8))


def write_bad_exif_jpeg(path):
    # A truncated EXIF header; with the JFIF dpi set Pillow does not read it at open, so the
    # orientation step used to raise struct.error.
    photo((24, 32)).save(path, exif=b"Exif\x00\x00MM\x00*", dpi=(72, 72))


def test_a_malformed_exif_block_goes_through_the_bad_image_policy(tmp_path, caplog):
    root = tmp_path / "voc"
    write_voc(
        root,
        {"good": lambda p: photo((24, 32)).save(p, quality=95), "badexif": write_bad_exif_jpeg},
        {"good": ("good.jpg", (24, 32), (3, 4, 20, 18)), "badexif": ("badexif.jpg", (24, 32), (3, 4, 20, 18))},
    )
    bad = root / "JPEGImages" / "badexif.jpg"
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = build_dataset(root, split="train", on_bad_image="skip")
    assert dataset.ids == ["good"]
    assert dataset.skipped == [(str(bad), "cannot read image (malformed EXIF block: unpack requires a buffer of 4 bytes)")]
    assert any(r.getMessage().startswith(f"{bad}: cannot read image (malformed EXIF") for r in caplog.records)
    with pytest.raises(DataError) as info:
        build_dataset(root, split="train", on_bad_image="error")
    assert info.value.path == str(bad)


def test_train_eval_and_predict_report_a_malformed_exif_image_in_one_line(tmp_path, capsys):
    from fasterrcnn.cli import main

    root = tmp_path / "voc"
    writers = {f"good{i}": (lambda i: lambda p: photo((24, 32), i).save(p, quality=95))(i) for i in range(2)}
    boxes = {f"good{i}": (f"good{i}.jpg", (24, 32), (3, 4, 20, 18)) for i in range(2)}
    write_voc(root, {**writers, "badexif": write_bad_exif_jpeg}, {**boxes, "badexif": ("badexif.jpg", (24, 32), (3, 4, 20, 18))})
    bad = root / "JPEGImages" / "badexif.jpg"
    small = ["--preset", "tiny", "--max-iters", "1", "--batch-size", "2", "--no-val", "--quiet", "--device", "cpu"]
    small += ["--set", "model.min_size=32", "--set", "model.max_size=48"]
    assert main(["train", "--data", str(root), "--split", "train", "--output", str(tmp_path / "run"), "--on-bad-image", "skip", *small]) == 0
    out, err = capsys.readouterr()
    assert "1 bad image skipped, not trained on" in out and "Traceback" not in err
    assert f"fasterrcnn: WARNING: {bad}: cannot read image (malformed EXIF block" in err
    weights = str(tmp_path / "run" / "checkpoints" / "last.pt")

    args = ["eval", "--weights", weights, "--data", str(root), "--split", "train", "--device", "cpu", "--precision", "f32", "--output", str(tmp_path / "eval")]
    assert main([*args, "--on-bad-image", "error"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fasterrcnn: error: {bad}: cannot read image (malformed EXIF block: unpack requires a buffer of 4 bytes)"]
    assert main([*args, "--on-bad-image", "skip"]) == 0
    assert "Traceback" not in capsys.readouterr().err

    predict = ["predict", "--weights", weights, str(bad), "--device", "cpu", "--precision", "f32", "--on-bad-image", "error"]
    assert main([*predict, "--output", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fasterrcnn: error: {bad}: cannot read image (malformed EXIF block: unpack requires a buffer of 4 bytes)"]
    assert main([*predict[:-2], "--output", str(tmp_path / "skipped")]) == 0  # the default: skipped with a warning
    assert f"skipping {bad}: cannot read image (malformed EXIF block" in capsys.readouterr().err


@pytest.fixture(scope="module")
def large_voc(tmp_path_factory):
    """A 2001x1501 PNG (odd sides: the reduced sides are rounded up) and a small JPEG."""
    root = tmp_path_factory.mktemp("large") / "voc"
    write_voc(
        root,
        {"large": lambda p: photo((1501, 2001)).save(p), "small": lambda p: photo((60, 80), 1).save(p, quality=95)},
        {"large": ("large.png", (1501, 2001), (501, 376, 1001, 751)), "small": ("small.jpg", (60, 80), (21, 16, 40, 30))},
    )
    return root


def test_a_huge_image_is_decoded_reduced_with_its_boxes_scaled(large_voc):
    dataset = VOCDataset(large_voc, split="train", reduce_to=(256, 384))
    image, target = dataset[0]
    # factor 4: 1501 / 4 = 375.25 -> 376 rows, 2001 / 4 -> 501 columns, still larger than the 288 x 384 model input
    assert image.shape == (3, 376, 501)
    assert torch.equal(image, load_image(large_voc / "JPEGImages" / "large.png", reduce=4))
    sx, sy = 501 / 2001, 376 / 1501
    expected = torch.tensor([[500 * sx, 375 * sy, 1001 * sx, 751 * sy]], dtype=torch.float32)
    assert torch.allclose(target["boxes"], expected, rtol=1e-6, atol=0)
    assert target["orig_size"] == (1501, 2001) and dataset.image_size(0) == (1501, 2001)
    assert torch.equal(dataset.ground_truth()[0]["boxes"], torch.tensor([[500.0, 375.0, 1001.0, 751.0]]))
    small_image, small_target = dataset[1]  # not larger than twice the model input: decoded whole, boxes as annotated
    assert small_image.shape == (3, 60, 80)
    assert torch.equal(small_target["boxes"], torch.tensor([[20.0, 15.0, 40.0, 30.0]]))
    whole, whole_target = VOCDataset(large_voc, split="train", reduce_to=None)[0]
    assert whole.shape == (3, 1501, 2001) and torch.equal(whole_target["boxes"], torch.tensor([[500.0, 375.0, 1001.0, 751.0]]))
    default = build_dataset(large_voc, split="train")[0][0]  # less than twice the default (800, 1333) input: whole
    assert default.shape == (3, 1501, 2001)


class WholeImageBox(torch.nn.Module):
    """A stand-in detector: one box of label 1 on the bright rectangle, in the pixels of the image it is given."""

    def forward(self, images):
        outputs = []
        for image in images:
            _, height, width = image.shape
            box = torch.tensor([[width / 4, height / 4, width / 2, height / 2]])
            outputs.append({"boxes": box.floor(), "labels": torch.tensor([1]), "scores": torch.tensor([0.9])})
        return outputs


def test_detections_on_a_reduced_image_are_scored_in_the_files_pixels(large_voc):
    from fasterrcnn.engine.evaluator import evaluate_model

    results = {}
    for reduce_to in (None, (256, 384)):
        dataset = VOCDataset(large_voc, split="train", classes=("dog",), reduce_to=reduce_to)
        found, metrics = evaluate_model(WholeImageBox(), dataset, metric="voc", class_names=["dog"])
        results[reduce_to] = ({r["image_id"]: r["bbox"] for r in found}, metrics["mAP"])
    whole, reduced = results[None], results[(256, 384)]
    assert whole[0] == {"large": [500.0, 375.0, 500.0, 375.0], "small": [20.0, 15.0, 20.0, 15.0]}
    # the reduced image's box (125, 94, 250, 188) on 501 x 376, back in the file's 2001 x 1501 pixels
    assert reduced[0]["small"] == whole[0]["small"]
    assert reduced[0]["large"] == pytest.approx([125 * 2001 / 501, 94 * 1501 / 376, 125 * 2001 / 501, 94 * 1501 / 376], rel=1e-6)
    assert whole[1] == 1.0 and reduced[1] == 1.0


# -- Files that are not what they seem: a named pipe, an icon holding a huge PNG --------------------------------
@pytest.mark.timeout(30)  # opening a named pipe blocks until a writer comes: the old code hung here
def test_a_named_pipe_is_refused_before_it_is_opened(tmp_path):
    fifo = tmp_path / "b.jpg"
    os.mkfifo(fifo)
    for read in (load_image, image_size, check_image):
        with pytest.raises(DataError) as info:
            read(fifo)
        assert str(info.value) == f"{fifo}: is a named pipe (FIFO), not a regular file"


def icon_holding_png(size) -> bytes:
    """An ICO file whose one entry (declared 16x16) is a PNG of ``size`` (w, h): Pillow decodes it on open."""
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")
    png = buffer.getvalue()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png


def test_an_icon_is_refused_without_decoding_it(tmp_path, monkeypatch):
    ico = icon_holding_png((3000, 3000))  # 9 Mpx in a 9 KB file
    assert len(ico) < 20_000
    path = tmp_path / "icon.jpg"  # the name does not matter: the bytes do
    path.write_bytes(ico)
    decoded = []
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda self: decoded.append(self.size))
    problem = "is an ICO icon, which is not read (its size is known only by decoding it): convert it to PNG or JPEG"
    for read in (load_image, image_size, check_image):
        with pytest.raises(DataError) as info:
            read(path)
        assert str(info.value) == f"{path}: {problem}"
    with pytest.raises(DataError) as info:
        load_image(io.BytesIO(ico))  # an upload (serve, Detector.detect)
    assert info.value.problem == problem
    assert decoded == []  # refused from its first bytes, the PNG never decoded
