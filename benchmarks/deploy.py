"""Eager PyTorch vs the exported graph in onnxruntime and OpenVINO, side by side, one table per run.

    python benchmarks/deploy.py                                   # resnet50_fpn, mobilenet_v3_large_fpn at 480x640
    python benchmarks/deploy.py --presets tiny --size 256x256 --repeat 5 --threads 2
    python benchmarks/deploy.py --compile                         # + torch.compile'd backbone (minutes)

Random weights (seeded), one random image, batch 1, median of ``--repeat`` timed runs after one warm-up, the
columns timed in turn (A/B alternating). Columns: eager float32 with the checkpoint's layers ("eager f32"), with
BatchNorm folded ("eager f32 fused"), and what ``Detector`` runs in f32 on the CPU ("Detector f32": folded,
prepacked linear layers, a channels-last backbone, freed memory kept for reuse, which then holds for the
whole process), eager bf16 autocast (fused), the exported ONNX file in onnxruntime, and the OpenVINO IR in
f32 and bf16 (its default on CPUs with bf16 units). torchvision's
model and its export are timed too when a working torchvision is importable. ``--compile`` adds the fused
model with its backbone through ``torch.compile`` (inductor, needs a C++ compiler; "compile s" is the
first call). Never asserts timings.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fasterrcnn  # noqa: E402,F401
import torch  # noqa: E402

from fasterrcnn.deploy.export import export_model  # noqa: E402
from fasterrcnn.detector import Detector  # noqa: E402
from fasterrcnn.modeling.faster_rcnn import FasterRCNN  # noqa: E402
from fasterrcnn.modeling.fuse import fuse_batchnorm  # noqa: E402


def alternating_ms(runs: dict[str, object], repeat: int) -> dict[str, float]:
    """Median ms of each callable, timed in turn (A/B alternating: a machine whose speed drifts slows them alike)."""
    for fn in runs.values():
        fn()  # warm-up (allocations, OpenVINO's first-shape compilation)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def torchvision_available() -> bool:
    try:
        import torchvision.models.detection  # noqa: F401
    except Exception:  # not installed, or built for another torch
        return False
    return True


def time_preset(preset: str, size: tuple[int, int], repeat: int, threads: int, folder: Path, compile: bool = False) -> dict[str, float]:
    import onnxruntime as ort
    import openvino as ov

    torch.manual_seed(0)
    model = FasterRCNN.from_preset(preset).eval()
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    names = [str(i) for i in range(model.num_classes)]
    fused = fuse_batchnorm(copy.deepcopy(model))
    detector = Detector(fuse_batchnorm(copy.deepcopy(model)), names, device="cpu", precision="f32")  # prepacked, channels-last
    row, runs = {}, {}

    def eager(m, dtype=None):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                m([image])

        return run

    runs["eager f32"] = eager(model)
    runs["eager f32 fused"] = eager(fused)
    runs["Detector f32"] = eager(detector.model)
    runs["eager bf16 fused"] = eager(fused, torch.bfloat16)
    if compile:
        compiled = copy.deepcopy(fused)
        compiled.backbone = torch.compile(compiled.backbone)
        start = time.perf_counter()
        eager(compiled)()
        row["compile s"] = time.perf_counter() - start
        runs["eager f32 fused compiled"] = eager(compiled)
    start = time.perf_counter()
    export_model(model, folder / f"{preset}.onnx", names)
    row["export s"] = time.perf_counter() - start
    export_model(model, folder / f"{preset}.xml", names, format="openvino")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / f"{preset}.onnx"), options, providers=["CPUExecutionProvider"])
    array = image.numpy()
    runs["onnxruntime"] = lambda: session.run(None, {"image": array})
    core = ov.Core()
    for precision in ("f32", "bf16"):
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads}
        try:
            compiled_ov = core.compile_model(str(folder / f"{preset}.xml"), "CPU", config)
        except RuntimeError:  # no bf16 on this CPU
            continue
        runs[f"openvino {precision}"] = lambda compiled_ov=compiled_ov: compiled_ov({"image": array})
    if torchvision_available():
        import torchvision

        tv = getattr(torchvision.models.detection, f"fasterrcnn_{preset}")(weights=None, weights_backbone=None).eval()
        runs["torchvision eager"] = eager(tv)
    return {**alternating_ms(runs, repeat), **row}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["resnet50_fpn", "mobilenet_v3_large_fpn"])
    parser.add_argument("--size", default="480x640", help="HxW of the image")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the backbone")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            rows[preset] = time_preset(preset, size, args.repeat, args.threads, Path(tmp), args.compile)
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))
    print(f"# {args.size}, batch 1, {args.threads} threads, median of {args.repeat} (ms; export and compile in s)")
    print("| preset | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for preset, row in rows.items():
        print(f"| {preset} | " + " | ".join(f"{row[c]:.0f}" if c in row else "-" for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
