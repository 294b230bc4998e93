"""Peak memory of ``fasterrcnn predict --slice 640`` on a 12000 x 12000 JPEG (goal: under 1.5 GB).

    python benchmarks/slicing_memory.py                          # tiny preset, random weights
    python benchmarks/slicing_memory.py --weights runs/x/checkpoints/best.pt --size 12000 --slice 640

The command runs in a fresh process (``python -m fasterrcnn predict ...``); its peak resident memory is
read from the kernel when it ends (``os.wait4``'s ``ru_maxrss``: torch's CPU tensors are heap memory
that tracemalloc does not see). For reference the same image is predicted without ``--slice`` (decoded
at 1/32 of its size). The image is generated (a gradient with small squares) and written once.
Prints a table; never asserts anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def write_image(path: Path, side: int) -> None:
    """A ``side`` x ``side`` JPEG: a gradient with a 16 px square every 500 px (written row strip by strip)."""
    import numpy as np
    from PIL import Image

    image = Image.new("RGB", (side, side))
    for top in range(0, side, 1000):
        rows = min(1000, side - top)
        ys = np.arange(top, top + rows)[:, None, None]
        xs = np.arange(side)[None, :, None]
        strip = ((xs * 0.01 + ys * 0.005) % 200 + 20 + np.zeros((1, 1, 3))).astype(np.uint8)
        strip[(ys[:, :, 0] % 500 < 16)[:, :, None].repeat(side, 1).repeat(3, 2) & (xs[:, :, 0] % 500 < 16)[:, :, None].repeat(rows, 0).repeat(3, 2)] = 250
        image.paste(Image.fromarray(strip), (0, top))
    image.save(path, quality=90)


def write_weights(path: Path) -> None:
    """The tiny preset with random weights, as a checkpoint."""
    import torch

    from fasterrcnn.config import get_preset, to_dict
    from fasterrcnn.data.synthetic import SYNTHETIC_CLASSES
    from fasterrcnn.engine.checkpoint import save_checkpoint
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN.from_preset("tiny", num_classes=len(SYNTHETIC_CLASSES))
    config = {"preset": "tiny", "model": to_dict(model.config), "train": to_dict(get_preset("tiny").train)}
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "class_names": list(SYNTHETIC_CLASSES)})


def peak_of(command: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, exit status) of ``command`` run to its end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    error = process.stderr.read().decode()
    if status:
        print(error, file=sys.stderr)
    return usage.ru_maxrss / 1024.0, seconds, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a checkpoint (default: the tiny preset with random weights)")
    parser.add_argument("--size", type=int, default=12000, help="side of the square test image (default: 12000)")
    parser.add_argument("--slice", type=int, default=640, help="tile size (default: 640)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        image = folder / f"big_{args.size}.jpg"
        write_image(image, args.size)
        weights = args.weights
        if weights is None:
            weights = folder / "tiny.pt"
            write_weights(weights)
        print(f"{image.name}: {args.size}x{args.size}, {image.stat().st_size / 1e6:.1f} MB JPEG; uint8 in memory: {3 * args.size**2 / 1e6:.0f} MB")
        print(f"{'command':<40} {'peak RSS MB':>12} {'seconds':>8} {'exit':>5}")
        base = [sys.executable, "-m", "fasterrcnn", "predict", str(image), "--weights", str(weights), "--quiet", "--device", args.device]
        for name, extra in ((f"predict --slice {args.slice}", ["--slice", str(args.slice)]), ("predict (decoded reduced)", [])):
            peak, seconds, code = peak_of([*base, "--output", str(folder / name.replace(" ", "_")), *extra])
            print(f"{name:<40} {peak:>12.0f} {seconds:>8.1f} {code:>5}", flush=True)


if __name__ == "__main__":
    main()
