"""Inference beyond one forward pass per image: sliced inference (tiles at full resolution) and test-time
augmentation, for ``Detector.detect``, ``predict``, ``eval`` and ``serve`` (``inference.sliced``)."""

from fasterrcnn.inference.sliced import TTA_PASSES, InferenceOptions, check_probabilities, detect_image, load_uint8, reduced_float

__all__ = ["TTA_PASSES", "InferenceOptions", "check_probabilities", "detect_image", "load_uint8", "reduced_float"]
