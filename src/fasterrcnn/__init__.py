"""fasterrcnn: a readable, exact and fast Faster R-CNN (Ren et al., NIPS 2015) in plain PyTorch.

Boxes are float ``(x1, y1, x2, y2)`` in absolute pixels everywhere; label 0 is background.
"""

import os

__version__ = "0.1.0"

# Large CPU tensors (feature maps, pooled RoIs) are fresh allocations on every forward pass, and
# faulting them in 4 KiB pages costs about 0.3 ms per MB. PyTorch's CPU allocator backs
# allocations of 2 MiB and more with transparent huge pages when this variable is 1: about 10-20 %
# faster inference on CPU, same peak memory (benchmarks/model.py, benchmarks/memory.py). It is
# read at torch's first allocation, so it takes effect when fasterrcnn is imported before torch
# (as the ``fasterrcnn`` command does). Set it to 0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__all__ = [
    "Detection", "Detector", "FasterRCNN", "TrainingData", "ValidationData", "__version__", "benchmark", "compress", "evaluate",
    "predict", "train",
]  # fmt: skip


def __dir__() -> list[str]:
    # the lazy names too (tab completion, dir(fasterrcnn)), not only those already imported
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    # Imported lazily so that ``fasterrcnn --help`` and ``import fasterrcnn.ops`` stay fast.
    if name == "FasterRCNN":
        from fasterrcnn.modeling.faster_rcnn import FasterRCNN

        return FasterRCNN
    # whole runs, as the commands do them, and train's two data specs
    if name in ("train", "evaluate", "predict", "compress", "benchmark", "TrainingData", "ValidationData"):
        from fasterrcnn import runs

        return getattr(runs, name)
    if name in ("Detector", "Detection"):
        from fasterrcnn import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'fasterrcnn' has no attribute {name!r}")
