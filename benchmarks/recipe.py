"""Recipe benchmark: which training recipe gives the most accuracy for a fixed training time.

    python benchmarks/recipe.py                                     # 3 sets x 10 variants x 2 seeds, 5 min each
    python benchmarks/recipe.py --seed 0 --threads 1                # only seed 0 (another process: --seed 1)
    python benchmarks/recipe.py --minutes 1 --sets shapes glyphs --seeds 2 --variants current ema cosine
    python benchmarks/recipe.py --list                              # the sets and variants
    python benchmarks/recipe.py --minutes 1 --report-only           # the table of the runs finished so far
    python benchmarks/recipe.py --iterations 300                    # a fixed number of iterations instead of time

Three generated data sets with different looks, each written once as a VOC folder under ``--work`` with
train / val / test splits (seeded, so every run sees the same images):

- ``shapes``: the demo's synthetic shapes (``data.synthetic``: 5 classes, textured backgrounds, occlusion);
- ``glyphs``: five letters drawn with the DejaVu / Liberation fonts found on the machine (Pillow's built-in
  font otherwise) in random fonts, sizes, colours and rotations on striped, noisy backgrounds, overlapping
  one another, among unannotated clutter (digits, lines, blobs);
- ``small``: many small objects (6-24 pixels: discs, squares, triangles) on 320 x 320 noise.

Every (set, variant, seed) trains the preset (default ``tiny``) through the public API,
``fasterrcnn.train(..., time=MINUTES)``, then scores its ``last.pt`` with ``fasterrcnn.evaluate`` (COCO
metric) on val and on test. The variants are decided on val (the variant with the best mean val AP) and
reported on test: the table shows test AP, AP50, AP75 and AP_small, each the mean over the seeds, per set
and over the sets, and the relative change of the mean AP against ``current`` (today's recipe).
Timings are the machine's: note its load beside the numbers. Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: E402

import fasterrcnn  # noqa: E402

# Variant -> train.* overrides on top of the preset ("current": the preset as it is).
VARIANTS: dict[str, dict[str, object]] = {
    "current": {},
    "ema": {"train.ema_decay": 0.998},
    "scale_jitter": {"train.scale_jitter": [0.75, 1.25]},
    "photometric": {"train.color_jitter": [0.3, 0.3, 0.3, 0.02]},
    "cosine": {"train.lr_schedule": "cosine"},
    "ema_cosine": {"train.ema_decay": 0.998, "train.lr_schedule": "cosine"},
    "lr_0.04": {"train.lr": 0.04},  # twice the tiny preset's 0.02 (docs/training.md, "Benchmark")
    "warmup_25": {"train.warmup_iters": 25},  # the preset's 100, shorter and longer (scaled with the schedule's length)
    "warmup_300": {"train.warmup_iters": 300},
    "fit_anchors": {"train.fit_anchors": True},
    "all": {
        "train.ema_decay": 0.998, "train.scale_jitter": [0.75, 1.25], "train.color_jitter": [0.3, 0.3, 0.3, 0.02],
        "train.lr_schedule": "cosine", "train.fit_anchors": True,
    },  # fmt: skip
}

SPLITS = {"train": 300, "val": 60, "test": 100}  # images per split (--images scales them)
GLYPH_CLASSES = ("A", "E", "K", "R", "Z")
SMALL_CLASSES = ("disc", "square", "triangle")


# -- data sets ---------------------------------------------------------------------------------------------
def _write_voc(root: Path, images: dict[str, list[tuple[Image.Image, list[tuple[str, tuple[float, float, float, float]]]]]]) -> None:
    """``images``: split -> [(image, [(class, continuous xyxy box)])] written as a VOC folder at ``root``."""
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    index = 0
    for split, items in images.items():
        ids = []
        for image, objects in items:
            image_id = f"{index:06d}"
            index += 1
            ids.append(image_id)
            image.save(root / "JPEGImages" / f"{image_id}.jpg", quality=92)
            lines = [f"<annotation><filename>{image_id}.jpg</filename><size><width>{image.width}</width><height>{image.height}</height><depth>3</depth></size>"]
            for name, (x1, y1, x2, y2) in objects:
                # continuous xyxy -> VOC's 1-based inclusive pixels
                lines.append(
                    f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{int(x1) + 1}</xmin><ymin>{int(y1) + 1}</ymin>"
                    f"<xmax>{int(math.ceil(x2))}</xmax><ymax>{int(math.ceil(y2))}</ymax></bndbox></object>"
                )
            lines.append("</annotation>")
            (root / "Annotations" / f"{image_id}.xml").write_text("\n".join(lines))
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def _textured_background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """Float [H, W, 3]: a colour gradient, stripes at a random angle and blurred noise."""
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 215, 3).astype(np.float32)
    angle = rng.uniform(0, math.pi)
    period = rng.uniform(6, 30)
    stripes = np.sin((x * math.cos(angle) + y * math.sin(angle)) * 2 * math.pi / period)[..., None] * rng.uniform(5, 35)
    gradient = ((x / width)[..., None] - 0.5) * rng.uniform(-60, 60, 3).astype(np.float32)
    noise = np.asarray(Image.fromarray(rng.integers(0, 255, (height // 4 + 1, width // 4 + 1), dtype=np.uint8)).resize((width, height), Image.BILINEAR), dtype=np.float32)
    return base + stripes + gradient + (noise[..., None] - 128) * 0.25


def _fonts() -> list[str]:
    roots = [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts"]
    found = sorted(str(p) for root in roots if root.is_dir() for p in root.rglob("*.ttf"))
    return [f for f in found if "DejaVu" in f or "Liberation" in f][:24] or found[:24]


def glyph_image(rng: np.random.Generator, fonts: list[str], size: int = 288):
    """One glyphs image: letters of GLYPH_CLASSES (annotated) among digits and strokes (not annotated)."""
    pixels = _textured_background(rng, (size, size))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    objects = []
    for _ in range(int(rng.integers(2, 7))):
        letter = GLYPH_CLASSES[int(rng.integers(len(GLYPH_CLASSES)))]
        objects.append((letter, True))
    for _ in range(int(rng.integers(1, 5))):
        objects.append((str(int(rng.integers(10))), False))  # clutter: digits, never annotated
    annotations = []
    for text, annotated in objects:
        height = int(rng.integers(24, 96))
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], height) if fonts else ImageFont.load_default(height)
        box = font.getbbox(text)
        tile = Image.new("L", (box[2] + 8, box[3] + 8), 0)
        ImageDraw.Draw(tile).text((4, 4), text, font=font, fill=255)
        tile = tile.rotate(float(rng.uniform(-25, 25)), expand=True, resample=Image.BILINEAR)
        mask = np.asarray(tile) > 96
        if not mask.any():
            continue
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        x0 = int(rng.integers(-cols[0], max(size - cols[-1] - 1, -cols[0] + 1)))
        y0 = int(rng.integers(-rows[0], max(size - rows[-1] - 1, -rows[0] + 1)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        image.paste(Image.new("RGB", tile.size, colour), (x0, y0), tile)
        if annotated:
            annotations.append((text, (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1.0, y0 + rows[-1] + 1.0)))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 8))):  # clutter strokes over everything
        points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 4)))
    return image.filter(ImageFilter.GaussianBlur(0.6)), annotations


def small_image(rng: np.random.Generator, size: int = 320):
    """One small-objects image: 6-20 discs, squares and triangles of 6-24 pixels on noise."""
    pixels = _textured_background(rng, (size, size)) * 0.5 + 64
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    annotations = []
    for _ in range(int(rng.integers(6, 21))):
        name = SMALL_CLASSES[int(rng.integers(len(SMALL_CLASSES)))]
        side = float(rng.uniform(6, 24))
        x0, y0 = float(rng.uniform(1, size - side - 1)), float(rng.uniform(1, size - side - 1))
        box = (x0, y0, x0 + side, y0 + side)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if name == "disc":
            draw.ellipse(box, fill=colour)
        elif name == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x0 + side / 2, y0), (x0, y0 + side), (x0 + side, y0 + side)], fill=colour)
        annotations.append((name, (math.floor(x0), math.floor(y0), math.ceil(x0 + side), math.ceil(y0 + side))))
    return image, annotations


def make_set(name: str, root: Path, scale: float) -> tuple[Path, list[str]]:
    """Write the set ``name`` at ``root`` once (a finished set is reused); returns (root, class names)."""
    counts = {split: max(4, round(n * scale)) for split, n in SPLITS.items()}
    done = root / "ImageSets" / "Main" / "test.txt"
    if name == "shapes":
        from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_voc

        if not done.is_file():
            write_synthetic_voc(root, num_train=counts["train"], num_test=counts["test"], num_val=counts["val"], seed=25)
        return root, list(SYNTHETIC_CLASSES)
    classes = list(GLYPH_CLASSES if name == "glyphs" else SMALL_CLASSES)
    if not done.is_file():
        fonts = _fonts()
        rng = np.random.default_rng(25)
        draw = (lambda: glyph_image(rng, fonts)) if name == "glyphs" else (lambda: small_image(rng))
        _write_voc(root, {split: [draw() for _ in range(count)] for split, count in counts.items()})
    return root, classes


SETS = ("shapes", "glyphs", "small")


# -- runs ----------------------------------------------------------------------------------------------------
def run_one(root: Path, classes: list[str], out: Path, preset: str, length: dict, seed: int, overrides: dict) -> dict:
    """Train for ``length`` (``{"time": minutes}`` or ``{"max_iters": n}``), or reuse a finished run's bench.json,
    and score last.pt on val and test."""
    results = out / "bench.json"
    if results.is_file():
        return json.loads(results.read_text())
    started = time.perf_counter()
    trained = fasterrcnn.train(
        fasterrcnn.TrainingData(root, split="train", classes=classes), out, val=False, preset=preset, **length, seed=seed,
        overrides=overrides, device="cpu", quiet=True, overwrite=True,
    )  # fmt: skip
    training_seconds = time.perf_counter() - started
    scores = {}
    for split in ("val", "test"):
        result = fasterrcnn.evaluate(root, weights=trained.last, split=split, classes=classes, metric="coco", device="cpu", quiet=True)
        scores[split] = {k: float(result.metrics[k]) for k in ("AP", "AP50", "AP75", "APs")}
    record = {"iterations": trained.iteration, "seconds": time.perf_counter() - started, "training_seconds": training_seconds, "threads": _threads(), **scores}
    results.write_text(json.dumps(record))
    return record


def _mean(values) -> float:
    values = [v for v in values if v is not None and v >= 0]  # pycocotools: -1 when a set has no small boxes
    return statistics.fmean(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per run (default: 5)")
    parser.add_argument(
        "--iterations", type=int, default=None,
        help="train for N iterations instead of --minutes: the recipe per iteration, for a machine whose speed varies",
    )  # fmt: skip
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=[v for v in VARIANTS if v != "all"])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per variant (default: 2)")
    parser.add_argument(
        "--seed", type=int, nargs="+", default=None,
        help="train only these of the --seeds seeds (two processes sharing --work, one seed each: every table still reads all runs)",
    )  # fmt: skip
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=float, default=1.0, help=f"scale of the split sizes {SPLITS} (default: 1)")
    parser.add_argument("--work", type=Path, default=Path("runs/recipe_benchmark"), help="data sets and runs (reused when present)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--list", action="store_true", help="print the sets and variants and exit")
    parser.add_argument("--report-only", action="store_true", help="train nothing: the table of the runs already finished")
    args = parser.parse_args(argv)
    if args.list:
        print("sets:", ", ".join(SETS))
        for name, overrides in VARIANTS.items():
            print(f"{name}: {overrides or 'the preset as it is'}")
        return 0
    if "current" not in args.variants:
        args.variants.insert(0, "current")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    length = {"time": args.minutes} if args.iterations is None else {"max_iters": args.iterations}
    budget = f"{args.minutes:g}min" if args.iterations is None else f"{args.iterations}it"
    runs: dict[tuple[str, str], list[dict]] = {}
    data = {name: make_set(name, args.work / "data" / f"{name}_{args.images:g}", args.images) for name in args.sets}
    for seed in range(args.seeds):  # seeds outermost: a benchmark cut short has every set and variant once
        for set_name, (root, classes) in data.items():
            for variant in args.variants:
                out = args.work / "runs" / f"{set_name}_{args.images:g}" / f"{variant}_{budget}_seed{seed}"
                trains = not args.report_only and (args.seed is None or seed in args.seed)
                if not trains and not (out / "bench.json").is_file():
                    continue
                record = run_one(root, classes, out, args.preset, length, seed, VARIANTS[variant])
                runs.setdefault((set_name, variant), []).append(record)
                print(
                    f"{set_name:7s} {variant:12s} seed {seed}: {record['iterations']} iterations, "
                    f"val AP {record['val']['AP']:.3f}, test AP {record['test']['AP']:.3f} AP50 {record['test']['AP50']:.3f} "
                    f"AP75 {record['test']['AP75']:.3f} APs {record['test']['APs']:.3f}",
                    flush=True,
                )
    if not runs:
        print(f"no finished runs under {args.work} for these sets and variants")
        return 0
    print_tables(runs, args)
    return 0


def print_tables(runs: dict[tuple[str, str], list[dict]], args) -> None:
    cpu = _cpu_name()
    per_run = f"{args.minutes:g} min" if args.iterations is None else f"{args.iterations} iterations"
    threads = sorted({r.get("threads") for rs in runs.values() for r in rs} - {None}) or "?"
    print(f"\npreset {args.preset}, {per_run} per run, {args.seeds} seed(s), CPU: {cpu}, torch threads of the runs {threads}")
    stats = ("AP", "AP50", "AP75", "APs")
    sets = list(dict.fromkeys(s for s, _ in runs))
    variants = list(dict.fromkeys(v for _, v in runs))
    header = "| variant | iterations (mean) | training s (mean) | val AP (mean) | " + " | ".join(f"{s} test AP" for s in sets) + " | mean test AP | AP50 | AP75 | AP_small | AP vs current |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base = None
    for variant in variants:
        per_set = {s: runs.get((s, variant), []) for s in sets}
        val = _mean(_mean(r["val"]["AP"] for r in rs) for rs in per_set.values())
        means = {k: _mean(_mean(r["test"][k] for r in rs) for rs in per_set.values()) for k in stats}
        if variant == "current":
            base = means["AP"]
        change = "" if base is None or variant == "current" or not base else f"{100 * (means['AP'] / base - 1):+.1f} %"
        cells = " | ".join(f"{_mean(r['test']['AP'] for r in per_set[s]):.3f}" for s in sets)
        iters = _mean(r["iterations"] for rs in per_set.values() for r in rs)
        seconds = _mean(r.get("training_seconds") for rs in per_set.values() for r in rs)
        print(f"| {variant} | {iters:.0f} | {seconds:.0f} | {val:.3f} | {cells} | {means['AP']:.3f} | {means['AP50']:.3f} | {means['AP75']:.3f} | {means['APs']:.3f} | {change} |")
    chosen = max(variants, key=lambda v: _mean(_mean(r["val"]["AP"] for r in runs.get((s, v), [])) for s in sets))
    print(f"decided on val: {chosen}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
