"""fasterrcnn: a readable, exact and fast Faster R-CNN (Ren et al., NIPS 2015) in plain PyTorch.

Boxes are float ``(x1, y1, x2, y2)`` in absolute pixels everywhere; label 0 is background.
"""

__version__ = "0.1.0"

__all__ = ["Detection", "Detector", "FasterRCNN", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that ``fasterrcnn --help`` and ``import fasterrcnn.ops`` stay fast.
    if name == "FasterRCNN":
        from fasterrcnn.modeling.faster_rcnn import FasterRCNN

        return FasterRCNN
    if name in ("Detector", "Detection"):
        from fasterrcnn import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'fasterrcnn' has no attribute {name!r}")
