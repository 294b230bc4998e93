"""Data sets with every kind of defect: each image gives a correct sample, or a one-line warning
(``on_bad_image="skip"``) or error (``"error"``) naming the file. See ``data/bad_images.py``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from fasterrcnn.data import build_dataset
from fasterrcnn.data.coco import COCODataset
from fasterrcnn.data.loader import build_loader
from fasterrcnn.data.voc import VOCDataset
from fasterrcnn.errors import ConfigError, DataError

H, W = 24, 32  # every test image: 24 high, 32 wide (as annotated)
BOX = "<bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax><ymax>18</ymax></bndbox>"  # -> (2, 3, 20, 18)


def rgb(seed: int = 0, size=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def write_truncated_jpeg(path):
    Image.fromarray(rgb(1)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-200])


def write_exif_rotated_jpeg(path):
    """Stored 24 wide x 32 high, red at the stored top-left; EXIF 6 shows it 32 wide x 24 high."""
    stored = np.full((W, H, 3), 255, dtype=np.uint8)
    stored[:8, :8] = (255, 0, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: stored top-left -> shown top-right
    image.save(path, exif=exif, quality=95)


def write_rgba_png(path):
    pixels = np.concatenate([rgb(2), np.linspace(0, 255, H * W).reshape(H, W, 1).astype(np.uint8)], axis=2)
    Image.fromarray(pixels, mode="RGBA").save(path)


def write_gray16_png(path):
    Image.fromarray((np.arange(H * W, dtype=np.uint16) * 61).reshape(H, W)).save(path)


def write_cmyk_jpeg(path):
    Image.fromarray(rgb(3)).convert("CMYK").save(path, quality=95)


def write_truncated_bmp(path):
    """Header and size intact, pixel data cut: only decoding can tell (no end marker to check)."""
    Image.fromarray(rgb(4)).save(path)
    path.write_bytes(path.read_bytes()[:-300])


IMAGE_WRITERS = {
    "good.jpg": lambda p: Image.fromarray(rgb(0)).save(p, quality=95),
    "truncated.jpg": write_truncated_jpeg,
    "empty.jpg": lambda p: p.write_bytes(b""),
    "alpha.png": write_rgba_png,
    "gray16.png": write_gray16_png,
    "cmyk.jpg": write_cmyk_jpeg,
    "exif.jpg": write_exif_rotated_jpeg,
    "notimage.jpg": lambda p: p.write_text("<html>404 not found</html>"),
    "wrongsize.jpg": lambda p: Image.fromarray(rgb(5, (30, 30))).save(p),
    "damaged.bmp": write_truncated_bmp,
}


def voc_xml(filename, objects=f"<object><name>dog</name>{BOX}</object>", size=(H, W)):
    size_xml = f"<size><width>{size[1]}</width><height>{size[0]}</height></size>" if size else ""
    return f"<annotation><filename>{filename}</filename>{size_xml}{objects}</annotation>"


# image id -> (image file or None (missing), XML text or None (missing)); the split lists them in this order
VOC_DEFECTS = {
    "good": ("good.jpg", voc_xml("good.jpg")),
    "truncated": ("truncated.jpg", voc_xml("truncated.jpg")),
    "empty": ("empty.jpg", voc_xml("empty.jpg")),
    "alpha": ("alpha.png", voc_xml("alpha.png")),
    "gray16": ("gray16.png", voc_xml("gray16.png")),
    "cmyk": ("cmyk.jpg", voc_xml("cmyk.jpg")),
    "exif": ("exif.jpg", voc_xml("exif.jpg")),
    "notimage": ("notimage.jpg", voc_xml("notimage.jpg")),
    "wrongsize": ("wrongsize.jpg", voc_xml("wrongsize.jpg")),
    "nobndbox": ("good.jpg", voc_xml("good.jpg", "<object><name>dog</name></object>")),
    "nonnumeric": ("good.jpg", voc_xml("good.jpg", f"<object><name>dog</name>{BOX.replace('>4<', '>four<')}</object>")),
    "outside": ("good.jpg", voc_xml("good.jpg", f"<object><name>cat</name>{BOX}</object><object><name>dog</name>"
                                                 "<bndbox><xmin>40</xmin><ymin>2</ymin><xmax>60</xmax><ymax>9</ymax></bndbox></object>")),
    "noxml": ("good.jpg", None),
    "missing": (None, voc_xml("missing.jpg")),
    "damaged": ("damaged.bmp", voc_xml("damaged.bmp")),
}  # fmt: skip
VOC_DUPLICATE = "good"  # listed twice in the split file

# what each bad image id is reported as: the file named and a fragment of the problem
VOC_BAD = {
    "truncated": ("JPEGImages/truncated.jpg", "cannot read image"),
    "empty": ("JPEGImages/empty.jpg", "empty (0 bytes)"),
    "notimage": ("JPEGImages/notimage.jpg", "cannot read image"),
    "wrongsize": ("JPEGImages/wrongsize.jpg", "is 30x30"),
    "nobndbox": ("Annotations/nobndbox.xml", "has no <bndbox>"),
    "nonnumeric": ("Annotations/nonnumeric.xml", "<ymin> is 'four'"),
    "noxml": ("Annotations/noxml.xml", "annotation file not found"),
    "missing": ("JPEGImages/missing.jpg", "image file not found"),
    "duplicate": ("ImageSets/Main/train.txt", "listed more than once"),
}
VOC_GOOD = ["good", "alpha", "gray16", "cmyk", "exif", "outside", "damaged"]  # kept at construction


def write_defect_voc(root, ids=None):
    ids = list(VOC_DEFECTS) if ids is None else ids
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        filename, xml = VOC_DEFECTS[image_id]
        if filename is not None and not (root / "JPEGImages" / filename).exists():
            IMAGE_WRITERS[filename](root / "JPEGImages" / filename)
        if xml is not None:
            (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    listed = ids + ([VOC_DUPLICATE] if VOC_DUPLICATE in ids else [])
    (root / "ImageSets" / "Main" / "train.txt").write_text("".join(f"{i}\n" for i in listed))
    return root


@pytest.fixture(scope="module")
def defect_voc(tmp_path_factory):
    return write_defect_voc(tmp_path_factory.mktemp("defects") / "voc")


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "fasterrcnn" and r.levelno == logging.WARNING]


def test_voc_skip_names_every_bad_file_once_and_keeps_correct_samples(defect_voc, caplog):
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = VOCDataset(defect_voc, split="train", on_bad_image="skip")
    assert dataset.ids == VOC_GOOD
    expected = {str(defect_voc / path) for path, _ in VOC_BAD.values()}
    assert {path for path, _ in dataset.skipped} == expected and len(dataset.skipped) == len(VOC_BAD)
    messages = warnings_of(caplog)
    for path, problem in VOC_BAD.values():
        lines = [m for m in messages if m.startswith(f"{defect_voc / path}: ") and problem in m]
        assert len(lines) == 1, (path, messages)
        assert lines[0].endswith("; image skipped") and "\n" not in lines[0]
    summary = [m for m in messages if "images skipped" in m]
    assert len(summary) == 1 and f"{len(VOC_BAD)} of {len(VOC_DEFECTS) + 1} images skipped" in summary[0]
    dropped = [m for m in messages if "empty boxes dropped" in m]  # the box entirely outside the image
    assert len(dropped) == 1 and "1 empty boxes dropped" in dropped[0] and str(defect_voc / "Annotations" / "outside.xml") in dropped[0]
    assert all("\n" not in m for m in messages)

    samples = {dataset.ids[i]: dataset[i] for i in range(len(dataset)) if dataset.ids[i] != "damaged"}
    for image_id, (image, target) in samples.items():
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1, image_id
        assert target["image_id"] == image_id
    expected_box = torch.tensor([[2.0, 3.0, 20.0, 18.0]])
    assert torch.equal(samples["good"][1]["boxes"], expected_box)
    assert torch.equal(samples["outside"][1]["boxes"], expected_box)  # only the box inside is left
    assert samples["outside"][1]["labels"].tolist() == [dataset.classes.index("cat") + 1]
    # alpha dropped, colours kept; 16-bit gray scaled by 65535 into three channels; CMYK as Pillow converts it
    assert torch.equal(samples["alpha"][0], torch.from_numpy(rgb(2)).permute(2, 0, 1).float() / 255)
    gray = torch.from_numpy((np.arange(H * W) * 61).reshape(H, W) / 65535).float()
    assert all(torch.allclose(samples["gray16"][0][c], gray, atol=1e-7, rtol=0) for c in range(3))
    cmyk = np.asarray(Image.open(defect_voc / "JPEGImages" / "cmyk.jpg").convert("RGB"))
    assert torch.equal(samples["cmyk"][0], torch.from_numpy(cmyk).permute(2, 0, 1).float() / 255)
    # the EXIF orientation is applied: shown 24 x 32, the stored top-left (red) is now top-right
    exif = samples["exif"][0]
    assert exif.shape == (3, H, W)
    assert exif[:, 2, W - 3].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=0.1)
    assert exif[:, H - 3, 2].tolist() == pytest.approx([1.0, 1.0, 1.0], abs=0.1)
    # damage that only decoding reveals: an error naming the file when the sample is read
    with pytest.raises(DataError, match="damaged.bmp: cannot read image"):
        dataset[dataset.ids.index("damaged")]


@pytest.mark.parametrize("bad_id", list(VOC_BAD))
def test_voc_error_policy_names_the_file(tmp_path, bad_id):
    ids = ["good", bad_id] if bad_id != "duplicate" else ["good"]
    root = write_defect_voc(tmp_path / "voc", ids)
    if bad_id != "duplicate":
        (root / "ImageSets" / "Main" / "train.txt").write_text(f"good\n{bad_id}\n")
    path, problem = VOC_BAD[bad_id]
    with pytest.raises(DataError) as info:
        build_dataset(root, split="train", on_bad_image="error")
    assert info.value.path == str(root / path)
    assert problem in info.value.problem and "\n" not in str(info.value)


def test_all_images_bad_is_an_error_and_the_policy_is_checked(tmp_path):
    root = write_defect_voc(tmp_path / "voc", ["truncated", "empty"])
    with pytest.raises(DataError, match="none of its 2 images can be used") as info:
        VOCDataset(root, split="train", on_bad_image="skip")
    assert info.value.path == str(root / "ImageSets" / "Main" / "train.txt") and "truncated.jpg" in str(info.value)
    with pytest.raises(ConfigError, match="on_bad_image"):
        build_dataset(root, split="train", on_bad_image="ignore")


# -- COCO ------------------------------------------------------------------------------------------------
def write_defect_coco(folder):
    folder.mkdir(parents=True, exist_ok=True)
    files = ["good.jpg", "truncated.jpg", "empty.jpg", "alpha.png", "gray16.png", "cmyk.jpg", "exif.jpg", "notimage.jpg"]
    images = [{"id": i, "file_name": name, "width": W, "height": H} for i, name in enumerate(files, start=1)]
    for name in files:
        IMAGE_WRITERS[name](folder / name)
    images += [
        {"id": 20, "file_name": "missing.jpg", "width": W, "height": H},  # listed, not on disk
        {"id": 21, "file_name": "good.jpg", "width": W, "height": H},  # the same id twice
        {"id": 21, "file_name": "alpha.png", "width": W, "height": H},
        {"id": 22, "file_name": "good.jpg", "width": W, "height": H},  # an annotation with a non-numeric bbox
        {"id": 23, "file_name": "good.jpg", "width": W, "height": H},  # negative width, box outside the image
    ]
    box = [2, 3, 18, 15]
    annotations = [{"image_id": i, "category_id": 1, "bbox": box} for i in range(1, 9)]
    annotations += [
        {"image_id": 21, "category_id": 1, "bbox": box},
        {"image_id": 22, "category_id": 1, "bbox": box},
        {"image_id": 22, "category_id": 1, "bbox": [2, "three", 18, 15]},
        {"image_id": 23, "category_id": 1, "bbox": box},
        {"image_id": 23, "category_id": 1, "bbox": [20, 3, -5, 10]},  # negative width
        {"image_id": 23, "category_id": 1, "bbox": [40, 30, 5, 5]},  # entirely outside the 32 x 24 image
        {"image_id": 404, "category_id": 1, "bbox": box},  # an image id that 'images' lacks
    ]
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_skip_names_every_bad_file_and_keeps_correct_samples(tmp_path, caplog):
    path = write_defect_coco(tmp_path / "coco")
    with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
        dataset = COCODataset(path, on_bad_image="skip")
    assert dataset.ids == [1, 4, 5, 6, 7, 23]
    assert sorted(dataset.coco.getImgIds()) == dataset.ids  # evaluation sees the same images
    assert {a["image_id"] for a in dataset.coco.dataset["annotations"]} == set(dataset.ids)
    messages = warnings_of(caplog)
    folder = tmp_path / "coco"
    for fragment in (
        f"{folder / 'truncated.jpg'}: cannot read image",
        f"{folder / 'empty.jpg'}: image file is empty (0 bytes)",
        f"{folder / 'notimage.jpg'}: cannot read image",
        f"{folder / 'missing.jpg'}: image file not found",
        f"{path}: duplicate image id 21",
        f"{path}: annotation 11 has bbox [2, 'three', 18, 15], expected 4 finite numbers (image 22)",
        f"{path}: 1 annotations of image ids not in 'images' skipped",
        f"{path}: 2 annotations with empty boxes dropped",
    ):
        assert sum(fragment in m for m in messages) == 1, (fragment, messages)
    assert any("7 of 13 images skipped" in m for m in messages), messages
    assert len(dataset.skipped) == 7 and all("\n" not in m for m in messages)
    for i, image_id in enumerate(dataset.ids):
        image, target = dataset[i]
        assert image.shape == (3, H, W) and target["image_id"] == image_id
        assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 20.0, 18.0]]))
    assert torch.equal(dataset[dataset.ids.index(4)][0], torch.from_numpy(rgb(2)).permute(2, 0, 1).float() / 255)

    with pytest.raises(DataError) as info:
        COCODataset(path)  # the library's default policy is "error": the first bad image
    assert info.value.path == str(path) and "duplicate image id 21" in info.value.problem


# -- loading: damage that only decoding reveals -----------------------------------------------------------
@pytest.mark.parametrize("workers", [0, 1])
def test_loader_replaces_an_undecodable_sample_deterministically(defect_voc, workers, caplog):
    dataset = VOCDataset(defect_voc, split="train", on_bad_image="skip")
    damaged = dataset.ids.index("damaged")

    def epoch(start_batch=0):
        loader = build_loader(dataset, batch_size=2, shuffle=True, seed=3, num_workers=workers, group_by_aspect_ratio=False)
        loader.batch_sampler.set_epoch(1, start_batch=start_batch)
        with caplog.at_level(logging.WARNING, logger="fasterrcnn"):
            batches = [[t["image_id"] for t in targets] for _, targets in loader]
        return batches, loader.skipped

    caplog.clear()
    batches, skipped = epoch()
    assert skipped == {str(defect_voc / "JPEGImages" / "damaged.bmp"): skipped[str(defect_voc / "JPEGImages" / "damaged.bmp")]}
    assert "cannot read image" in next(iter(skipped.values()))
    replaced = [m for m in warnings_of(caplog) if "sample replaced" in m]
    assert len(replaced) == 1 and replaced[0].startswith(str(defect_voc / "JPEGImages" / "damaged.bmp"))
    ids = [i for batch in batches for i in batch]
    replacement = dataset.ids[(damaged + 1) % len(dataset)]  # the next index whose image loads
    assert "damaged" not in ids and ids.count(replacement) == 2 and len(ids) == len(dataset)
    again, _ = epoch()
    assert again == batches  # a function of (seed, epoch, index) and the files only
    resumed, _ = epoch(start_batch=2)
    assert resumed == batches[2:]  # mid-epoch resume unchanged


# -- the command line: training over such folders finishes ------------------------------------------------
def test_training_over_defect_folders_finishes_with_a_count(defect_voc, tmp_path, capsys):
    from fasterrcnn.cli import main
    from fasterrcnn.engine.checkpoint import load_checkpoint

    small = ["--preset", "tiny", "--max-iters", "4", "--batch-size", "2", "--no-val", "--quiet", "--device", "cpu"]
    small += ["--set", "model.min_size=32", "--set", "model.max_size=48"]
    assert main(["train", "--data", str(defect_voc), "--split", "train", "--output", str(tmp_path / "voc"), *small]) == 0
    out, err = capsys.readouterr()
    # 9 images left out at construction, damaged.bmp replaced while loading (4 batches = one epoch)
    assert "10 bad images skipped, not trained on" in out
    assert "Traceback" not in err and all(line.startswith("fasterrcnn: ") for line in err.splitlines())
    assert sum("damaged.bmp" in line for line in err.splitlines()) == 1
    assert load_checkpoint(tmp_path / "voc" / "checkpoints" / "last.pt")["iteration"] == 4

    coco = write_defect_coco(tmp_path / "coco")
    assert main(["train", "--data", str(coco), "--output", str(tmp_path / "coco_run"), *small]) == 0
    out, err = capsys.readouterr()
    assert "7 bad images skipped, not trained on" in out and "Traceback" not in err

    args = ["train", "--data", str(coco), "--output", str(tmp_path / "strict"), "--on-bad-image", "error", *small]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"fasterrcnn: error: {coco}: duplicate image id 21"
