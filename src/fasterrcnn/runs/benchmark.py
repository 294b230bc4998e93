"""``benchmark``: one checkpoint through every inference path on this machine, side by side (``fasterrcnn benchmark``).

    from fasterrcnn.runs import benchmark
    rows = benchmark("runs/x/checkpoints/best.pt", "VOCdevkit/VOC2007", output="benchmark.csv")
    print(benchmark_table(rows))

One row per path (``PATHS``): eager PyTorch in f32 and bf16 autocast (BatchNorm folded, what ``Detector``
runs), the exported ONNX file in onnxruntime, the OpenVINO IR in f32 and bf16, and an int8 OpenVINO file
(``int8=``, written by ``fasterrcnn export --int8``). Each path that can run here evaluates the whole split
(``mAP``, the metric of ``evaluate``) one image at a time on the CPU; ``median ms`` is the median time of the
model's call per image (decoding excluded) over those images but the first (its warm-up: allocations,
OpenVINO's first compilation), ``images/s`` its inverse. ``file MiB`` and ``export s`` are the exported file's
size and the time its export took (the ONNX export, plus its conversion for OpenVINO). A path that cannot run
says why in ``why``: a runtime not installed, no bf16 instructions on this CPU (bf16 is emulated there, slower
than f32), no int8 file given. Timings depend on the machine and its load; compare rows of one run.
"""

from __future__ import annotations

import csv
import io
import logging
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fasterrcnn.errors import ConfigError

__all__ = ["PATHS", "BenchmarkRow", "benchmark", "benchmark_table"]

logger = logging.getLogger("fasterrcnn")

PATHS = ("eager f32", "eager bf16", "onnxruntime f32", "openvino f32", "openvino bf16", "openvino int8")


@dataclass(frozen=True)
class BenchmarkRow:
    """One inference path: ``available`` here (else ``why`` not, and the numbers are None), its ``mAP`` (or
    COCO ``AP``) on the split, ``median_ms`` per image, ``images_per_s``, ``file_mib`` and ``export_s`` of its
    exported file (None for eager)."""

    path: str
    available: bool
    why: str = ""
    map: float | None = None
    median_ms: float | None = None
    images_per_s: float | None = None
    file_mib: float | None = None
    export_s: float | None = None


class _Timed(torch.nn.Module):
    """``model`` whose every call is timed (seconds in ``times``), so the evaluation pass also measures the speed."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.times: list[float] = []

    def forward(self, images):
        start = time.perf_counter()
        out = self.model(images)
        self.times.append(time.perf_counter() - start)
        return out


def _missing(module: str) -> str:
    """Why a runtime's paths cannot run ("" when ``module`` imports)."""
    try:
        __import__(module)
    except ImportError:
        return f"{module} is not installed (pip install 'fasterrcnn[deploy]')"
    return ""


