"""Evaluation: results files (COCO results format), VOC AP, COCO AP (pycocotools) and plots.

``evaluate_coco`` and the plots import pycocotools / matplotlib only when first used.
"""

from fasterrcnn.evaluation.results import detections_to_results, load_results, results_to_detections, save_results
from fasterrcnn.evaluation.voc import evaluate_voc, voc_ap

__all__ = [
    "detections_to_results",
    "evaluate_coco",
    "evaluate_voc",
    "load_results",
    "plot_losses",
    "plot_pr_curves",
    "results_to_detections",
    "save_results",
    "voc_ap",
]


def __getattr__(name: str):
    if name == "evaluate_coco":
        from fasterrcnn.evaluation.coco import evaluate_coco

        return evaluate_coco
    if name in ("plot_losses", "plot_pr_curves"):
        from fasterrcnn.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'fasterrcnn.evaluation' has no attribute {name!r}")
