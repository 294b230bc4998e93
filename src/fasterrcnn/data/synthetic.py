"""A built-in synthetic detection set: coloured shapes on textured backgrounds, as a VOC folder.

``write_synthetic_voc(root, num_train=..., num_test=..., num_val=...)`` writes ``Annotations/*.xml``
(VOC format, 1-based inclusive coordinates, ``<size>``), ``JPEGImages/*.jpg`` (quality 95) and
``ImageSets/Main/{train,test,trainval}.txt`` (trainval = train + val, as in VOC), plus ``val.txt``
when ``num_val`` > 0, readable by ``VOCDataset``.

Every image has 1-6 objects of the classes ``SYNTHETIC_CLASSES`` (sorted, so a split that holds
every class infers the same class order), in varied colours, sizes (20-110 px at 256 x 256,
scaled with the shorter image side) and aspect ratios (shapes are stretched up to 1.5 : 1), on a
low-contrast background of smooth noise, a gradient and stripes. Later objects may occlude
earlier ones, but every object keeps at least ``MIN_VISIBLE`` of its pixels and two boxes never
overlap by more than ``MAX_BOX_IOU``, so the task stays learnable; the annotated box is the full
extent of the shape, occluded or not. Each object's colour differs clearly from the background
and from the objects whose boxes overlap or nearly touch its box. Boxes are exact: they are the tight box of the drawn pixels.

Image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``: the same arguments give the same
files, byte for byte.

``write_big_scene_voc(root, num_train=..., num_test=...)`` writes the "big scene" set the same way (same
classes, backgrounds and files) for sliced inference: images of ``BIG_SCENE_SIDE`` (2000-4000 px a side),
each with 20-50 small objects of ``BIG_SCENE_SMALL`` (10-40 px) and 1-3 large ones of ``BIG_SCENE_LARGE``
(200-600 px); objects never overlap (boxes at least 4 px apart), so no object is occluded. At the
800-pixel input of a usual detector the small objects shrink to 2-16 px; in 640-pixel tiles they keep
their size. ``python -c "from fasterrcnn.data import write_big_scene_voc; write_big_scene_voc('big', num_train=40, num_test=8)"``
writes one, read by ``fasterrcnn train / eval --data big`` (``--slice`` for both).
"""

from __future__ import annotations

import colorsys
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SYNTHETIC_CLASSES = ("circle", "cross", "square", "star", "triangle")

MIN_VISIBLE = 0.65  # fraction of an object's pixels that stays visible under later objects
MAX_BOX_IOU = 0.3  # largest IoU between two annotated boxes (per-class NMS is 0.3 in the paper)
MIN_COLOR_DISTANCE = 90.0  # RGB distance (0-255) to the background and to overlapped objects
_SIZE_RANGE = (20.0, 110.0)  # object size (geometric mean of width and height) at 256 x 256
_MAX_ASPECT = 1.5
_ATTEMPTS = 30


def _unit_polygon(name: str, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """Vertices of the shape in the unit square (touching all four sides); None for the circle."""
    if name == "circle":
        return None
    if name == "square":
        return [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if name == "triangle":
        points = [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]  # apex up, then rotated by a multiple of 90 degrees
        for _ in range(int(rng.integers(4))):
            points = [(1.0 - y, x) for x, y in points]
        return points
    if name == "cross":
        a, b = 0.32, 0.68  # arm thickness 0.36
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    if name == "star":
        turn = rng.uniform(0, 2 * math.pi / 5)
        radii = (1.0, 0.5)
        points = [
            (radii[k % 2] * math.cos(turn + k * math.pi / 5), radii[k % 2] * math.sin(turn + k * math.pi / 5))
            for k in range(10)
        ]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in points]
    raise ValueError(f"unknown shape {name!r}")


def _shape_mask(name: str, box: tuple[float, float, float, float], size, rng) -> np.ndarray:
    """Boolean mask [H, W] of the shape drawn by PIL inside ``box`` (continuous x0, y0, w, h)."""
    height, width = size
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, w, h = box
    polygon = _unit_polygon(name, rng)
    if polygon is None:
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=255)
    else:
        draw.polygon([(x0 + px * w, y0 + py * h) for px, py in polygon], fill=255)
    return np.asarray(canvas) > 0