def benchmark(
    weights: str | Path,
    data: str | Path,
    *,
    output: str | Path | None = None,
    overwrite: bool = False,
    split: str = "test",
    images: str | Path | None = None,
    metric: str | None = None,
    int8: str | Path | None = None,
    paths: tuple[str, ...] = PATHS,
    threads: int | None = None,
    on_bad_image: str = "skip",
    quiet: bool = False,
) -> list[BenchmarkRow]:
    """The rows of ``paths`` for the checkpoint ``weights`` on ``data``'s ``split`` (see the module docstring);
    with ``output``, written there as CSV (atomically; an existing file only with ``overwrite``). ``int8``: an
    OpenVINO file written by ``fasterrcnn export --int8`` of this checkpoint. ``threads``: torch's and the
    runtimes' CPU threads (default: as they are)."""
    from fasterrcnn.data import build_dataset
    from fasterrcnn.deploy.export import export_model, onnx_to_openvino
    from fasterrcnn.deploy.runtime import load_exported
    from fasterrcnn.detector import Detector
    from fasterrcnn.device import bf16_support
    from fasterrcnn.engine.evaluator import evaluate_model, headline
    from fasterrcnn.io import atomic_write_text
    from fasterrcnn.paths import check_output_file

    unknown = [path for path in paths if path not in PATHS]
    if unknown:
        raise ConfigError(f"unknown benchmark path(s) {', '.join(map(repr, unknown))}; choose from {', '.join(PATHS)}")
    if output is not None:  # before the work: never the checkpoint benchmarked, never a folder
        output = Path(output)
        check_output_file(output, overwrite=overwrite, inputs=[weights])
    if int8 is not None and not Path(int8).is_file():
        raise ConfigError(f"--int8 {int8}: no such file (write one with 'fasterrcnn export --int8')")
    if threads:
        torch.set_num_threads(threads)
    eager = Detector.from_checkpoint(weights, device="cpu", precision="f32")  # Checkpoint errors name the file
    transform = eager.model.transform
    dataset = build_dataset(
        data, split=split, images_dir=images, classes=list(eager.class_names), on_bad_image=on_bad_image, reduce_to=(transform.min_size, transform.max_size)
    )  # fmt: skip
    metric = metric or dataset.default_metric
    bf16, bf16_why = bf16_support(torch.device("cpu"))
    rows: list[BenchmarkRow] = []

    def exported(file: Path, precision: str) -> Detector:
        model = load_exported(file, threads=threads, precision=precision)
        return Detector(model, model.class_names, device="cpu")

    def measure(path: str, detector: Detector, file: Path | None = None, export_s: float | None = None) -> None:
        timed = _Timed(detector.model)
        _, metrics = evaluate_model(
            timed, dataset, metric=metric, class_names=detector.class_names, label_to_category_id=dataset.label_to_category_id,
            device="cpu", amp_dtype=detector.amp_dtype, shard=False,
        )  # fmt: skip
        seconds = statistics.median(timed.times[1:] or timed.times)
        size = None if file is None else sum(p.stat().st_size for p in (file, file.with_suffix(".bin")) if p.exists()) / 2**20
        rows.append(BenchmarkRow(path, True, "", headline(metrics)[1], 1000 * seconds, 1 / seconds, size, export_s))
        if not quiet:
            print(f"{path}: {headline(metrics)[0]} {rows[-1].map:.4f}, {rows[-1].median_ms:.1f} ms per image", flush=True)

    with tempfile.TemporaryDirectory(prefix="fasterrcnn-benchmark-") as tmp:
        onnx_file, export_s = None, None
        for path in paths:
            why = ""
            if path.endswith("bf16") and not bf16:
                why = bf16_why
            elif path.startswith("onnxruntime") or path in ("openvino f32", "openvino bf16"):
                why = _missing(path.split()[0]) or _missing("onnx")
            elif path == "openvino int8":
                why = "no int8 file given (write one with 'fasterrcnn export --int8', pass it with --int8)" if int8 is None else _missing("openvino")
            if why:
                rows.append(BenchmarkRow(path, False, why))
                continue
            if path.startswith("eager"):
                measure(path, eager if path == "eager f32" else Detector(eager.model, eager.class_names, device="cpu", precision="bf16"))
                continue
            if path == "openvino int8":
                measure(path, exported(Path(int8), "int8"), Path(int8))
                continue
            if onnx_file is None:
                onnx_file = Path(tmp) / "model.onnx"
                start = time.perf_counter()
                export_model(eager.model, onnx_file, eager.class_names)
                export_s = time.perf_counter() - start
            if path.startswith("onnxruntime"):
                measure(path, exported(onnx_file, "f32"), onnx_file, export_s)
                continue
            xml = Path(tmp) / "model.xml"
            if not xml.exists():
                start = time.perf_counter()
                onnx_to_openvino(onnx_file, xml)
                convert_s = time.perf_counter() - start
            measure(path, exported(xml, path.split()[1]), xml, export_s + convert_s)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, _csv(rows))
    return rows


def _csv(rows: list[BenchmarkRow]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(asdict(rows[0]) if rows else BenchmarkRow.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else round(value, 6) if isinstance(value, float) else value for key, value in asdict(row).items()})
    return text.getvalue()


def benchmark_table(rows: list[BenchmarkRow]) -> str:
    """The rows as an aligned text table (one line per path; a path that cannot run says why)."""
    header = ["path", "mAP", "median ms", "images/s", "file MiB", "export s", "available"]
    lines = [header]
    fmt = lambda value, spec: "-" if value is None else format(value, spec)  # noqa: E731
    for row in rows:
        lines.append([
            row.path, fmt(row.map, ".4f"), fmt(row.median_ms, ".1f"), fmt(row.images_per_s, ".2f"), fmt(row.file_mib, ".1f"),
            fmt(row.export_s, ".1f"), "yes" if row.available else f"no: {row.why}",
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1] for line in lines)
