import numpy as np
import pytest
import torch

from fasterrcnn.data.synthetic import MAX_BOX_IOU, SYNTHETIC_CLASSES, render_image, write_synthetic_voc
from fasterrcnn.data.voc import VOCDataset


def files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return write_synthetic_voc(tmp_path_factory.mktemp("synthetic"), num_train=16, num_test=6, seed=0)


def test_folder_layout_and_splits(voc):
    split = lambda name: (voc / "ImageSets" / "Main" / f"{name}.txt").read_text().split()  # noqa: E731
    assert split("train") == [f"{i:06d}" for i in range(16)]
    assert split("trainval") == split("train")
    assert split("test") == [f"{i:06d}" for i in range(16, 22)]
    assert len(list((voc / "JPEGImages").glob("*.jpg"))) == 22
    assert len(list((voc / "Annotations").glob("*.xml"))) == 22


def test_loads_with_voc_dataset_boxes_inside_and_class_coverage(voc):
    dataset = VOCDataset(voc, split="train")
    assert dataset.classes == SYNTHETIC_CLASSES  # sorted names: inference gives the same order
    assert len(dataset) == 16
    labels_seen = set()
    for i in range(len(dataset)):
        image, target = dataset[i]
        assert image.shape == (3, 256, 256)
        boxes = target["boxes"]
        assert 1 <= len(boxes) <= 6
        assert bool((boxes[:, :2] >= 0).all())
        assert bool((boxes[:, 2] <= 256).all())
        assert bool((boxes[:, 3] <= 256).all())
        sides = torch.stack((boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]), dim=1)
        assert bool((sides >= 12).all())  # 20 px objects, stretched at most 1.5 : 1 (+ shape rounding)
        assert bool((sides <= 140).all())
        assert not bool(target["difficult"].any())
        labels_seen.update(target["labels"].tolist())
    assert labels_seen == set(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert dataset.num_clipped == 0
    assert dataset.num_dropped == 0
    assert len(VOCDataset(voc, split="test", classes=SYNTHETIC_CLASSES)) == 6


def test_same_seed_same_bytes_other_seed_differs(voc, tmp_path):
    again = write_synthetic_voc(tmp_path / "again", num_train=16, num_test=6, seed=0)
    assert files(again) == files(voc)
    other = write_synthetic_voc(tmp_path / "other", num_train=2, num_test=0, seed=1)
    assert files(other)["JPEGImages/000000.jpg"] != files(voc)["JPEGImages/000000.jpg"]
    fewer = write_synthetic_voc(tmp_path / "fewer", num_train=2, num_test=0, seed=0)
    assert files(fewer)["Annotations/000001.xml"] == files(voc)["Annotations/000001.xml"]


def test_a_validation_split_comes_after_the_others(voc, tmp_path):
    root = write_synthetic_voc(tmp_path / "val", num_train=16, num_test=6, num_val=3, seed=0)
    split = lambda name: (root / "ImageSets" / "Main" / f"{name}.txt").read_text().split()  # noqa: E731
    val = [f"{i:06d}" for i in range(22, 25)]
    assert split("val") == val and split("trainval") == split("train") + val
    written = files(root)
    assert all(written[name] == data for name, data in files(voc).items() if not name.startswith("ImageSets"))
    assert len(VOCDataset(root, split="val", classes=SYNTHETIC_CLASSES)) == 3


def test_rendered_boxes_are_tight_separated_and_objects_contrast():
    rng = np.random.default_rng(5)
    for _ in range(10):
        pixels, objects = render_image(rng, (128, 160))
        assert pixels.shape == (128, 160, 3)
        assert pixels.dtype == np.uint8
        assert 1 <= len(objects) <= 6
        for name, (x1, y1, x2, y2) in objects:
            assert name in SYNTHETIC_CLASSES
            assert 0 <= x1 < x2 <= 160
            assert 0 <= y1 < y2 <= 128
            assert x1 == int(x1)
            assert y2 == int(y2)
        for a in range(len(objects)):
            for b in range(a):
                (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = objects[a][1], objects[b][1]
                iw, ih = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
                union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - iw * ih
                assert iw * ih / union <= MAX_BOX_IOU


def test_single_object_box_is_the_tight_box_of_its_pixels():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        pixels, objects = render_image(rng, (96, 96))
        if len(objects) != 1:
            continue
        _, (x1, y1, x2, y2) = objects[0]
        inside = pixels[int(y1) : int(y2), int(x1) : int(x2)].astype(float)
        # the border rows/columns of the box hold object pixels: some pixel on each edge differs
        # clearly from the pixels just outside (the background)
        for edge, beyond in (
            (inside[0], pixels[int(y1) - 1, int(x1) : int(x2)] if y1 > 0 else None),
            (inside[-1], pixels[int(y2), int(x1) : int(x2)] if y2 < 96 else None),
            (inside[:, 0], pixels[int(y1) : int(y2), int(x1) - 1] if x1 > 0 else None),
            (inside[:, -1], pixels[int(y1) : int(y2), int(x2)] if x2 < 96 else None),
        ):
            if beyond is None:
                continue
            assert np.abs(edge - beyond.astype(float)).sum(axis=1).max() > 60
        return
    raise AssertionError("no single-object image among 40 seeds")


def test_variable_image_sizes(tmp_path):
    root = write_synthetic_voc(tmp_path, num_train=6, num_test=0, image_size=((64, 96), 80), seed=3)
    dataset = VOCDataset(root, split="train", classes=SYNTHETIC_CLASSES)
    sizes = [dataset.image_size(i) for i in range(6)]
    assert all(64 <= h <= 96 and w == 80 for h, w in sizes)
    assert len({h for h, _ in sizes}) > 1
    for i in range(6):
        assert tuple(dataset[i][0].shape[1:]) == sizes[i]


def test_bad_image_size_rejected(tmp_path):
    with pytest.raises(ValueError, match="image side"):
        write_synthetic_voc(tmp_path, num_train=1, num_test=0, image_size=(16, 256))


def test_grain_changes_the_noise_not_the_objects():
    plain, objects = render_image(np.random.default_rng([3, 0]), (128, 160))
    grainy, same_objects = render_image(np.random.default_rng([3, 0]), (128, 160), grain=12.0)
    assert same_objects == objects
    noise = lambda image: np.abs(np.diff(image.astype(np.float64), axis=1)).mean()  # noqa: E731  (pixel-to-pixel change)
    assert noise(grainy) > 2 * noise(plain)
