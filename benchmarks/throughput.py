"""``predict`` on a folder of photos: images per second, one image at a time vs decoded ahead vs batched.

    python benchmarks/throughput.py                                  # mobilenet_v3_large_320_fpn, random weights
    python benchmarks/throughput.py --weights best.pt --rounds 40    # a checkpoint, more rounds
    python benchmarks/throughput.py --threads 1                      # torch on one thread (a loaded machine)

Writes ``--images`` photo-like JPEGs (quality 90: gradients, shapes and noise, so that decoding costs what a
photo's does) into a temporary folder, 1280x960 and every ``--big-every``-th one 4032x3024, and runs
``fasterrcnn.runs.predict`` on the folder with an output folder (pictures drawn and written, JSON Lines), as:

- one at a time: the old loop, each image read, then detected, then written, in turn (``read_ahead``
  replaced by a plain generator: no background thread);
- decode ahead: the images decoded in a background thread ahead of the model (``predict``'s default);
- decode ahead + batch N: up to N consecutive images of one size in one forward pass (``batch_size=N``).

The variants alternate in rounds: the folder is cut into parts of ``--part`` photos (subfolders), and each
round runs every variant, in a rotated order, on the next part, so that the load of other work on the machine
weighs on all of them alike within seconds. The table gives, over the rounds, the median images per second and
milliseconds per image (wall time / images), the images per second of all rounds together, and the median of
each round's ratio to the old loop (paired: the steadiest measure on a loaded machine). Before the rounds, the
stages of one image at a time are timed on ``--stage-images`` images (decode, model, draw + write), so that the
share the model leaves to overlap is known. Prints the CPU, its vector extensions, torch's threads and the
load average before and after. Never asserts anything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

SMALL, BIG = (1280, 960), (4032, 3024)  # (width, height)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile")


def write_photo(path: Path, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A JPEG (quality 90) of ``size`` (width, height): a two-colour gradient, a dozen filled shapes and
    Gaussian noise (sigma 12), so that its DCT blocks carry detail as a photo's do."""
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    ground = (top * (1 - ramp) + bottom * ramp).astype(np.float32)
    image = Image.fromarray(np.broadcast_to(ground, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 20, width // 4)), int(rng.integers(height // 20, height // 4))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 12.0, (height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)


def write_photos(folder: Path, count: int, big_every: int, part: int) -> list[Path]:
    """``count`` photos in subfolders of ``part`` photos each under ``folder`` (every ``big_every``-th one
    4032x3024); the subfolders."""
    rng = np.random.default_rng(0)
    parts = []
    for index in range(count):
        if index % part == 0:
            parts.append(folder / f"part{len(parts):02d}")
            parts[-1].mkdir()
        big = big_every > 0 and index % big_every == big_every - 1
        write_photo(parts[-1] / f"{index:03d}.jpg", BIG if big else SMALL, rng)
    return parts


def cpu_description() -> str:
    """The CPU's model name, cores and which of ``FLAGS`` it has (Linux's /proc/cpuinfo)."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in FLAGS if flag in flags]
    absent = [flag for flag in FLAGS if flag not in flags]
    return f"{name}, {os.cpu_count()} cores; has {' '.join(present) or '-'}; lacks {' '.join(absent) or '-'}"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def inline(items, ahead):
    """``prediction.read_ahead`` without its thread: each item read when asked for (the one-at-a-time loop)."""
    yield from items


def stage_times(detector, photos: list[Path], folder: Path) -> dict[str, float]:
    """Median milliseconds of the stages of one image at a time on ``photos``: decode, model, draw + write."""
    from fasterrcnn.inference import InferenceOptions
    from fasterrcnn.io import atomic_save
    from fasterrcnn.runs.prediction import _detect, _picture

    times: dict[str, list[float]] = {"decode": [], "model": [], "draw + write": []}
    for path in photos:
        start = time.perf_counter()
        image, size = detector.load(path)
        decoded = time.perf_counter()
        [(detection, _)] = _detect(detector, [image], [size], 0.5, InferenceOptions())
        detected = time.perf_counter()
        picture = _picture(image, detection, detector.class_names)
        atomic_save(folder / path.name, lambda f: picture.save(f, format="JPEG", quality=92))
        written = time.perf_counter()
        for stage, seconds in zip(times, (decoded - start, detected - decoded, written - detected)):
            times[stage].append(seconds)
    return {stage: 1000 * statistics.median(values) for stage, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a checkpoint (default: --preset with random weights)")
    parser.add_argument("--preset", default="mobilenet_v3_large_320_fpn", help="the model without --weights (default: %(default)s)")
    parser.add_argument("--images", type=int, default=100, help="photos in the folder (default: %(default)s)")
    parser.add_argument("--big-every", type=int, default=10, help="every N-th photo is 4032x3024, 0 for none (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4], help="batch sizes besides 1 (default: 2 4)")
    parser.add_argument("--part", type=int, default=10, help="photos per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds of every variant, each on the next part of the folder (default: %(default)s)")
    parser.add_argument("--stage-images", type=int, default=20, help="images whose stages are timed (default: %(default)s)")
    parser.add_argument("--precision", default="f32", help="the model's precision (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: as they are); on a loaded machine 1 avoids waiting on busy cores")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from fasterrcnn.detector import Detector
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN
    from fasterrcnn.runs import prediction

    if args.weights:
        detector = Detector.from_checkpoint(args.weights, device="cpu", precision=args.precision)
        model_name = args.weights
    else:
        torch.manual_seed(0)
        model = FasterRCNN.from_preset(args.preset).eval()
        detector = Detector(model, [f"class{i}" for i in range(1, model.config.num_classes + 1)], device="cpu", precision=args.precision)
        model_name = f"{args.preset} (random weights)"
    print(f"CPU: {cpu_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load average {load_average()}")
    transform = detector.model.transform
    print(f"model: {model_name}, {detector.precision}, input {transform.min_size}/{transform.max_size}")

    with tempfile.TemporaryDirectory() as temporary:
        photos, out = Path(temporary) / "photos", Path(temporary) / "out"
        photos.mkdir()
        started = time.perf_counter()
        parts = write_photos(photos, args.images, args.big_every, args.part)
        big = args.images // args.big_every if args.big_every > 0 else 0
        print(f"{args.images} JPEGs (quality 90; {args.images - big} of 1280x960, {big} of 4032x3024) written in {time.perf_counter() - started:.1f} s")
        files = sorted(photos.rglob("*.jpg"))
        out.mkdir()
        stages = stage_times(detector, files[: args.stage_images], out)
        print("one image at a time, median ms: " + ", ".join(f"{stage} {ms:.1f}" for stage, ms in stages.items()))

        variants = {"one at a time (old loop)": (1, True), "decode ahead": (1, False)}
        variants.update({f"decode ahead + batch {n}": (n, False) for n in args.batch_sizes})

        def run(folder: Path, batch_size: int, old_loop: bool) -> float:
            real = prediction.read_ahead
            prediction.read_ahead = inline if old_loop else real
            try:
                start = time.perf_counter()
                prediction.predict(detector, [folder], output=out, overwrite=True, quiet=True, batch_size=batch_size)
                return time.perf_counter() - start
            finally:
                prediction.read_ahead = real

        run(parts[0], 1, False)  # warm-up: the allocator, the anchors' cache, the page cache of the photos
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        images: list[int] = []
        names = list(variants)
        for round_index in range(args.rounds):
            part = parts[round_index % len(parts)]
            images.append(sum(1 for _ in part.iterdir()))
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                seconds[name].append(run(part, *variants[name]))

    print(f"\n{args.rounds} rounds of {args.part} photos, load average after {load_average()}\n")
    print("| variant | images/s (median) | ms per image (median) | images/s, all rounds | vs old loop (median ratio) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    old = seconds[names[0]]
    for name, times in seconds.items():
        rates = [n / t for n, t in zip(images, times)]
        ratio = statistics.median(o / t for o, t in zip(old, times))
        per_image = statistics.median(1000 * t / n for n, t in zip(images, times))
        print(f"| {name} | {statistics.median(rates):.2f} | {per_image:.1f} | {sum(images) / sum(times):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