def _background(rng: np.random.Generator, size) -> np.ndarray:
    """Float32 [H, W, 3] in 0-255: a muted colour with smooth noise, a gradient and faint stripes."""
    height, width = size
    base = rng.uniform(50, 205, size=3)
    base = base.mean() + (base - base.mean()) * rng.uniform(0.2, 0.8)
    gh, gw = (int(v) for v in rng.integers(3, 9, size=2))
    grid = Image.fromarray(rng.integers(0, 256, size=(gh, gw, 3), dtype=np.uint8))
    image = np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    amplitude = rng.uniform(8, 22)
    image *= amplitude / 127.5  # smooth noise in [0, 2 * amplitude] ...
    image += (base - amplitude).astype(np.float32)  # ... around the base colour
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0, math.pi)
    along = (xs * math.cos(angle) + ys * math.sin(angle)) / max(height, width) - 0.5
    image += along[:, :, None] * rng.uniform(-30, 30, size=3).astype(np.float32)  # gradient
    stripe_angle = rng.uniform(0, math.pi)
    frequency = 2 * math.pi / rng.uniform(8, 40)
    stripes = np.sin((xs * math.cos(stripe_angle) + ys * math.sin(stripe_angle)) * frequency) * rng.uniform(0, 10)
    image += stripes[:, :, None]
    return image


def _pick_color(rng, avoid: list[np.ndarray]) -> np.ndarray:
    """A saturated colour at least MIN_COLOR_DISTANCE from every colour in ``avoid`` (best of 30)."""
    best, best_distance = None, -1.0
    for _ in range(30):
        rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.3, 1.0))) * 255
        distance = min((float(np.linalg.norm(rgb - c)) for c in avoid), default=math.inf)
        if distance >= MIN_COLOR_DISTANCE:
            return rgb
        if distance > best_distance:
            best, best_distance = rgb, distance
    return best


def _box_iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _near(a, b, margin: float) -> bool:
    """Whether boxes ``a`` and ``b`` overlap once ``a`` is grown by ``margin`` on every side."""
    return a[0] - margin < b[2] and b[0] < a[2] + margin and a[1] - margin < b[3] and b[1] < a[3] + margin


def render_image(rng: np.random.Generator, size: tuple[int, int], *, grain: float = 3.0):
    """One synthetic image: (uint8 array [H, W, 3], [(class name, (x1, y1, x2, y2)) ...]).

    Boxes are continuous pixel boxes: x1 = leftmost drawn column, x2 = rightmost + 1. ``grain`` is the
    standard deviation (0-255 levels) of the grey Gaussian noise added last: 3 for the demo's set, more
    for a noisier look (``functools.partial(render_image, grain=12.0)`` as ``write_synthetic_voc``'s ``render``).
    """
    height, width = size
    image = _background(rng, size)
    background_mean = image.reshape(-1, 3)
    owner = np.full((height, width), -1, dtype=np.int64)  # index of the visible object per pixel
    objects, areas, visible, colors = [], [], [], []  # per object; visible = pixels not yet occluded
    scale = min(height, width) / 256.0
    low, high = math.log(_SIZE_RANGE[0] * scale), math.log(_SIZE_RANGE[1] * scale)
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(_ATTEMPTS):
            name = SYNTHETIC_CLASSES[int(rng.integers(len(SYNTHETIC_CLASSES)))]
            side = math.exp(rng.uniform(low, high))
            aspect = math.exp(rng.uniform(-math.log(_MAX_ASPECT), math.log(_MAX_ASPECT)))
            w = min(side * math.sqrt(aspect), width - 2.0)
            h = min(side / math.sqrt(aspect), height - 2.0)
            x0, y0 = rng.uniform(0, width - w - 1), rng.uniform(0, height - h - 1)
            mask = _shape_mask(name, (x0, y0, w, h), size, rng)
            cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
            if cols.size == 0:
                continue
            box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
            if any(_box_iou(box, other) > MAX_BOX_IOU for _, other in objects):
                continue
            covered = owner[mask]
            hidden = np.bincount(covered[covered >= 0], minlength=len(objects))
            if any(visible[j] - hidden[j] < MIN_VISIBLE * areas[j] for j in range(len(objects))):
                continue
            # differ from what lies under the shape and from objects it overlaps or nearly touches
            avoid = [background_mean[mask.reshape(-1)].mean(axis=0)]
            avoid += [colors[j] for j, (_, other) in enumerate(objects) if _near(box, other, margin=4.0)]
            color = _pick_color(rng, avoid)
            image[mask] = color
            owner[mask] = len(objects)
            visible = [v - int(n) for v, n in zip(visible, hidden)] + [int(mask.sum())]
            objects.append((name, box))
            areas.append(visible[-1])
            colors.append(color)
            break
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * grain  # sensor-like grain
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def _annotation_xml(image_id: str, size: tuple[int, int], objects) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size_element = ET.SubElement(root, "size")
    for tag, value in (("width", size[1]), ("height", size[0]), ("depth", 3)):
        ET.SubElement(size_element, tag).text = str(value)
    for name, (x1, y1, x2, y2) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        # continuous (x1, y1, x2, y2) -> VOC 1-based inclusive pixel indices
        for tag, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, tag).text = str(int(value))
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def _size_spec(value) -> tuple[int, int]:
    """An int, or an inclusive (min, max) range, as a (low, high) pair."""
    if isinstance(value, (tuple, list)):
        low, high = (int(v) for v in value)
    else:
        low = high = int(value)
    if not 32 <= low <= high:
        raise ValueError(f"image side {value!r}: expected an int >= 32 or a (min, max) range")
    return low, high


