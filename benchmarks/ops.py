"""Speed of the detection ops: prints a table (op, case, median ms, goal, reference C++ figure).

    python benchmarks/ops.py [--repeats N] [--threads N]

Cases (float32, CPU unless --device says otherwise):
- nms: N random boxes, corner uniform in a 1000 x 1000 image, sides uniform in 10..210 px,
  uniform scores, IoU threshold 0.7; N = 6000 (Faster R-CNN test) and 12000 (training).
- roi_align: forward + backward, 128 RoIs on a [1, 512, 38, 63] feature map (a ~600 x 1000 image at
  stride 16), 7 x 7 output, sampling_ratio 2, aligned=True.
- roi_pool: forward + backward, same case.
The "C++ ref" column is the reference C++ kernels' time from the issue. If torchvision can be
imported, its time for the same case is shown too. Timings are wall-clock medians; never asserted.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

try:  # before torch: fasterrcnn sets torch's allocator options, as for the fasterrcnn command
    import fasterrcnn.ops as ops
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import fasterrcnn.ops as ops
import torch

IMAGE_HW = (608, 1008)  # padded ~600 x 1000 image; stride 16 gives the 38 x 63 map
FEATURE_SHAPE = (1, 512, 38, 63)
NUM_ROIS = 128


def load_torchvision():
    try:
        import torchvision.ops
    except (ImportError, RuntimeError, OSError, AttributeError) as error:
        return None, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return torchvision.ops, None


def median_ms(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def nms_case(n, device):
    g = torch.Generator().manual_seed(n)
    corner = torch.rand(n, 2, generator=g) * 1000
    sides = torch.rand(n, 2, generator=g) * 200 + 10
    boxes = torch.cat((corner, corner + sides), dim=1).to(device)
    scores = torch.rand(n, generator=g).to(device)
    return boxes, scores


def roi_case(device):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(FEATURE_SHAPE, generator=g).to(device).requires_grad_()
    height, width = IMAGE_HW
    corner = torch.rand(NUM_ROIS, 2, generator=g) * torch.tensor([width - 32.0, height - 32.0])
    sides = torch.rand(NUM_ROIS, 2, generator=g) * torch.tensor([width / 2, height / 2]) + 16
    boxes = torch.cat((corner, corner + sides), dim=1)
    boxes = ops.clip_boxes_to_image(boxes, IMAGE_HW)
    rois = torch.cat((torch.zeros(NUM_ROIS, 1), boxes), dim=1).to(device)  # [K, 5] (batch index, x1, y1, x2, y2)
    grad = torch.randn(NUM_ROIS, FEATURE_SHAPE[1], 7, 7, generator=g).to(device)
    return features, rois, grad


def forward_backward(pool, features, rois, grad):
    def run():
        features.grad = None
        pool(features, rois).backward(grad)

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tv, tv_error = load_torchvision()

    rows = []  # (op, case, ours ms or message, goal ms, C++ reference ms, torchvision ms or message)

    def measure(fn):
        try:
            return f"{median_ms(fn, args.repeats, device):.1f}"
        except NotImplementedError:
            return "not implemented"

    for n, goal, reference in ((6000, 35, 139), (12000, 100, 527)):
        boxes, scores = nms_case(n, device)
        ours = measure(lambda: ops.nms(boxes, scores, 0.7))
        theirs = measure(lambda: tv.nms(boxes, scores, 0.7)) if tv else "-"
        rows.append(("nms", f"{n} boxes, IoU 0.7", ours, goal, reference, theirs))

    features, rois, grad = roi_case(device)
    cases = (
        ("roi_align", lambda f, r: ops.roi_align(f, r, 7, 1 / 16, 2, True),
         (lambda f, r: tv.roi_align(f, r, 7, 1 / 16, 2, True)) if tv else None, 100, 214),
        ("roi_pool", lambda f, r: ops.roi_pool(f, r, 7, 1 / 16),
         (lambda f, r: tv.roi_pool(f, r, 7, 1 / 16)) if tv else None, 50, 49),
    )
    for name, ours_fn, theirs_fn, goal, reference in cases:
        ours = measure(forward_backward(ours_fn, features, rois, grad))
        theirs = measure(forward_backward(theirs_fn, features, rois, grad)) if theirs_fn else "-"
        rows.append((name, f"fwd+bwd {NUM_ROIS} RoIs, [1,512,38,63], 7x7", ours, goal, reference, theirs))

    header = ("op", "case", "median ms", "goal ms", "C++ ref ms", "torchvision ms")
    table = [header] + [tuple(str(c) for c in row) for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}")
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if tv is None:
        print(f"torchvision not available ({tv_error})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
