"""Peak memory of inference on a huge photo (8000x6000) against an ordinary one (1000x600).

    python benchmarks/memory.py                                  # tiny and resnet50_fpn, random weights
    python benchmarks/memory.py --presets vgg16 --sizes 8000x6000,1000x600 --threads 2

Every case runs in a fresh Python process, which reports its peak resident memory
(``resource.getrusage(...).ru_maxrss``: torch's CPU tensors are plain heap memory that tracemalloc
does not see) once after building the model ("base") and once after one inference ("peak"). Cases:

- ``detect(path)``: ``Detector.detect`` on the JPEG file: an image at least twice the model's input
  is decoded at 1/2, 1/4 ... of its size (``data.images.reduction_factor``), before any float copy;
- ``full decode``: ``load_image(path)`` at full size, then the model (what a caller that decodes the
  image itself gets: the transform resizes it before the backbone, from a full-size float tensor).

Prints a table; never asserts anything. The images are generated (a gradient with a few shapes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

MODES = ("detect(path)", "full decode")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(preset: str, image_path: str, mode: str, threads: int | None) -> dict:
    """One case, in this (fresh) process."""
    import fasterrcnn  # noqa: F401  (before torch, as the fasterrcnn command)
    import torch

    from fasterrcnn.data.images import load_image
    from fasterrcnn.detector import Detector
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = FasterRCNN.from_preset(preset, num_classes=20)
    detector = Detector(model, [f"class{i}" for i in range(1, 21)], device="cpu")
    base = _peak_mb()
    start = time.perf_counter()
    if mode == "detect(path)":
        detector.detect(image_path, score_threshold=0.0)
    else:
        image = load_image(image_path)
        with torch.inference_mode():
            model([image])
    seconds = time.perf_counter() - start
    return {"base": base, "peak": _peak_mb(), "seconds": seconds}


def write_photo(path: Path, width: int, height: int) -> None:
    from PIL import Image, ImageDraw

    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for i in range(6):
        x, y = width * (i + 1) // 8, height * ((i * 3) % 7 + 1) // 9
        draw.ellipse((x - width // 20, y - height // 20, x + width // 20, y + height // 20), fill=(40 * i, 200 - 30 * i, 90))
    image.save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,resnet50_fpn", help="comma-separated preset names")
    parser.add_argument("--sizes", default="1000x600,8000x6000", help="comma-separated WIDTHxHEIGHT; the first is the reference")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each case (default: torch's)")
    parser.add_argument("--child", nargs=3, metavar=("PRESET", "IMAGE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.threads)))
        return

    sizes = [tuple(int(v) for v in text.split("x")) for text in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        images = {}
        for width, height in sizes:
            images[(width, height)] = Path(folder) / f"photo_{width}x{height}.jpg"
            write_photo(images[(width, height)], width, height)
        rows = []
        for preset in args.presets.split(","):
            for mode in MODES:
                reference = None
                for (width, height), path in images.items():
                    command = [sys.executable, __file__, "--child", preset, str(path), mode]
                    if args.threads:
                        command += ["--threads", str(args.threads)]
                    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
                    if result.returncode != 0:
                        sys.exit(f"{preset} {mode} {width}x{height} failed:\n{result.stderr}")
                    case = json.loads(result.stdout.strip().splitlines()[-1])
                    reference = reference or case
                    rows.append((preset, mode, f"{width}x{height}", case, case["peak"] / reference["peak"]))

    header = f"{'preset':<14} {'path':<13} {'image':>10} {'base MB':>8} {'peak MB':>8} {'+infer MB':>9} {'peak / first size':>17} {'s':>6}"
    print(header)
    print("-" * len(header))
    for preset, mode, size, case, ratio in rows:
        extra = case["peak"] - case["base"]
        print(f"{preset:<14} {mode:<13} {size:>10} {case['base']:8.0f} {case['peak']:8.0f} {extra:9.0f} {ratio:17.2f} {case['seconds']:6.2f}")


if __name__ == "__main__":
    main()