def write_synthetic_voc(
    root, *, num_train: int, num_test: int, num_val: int = 0, image_size=(256, 256), seed: int = 0, render=render_image
) -> Path:
    """Write the synthetic set as a VOC folder at ``root`` and return ``root`` as a Path.

    ``image_size = (height, width)``; each of the two may be an int or an inclusive ``(min, max)``
    range drawn per image, e.g. ``((192, 320), (192, 320))``. Image ids are ``000000``,
    ``000001`` ... with the ``num_train`` training images first, then the ``num_test`` test images,
    then the ``num_val`` validation images (so the train and test images do not depend on ``num_val``).
    ``render(rng, (h, w))`` draws an image and its objects (``render_image``; ``render_big_scene``).
    """
    root = Path(root)
    height_range, width_range = (_size_spec(v) for v in image_size)
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(num_train + num_test + num_val)]
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        size = (int(rng.integers(height_range[0], height_range[1] + 1)), int(rng.integers(width_range[0], width_range[1] + 1)))
        pixels, objects = render(rng, size)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
        _annotation_xml(image_id, size, objects).write(root / "Annotations" / f"{image_id}.xml", encoding="unicode")
    val = ids[num_train + num_test :]
    splits = {"train": ids[:num_train], "test": ids[num_train : num_train + num_test], "trainval": ids[:num_train] + val}
    if num_val:
        splits["val"] = val
    for split, split_ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in split_ids))
    return root


BIG_SCENE_SIDE = (2000, 4000)
BIG_SCENE_SMALL = (10.0, 40.0)  # object size (geometric mean of width and height), pixels
BIG_SCENE_LARGE = (200.0, 600.0)


def render_big_scene(rng: np.random.Generator, size: tuple[int, int]):
    """One big-scene image (see the module docstring): (uint8 array [H, W, 3], [(class name, (x1, y1, x2, y2)) ...]).

    Each shape is drawn on a canvas of its own box only, so the cost grows with the objects, not the image."""
    height, width = size
    image = _background(rng, size)
    objects = []
    sizes = [BIG_SCENE_LARGE] * int(rng.integers(1, 4)) + [BIG_SCENE_SMALL] * int(rng.integers(20, 51))
    for low, high in sizes:
        for _attempt in range(_ATTEMPTS):
            name = SYNTHETIC_CLASSES[int(rng.integers(len(SYNTHETIC_CLASSES)))]
            side = math.exp(rng.uniform(math.log(low), math.log(high)))
            aspect = math.exp(rng.uniform(-math.log(_MAX_ASPECT), math.log(_MAX_ASPECT)))
            w, h = side * math.sqrt(aspect), side / math.sqrt(aspect)
            left, top = int(rng.integers(0, width - math.ceil(w) - 1)), int(rng.integers(0, height - math.ceil(h) - 1))
            canvas = (math.ceil(h) + 2, math.ceil(w) + 2)
            mask = _shape_mask(name, (rng.uniform(0, 1), rng.uniform(0, 1), w, h), canvas, rng)
            cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
            if cols.size == 0:
                continue
            box = (float(left + cols[0]), float(top + rows[0]), float(left + cols[-1] + 1), float(top + rows[-1] + 1))
            if any(_near(box, other, margin=4.0) for _, other in objects):
                continue
            region = image[top : top + canvas[0], left : left + canvas[1]]
            color = _pick_color(rng, [region[mask].mean(axis=0)])
            region[mask] = color
            objects.append((name, box))
            break
    image += rng.standard_normal((height, width, 1), dtype=np.float32) * 3.0  # sensor-like grain
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def write_big_scene_voc(root, *, num_train: int, num_test: int, seed: int = 0, side=BIG_SCENE_SIDE) -> Path:
    """Write the big-scene set (see the module docstring) as a VOC folder at ``root`` and return it as a Path:
    ``num_train`` then ``num_test`` images, each side drawn in the inclusive range ``side``."""
    return write_synthetic_voc(root, num_train=num_train, num_test=num_test, image_size=(side, side), seed=seed, render=render_big_scene)


__all__ = ["BIG_SCENE_SIDE", "SYNTHETIC_CLASSES", "render_big_scene", "render_image", "write_big_scene_voc", "write_synthetic_voc"]
