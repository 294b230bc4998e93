"""Where inference time goes, stage by stage: eager PyTorch (f32, bf16) against OpenVINO (f32, bf16).

    python benchmarks/stages.py                                     # mobilenet_v3_large_fpn at 480x640
    python benchmarks/stages.py --presets resnet50_fpn tiny --size 480x640 --repeat 5 --threads 2
    python benchmarks/stages.py --variants eager,channels_last,frozen   # eager variants, A/B alternating
    python benchmarks/stages.py --presets resnet50_fpn mobilenet_v3_large_fpn --threads 1 --variants "eager,prepacked,openvino f32"

Random weights (seeded), one random image, batch 1, BatchNorm folded (what ``Detector`` runs), freed memory
kept for reuse (``device.keep_freed_memory``, as ``Detector`` does on the CPU). Each repeat
runs every column once, in turn (A/B alternating in one process, so a loaded machine slows them alike); the
table holds the medians in ms. Stages:

    backbone        the backbone's body (ResNet / MobileNet / VGG / tiny stages)
    FPN             the feature pyramid (FPN presets)
    RPN head        the 3x3 conv and the objectness / delta convs
    proposals       anchors, decoding, top-k, NMS (the RPN minus its head)
    RoI pooling     RoIAlign / RoIPool of the proposals
    box head        fc6 / fc7 (or res5) and the predictor
    post-processing softmax, decoding, per-class NMS, resizing back (the rest: transform included)

Eager stages are timed by forward hooks; OpenVINO's by its per-node performance counters (``PERF_COUNT``),
each node given to the stage its traced name belongs to (``/backbone/body/...``, ``/backbone/fpn/...``,
``/head/...``, ``/box_head/...``, ``/box_predictor/...``; RoiAlign / MaxRoiPool nodes to RoI pooling; the
others to proposals and post-processing, which OpenVINO does not tell apart). Variants (``--variants``) of
the eager f32 model (``eager``: BatchNorm folded, plain ``nn.Linear``, NCHW): ``prepacked`` (the linear layers
as ``modeling.prepack.PackedLinear`` and the backbone channels-last: what ``Detector`` runs in f32 on the CPU by
default), ``channels_last`` (the backbone's weights and input in channels-last memory order alone), ``frozen`` (the backbone through
``modeling.prepack.FrozenBackbone``: traced, ``torch.jit.freeze`` + ``optimize_for_inference``, oneDNN weight
prepacking and conv fusion, traced in the warm-up run), ``prepacked+frozen`` (both: what
``Detector(freeze_backbone=True)`` runs); ``openvino int8`` is ``export --int8``'s graph (the backbone quantized,
calibrated here on random images: its speed, not its accuracy). Never asserts timings.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import fasterrcnn  # noqa: E402,F401
import torch  # noqa: E402

from fasterrcnn.deploy.export import export_model  # noqa: E402
from fasterrcnn.device import keep_freed_memory  # noqa: E402
from fasterrcnn.modeling.faster_rcnn import FasterRCNN  # noqa: E402
from fasterrcnn.modeling.fuse import fuse_batchnorm  # noqa: E402
from fasterrcnn.modeling.prepack import FrozenBackbone, prepack_linear  # noqa: E402

STAGES = ("backbone", "FPN", "RPN head", "proposals", "RoI pooling", "box head", "post-processing")
HOOKED = {  # module path -> stage (eager)
    "backbone.body": "backbone", "backbone.fpn": "FPN", "rpn.head": "RPN head", "rpn": "rpn",
    "roi_heads.box_roi_pool": "RoI pooling", "roi_heads.box_head": "box head", "roi_heads.box_predictor": "box predictor",
}  # fmt: skip


def eager_stages(model: FasterRCNN, image: torch.Tensor, dtype: torch.dtype | None) -> dict[str, float]:
    """ms per stage of one forward pass (hooks around the stage modules)."""
    spans: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    handles = []
    modules = dict(model.named_modules())
    hooked = dict(HOOKED)
    if "backbone.body" not in modules:  # no FPN: the whole backbone is the body
        hooked["backbone"] = "backbone"
    for name, stage in hooked.items():
        if name in modules:
            handles.append(modules[name].register_forward_pre_hook(lambda m, a, stage=stage: starts.__setitem__(stage, time.perf_counter())))
            handles.append(modules[name].register_forward_hook(lambda m, a, o, stage=stage: spans.__setitem__(stage, spans[stage] + time.perf_counter() - starts[stage])))
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            start = time.perf_counter()
            model([image])
            total = time.perf_counter() - start
    finally:
        for handle in handles:
            handle.remove()
    out = {stage: 1000 * spans.get(stage, 0.0) for stage in ("backbone", "FPN", "RPN head", "RoI pooling")}
    out["proposals"] = 1000 * (spans["rpn"] - spans["RPN head"])
    out["box head"] = 1000 * (spans["box head"] + spans["box predictor"])
    out["post-processing"] = 1000 * total - sum(out.values())
    out["total"] = 1000 * total
    return out


def openvino_stage(name: str, kind: str) -> str:
    if name.startswith("/backbone/fpn"):
        return "FPN"
    if name.startswith("/backbone"):
        return "backbone"
    if name.startswith("/head/"):
        return "RPN head"
    if kind in ("ROIAlign", "ROIPooling") or "RoiAlign" in name or "MaxRoiPool" in name:
        return "RoI pooling"
    if name.startswith(("/box_head", "/box_predictor")):
        return "box head"
    return "proposals + post-processing"


def openvino_stages(request, image) -> dict[str, float]:
    start = time.perf_counter()
    request.infer({"image": image})
    total = time.perf_counter() - start
    out: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        out[openvino_stage(info.node_name, info.node_type)] += info.real_time.total_seconds() * 1000
    out["total"] = 1000 * total
    return out


def frozen(model: FasterRCNN, prepacked: bool) -> FasterRCNN:
    """The backbone through ``modeling.prepack.FrozenBackbone`` (traced, frozen and optimized for inference on its
    first input size; the warm-up call traces it); with ``prepacked``, the linear layers too (``Detector(freeze_backbone=True)``)."""
    model = copy.deepcopy(model)
    model.backbone = Hookable(FrozenBackbone(model.backbone))
    return prepack_linear(model) if prepacked else model


class Hookable(torch.nn.Module):
    """A FrozenBackbone inside a plain module (hooks time it; the backbone and its FPN then count as "backbone")."""

    def __init__(self, frozen: FrozenBackbone):
        super().__init__()
        self.frozen = frozen

    def forward(self, x):
        return self.frozen(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["mobilenet_v3_large_fpn"])
    parser.add_argument("--size", default="480x640", help="HxW of the image")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--variants", default="eager,eager bf16,openvino f32,openvino bf16",
        help="columns, comma-separated: eager, eager bf16, prepacked, channels_last, frozen, prepacked+frozen, openvino f32, openvino bf16, openvino int8",
    )  # fmt: skip
    parser.add_argument("--calibration", type=int, default=8, help="random images that calibrate the int8 variant (needs NNCF)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as Detector does on the CPU
    size = tuple(int(v) for v in args.size.split("x"))
    variants = [v.strip() for v in args.variants.split(",")]
    import openvino as ov

    for preset in args.presets:
        torch.manual_seed(0)
        model = fuse_batchnorm(FasterRCNN.from_preset(preset).eval())
        image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for variant in variants:
                if variant in ("eager", "eager bf16"):
                    runs[variant] = (lambda v=variant: eager_stages(model, image, torch.bfloat16 if v == "eager bf16" else None))
                elif variant == "prepacked":
                    packed = prepack_linear(copy.deepcopy(model)).channels_last_backbone()
                    runs[variant] = lambda packed=packed: eager_stages(packed, image, None)
                elif variant == "channels_last":
                    cl = copy.deepcopy(model).channels_last_backbone()
                    runs[variant] = lambda cl=cl: eager_stages(cl, image, None)
                elif variant in ("frozen", "prepacked+frozen"):
                    fr = frozen(model, prepacked=variant != "frozen")
                    runs[variant] = lambda fr=fr: eager_stages(fr, image, None)
                elif variant.startswith("openvino"):
                    hint = variant.split()[1]
                    xml = Path(tmp) / f"{preset}_{'int8' if hint == 'int8' else 'f32'}.xml"
                    if not xml.exists():  # int8: calibrated on random images (the speed is what is measured here)
                        g = torch.Generator().manual_seed(1)
                        calibration = [torch.rand(3, *size, generator=g) for _ in range(args.calibration)] if hint == "int8" else None
                        export_model(model, xml, [str(i) for i in range(model.num_classes)], format="openvino", calibration=calibration)
                    hint = "f32" if hint == "int8" else hint
                    config = {"PERF_COUNT": "YES", "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": args.threads}
                    request = ov.Core().compile_model(str(xml), "CPU", config).create_infer_request()
                    array = image.numpy()
                    runs[variant] = lambda request=request, array=array: openvino_stages(request, array)
                else:
                    raise SystemExit(f"unknown variant {variant!r}")
            for run in runs.values():
                run()  # warm-up
            samples: dict[str, list[dict[str, float]]] = defaultdict(list)
            for _ in range(args.repeat):
                for variant, run in runs.items():
                    samples[variant].append(run())
        rows = sorted({key for runs_ in samples.values() for run in runs_ for key in run} - {"total"}, key=lambda s: (STAGES + ("proposals + post-processing",)).index(s))
        print(f"\n{preset}, {size[0]}x{size[1]}, {args.threads} thread(s), median ms of {args.repeat} alternating runs")
        print(f"{'stage':<28}" + "".join(f"{v:>16}" for v in variants))
        for stage in rows + ["total"]:
            cells = [statistics.median(run.get(stage, 0.0) for run in samples[v]) for v in variants]
            if not any(cells):  # e.g. FPN of a preset without one
                continue
            print(f"{stage:<28}" + "".join(f"{c:>16.1f}" for c in cells))


if __name__ == "__main__":
    main()
