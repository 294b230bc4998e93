"""Evaluation: results files (COCO results format), VOC AP, COCO AP (pycocotools), confusion matrices and plots.

``evaluate_coco`` and the plots import pycocotools / matplotlib only when first used.
"""

from fasterrcnn.evaluation.confusion import confusion_matrix, per_class_counts
from fasterrcnn.evaluation.results import detections_to_results, load_results, results_to_detections, save_results
from fasterrcnn.evaluation.voc import evaluate_voc, voc_ap

__all__ = [
    "confusion_matrix",
    "detections_to_results",
    "evaluate_coco",
    "evaluate_voc",
    "load_results",
    "per_class_counts",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "plot_results",
    "results_to_detections",
    "save_results",
    "voc_ap",
]


def __getattr__(name: str):
    if name == "evaluate_coco":
        from fasterrcnn.evaluation.coco import evaluate_coco

        return evaluate_coco
    if name in ("plot_confusion_matrix", "plot_pr_curves", "plot_results"):
        from fasterrcnn.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'fasterrcnn.evaluation' has no attribute {name!r}")
