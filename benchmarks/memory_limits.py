"""Peak memory on hostile or odd inputs: ``fasterrcnn serve`` under concurrent huge-PNG uploads, and
``fasterrcnn eval`` on a small VOC set with and without one huge PNG.

    python benchmarks/memory_limits.py                  # preset tiny, random weights, 6 uploads
    python benchmarks/memory_limits.py --preset resnet50_fpn --uploads 6 --side 12000

The huge image is a valid RGB PNG of side x side pixels that compresses to a few hundred KB
(written row by row, never held in memory here).

- serve: ``fasterrcnn serve`` in a subprocess on 127.0.0.1; ``--uploads`` clients post the PNG at
  once. Each must be refused (413: over the 40-megapixel limit) from its header; printed: each
  answer's status and seconds, the server's resident memory before the uploads (VmRSS) and its peak
  (VmHWM from /proc, which counts everything since the server started).
- eval: ``fasterrcnn eval`` in a subprocess on a synthetic VOC test split of 8 photos, then on the
  same split plus the huge PNG (one box). Peak resident memory of each run
  (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a launcher whose only child is the command).

Prints tables; never asserts anything. Goals (from the issue): serve's peak under 1.2 GB with 6
uploads, each refused in under 0.5 s; eval's peak with the huge image within 1.5x of without.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
CLI = [sys.executable, "-m", "fasterrcnn"]


def write_huge_png(path: Path, side: int) -> None:
    """An RGB PNG of ``side`` x ``side`` pixels (black, a grey band every 1000 rows), streamed to disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    black, grey = bytes(1 + 3 * side), b"\x00" + b"\x80" * (3 * side)  # filter byte 0 + the row's RGB
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)))
        for y in range(side):
            data = compressor.compress(grey if y % 1000 < 10 else black)
            if data:
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", compressor.flush()) + chunk(b"IEND", b""))


def write_checkpoint(path: Path, preset: str, classes: list[str]) -> None:
    import torch

    from fasterrcnn.config import get_preset, to_dict
    from fasterrcnn.engine.checkpoint import save_checkpoint
    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    torch.manual_seed(0)
    model = FasterRCNN.from_preset(preset, num_classes=len(classes))
    config = {"preset": preset, "model": to_dict(model.config), "train": to_dict(get_preset(preset).train)}
    save_checkpoint(path, {"model": model.state_dict(), "config": config, "class_names": classes})


def proc_status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_file(port: int, path: Path, results: list, index: int) -> None:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("POST", "/detect", body=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = conn.getresponse()
    answer = response.read()
    results[index] = (response.status, time.perf_counter() - start, json.loads(answer).get("error", "")[:60])
    conn.close()


def bench_serve(checkpoint: Path, png: Path, uploads: int) -> None:
    port = free_port()
    server = subprocess.Popen([*CLI, "serve", "--weights", str(checkpoint), "--port", str(port), "--device", "cpu"],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
        base = proc_status_kb(server.pid, "VmRSS") / 1024
        results: list = [None] * uploads
        threads = [threading.Thread(target=post_file, args=(port, png, results, i)) for i in range(uploads)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        peak = proc_status_kb(server.pid, "VmHWM") / 1024
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"serve: {uploads} concurrent uploads of {png.name} ({png.stat().st_size / 1024:.0f} KB), all answered in {wall:.2f} s")
    print(f"{'upload':>6} {'status':>6} {'s':>6}  answer")
    for i, (status, seconds, error) in enumerate(results):
        print(f"{i:>6} {status:>6} {seconds:6.3f}  {error}")
    print(f"server resident memory: {base:.0f} MB before the uploads, peak {peak:.0f} MB (goal: under 1200 MB)\n")


def write_eval_sets(folder: Path, png: Path, side: int) -> tuple[Path, Path]:
    """Two VOC roots: 8 synthetic 640x480 photos, and the same plus the huge PNG (one box)."""
    import shutil

    from fasterrcnn.data import write_synthetic_voc

    plain = write_synthetic_voc(folder / "plain", num_train=1, num_test=8, image_size=(480, 640), seed=0)
    with_huge = folder / "with_huge"
    shutil.copytree(plain, with_huge)
    shutil.copy(png, with_huge / "JPEGImages" / "huge.png")
    box = f"<xmin>{side // 4}</xmin><ymin>{side // 4}</ymin><xmax>{side // 2}</xmax><ymax>{side // 2}</ymax>"
    (with_huge / "Annotations" / "huge.xml").write_text(
        f"<annotation><filename>huge.png</filename><size><width>{side}</width><height>{side}</height></size>"
        f"<object><name>circle</name><bndbox>{box}</bndbox></object></annotation>"
    )
    split = with_huge / "ImageSets" / "Main" / "test.txt"
    split.write_text(split.read_text() + "huge\n")
    return plain, with_huge


def peak_of(command: list[str]) -> tuple[float, float, int]:
    """(peak resident MB, seconds, exit status) of ``command`` run as the only child of a launcher."""
    launcher = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t, rc)"
    )
    out = subprocess.run([sys.executable, "-c", launcher, *command], capture_output=True, text=True, env=ENV, check=True).stdout
    kb, seconds, rc = out.split()
    return int(kb) / 1024, float(seconds), int(rc)


def bench_eval(checkpoint: Path, folder: Path, png: Path, side: int) -> None:
    plain, with_huge = write_eval_sets(folder, png, side)
    rows = []
    for name, root in (("8 photos 640x480", plain), (f"+ one {side}x{side} PNG", with_huge)):
        command = [*CLI, "eval", "--weights", str(checkpoint), "--data", str(root), "--split", "test", "--device", "cpu",
                   "--output", str(folder / f"eval_{root.name}")]  # fmt: skip
        rows.append((name, *peak_of(command)))
    print(f"eval: {'set':<24} {'peak MB':>8} {'s':>6} {'exit':>4}")
    for name, peak, seconds, rc in rows:
        print(f"      {name:<24} {peak:8.0f} {seconds:6.1f} {rc:>4}")
    print(f"      ratio {rows[1][1] / rows[0][1]:.2f} (goal: within 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset of the checkpoint (random weights)")
    parser.add_argument("--side", type=int, default=12000, help="side of the huge square PNG in pixels")
    parser.add_argument("--uploads", type=int, default=6, help="concurrent uploads to serve")
    args = parser.parse_args()
    from fasterrcnn.data import SYNTHETIC_CLASSES

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        png = folder / f"huge_{args.side}.png"
        write_huge_png(png, args.side)
        checkpoint = folder / "model.pt"
        write_checkpoint(checkpoint, args.preset, list(SYNTHETIC_CLASSES))
        bench_serve(checkpoint, png, args.uploads)
        bench_eval(checkpoint, folder, png, args.side)


if __name__ == "__main__":
    main()
