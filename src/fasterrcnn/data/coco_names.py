"""COCO category names in the 91-id layout of torchvision's COCO-trained detectors.

torchvision's detection checkpoints have 91 outputs: output 0 is background and output ``i`` is the
COCO category id ``i`` (ids 1..90, of which 10 are unused by the 2017 annotations and named
"N/A"). With ``num_classes=90`` foreground classes our label ``i`` is that same output, so
label == COCO category id and ``COCO_91_CLASSES[i - 1]`` is its name. This is the one place
where that mapping is written down.
"""

from __future__ import annotations

from fasterrcnn.errors import ConfigError

# Names of labels 1..90 (COCO category ids 1..90), in order.
COCO_91_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl",
    "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut",
    "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


def coco_class_names(num_classes: int = len(COCO_91_CLASSES)) -> list[str]:
    """The names of labels 1..num_classes for a model in the 91-id layout (num_classes must be 90)."""
    if num_classes != len(COCO_91_CLASSES):
        raise ConfigError(
            f"the built-in COCO names are for models with {len(COCO_91_CLASSES)} foreground classes "
            f"(torchvision's 91-output layout), not {num_classes}"
        )
    return list(COCO_91_CLASSES)
