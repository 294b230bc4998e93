"""PNG plots: precision/recall curves per class and training loss curves.

Figures are drawn with matplotlib's ``Figure`` and the Agg canvas directly (no ``pyplot``, no
global backend or figure state) and written atomically with ``fasterrcnn.io.atomic_save``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fasterrcnn.io import atomic_save

__all__ = ["plot_losses", "plot_pr_curves"]


def _save_png(figure: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(figure)
    atomic_save(path, lambda f: figure.savefig(f, format="png", dpi=100, bbox_inches="tight"))


def plot_pr_curves(
    pr_curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    title: str | None = None,
    aps: Mapping[str, float] | None = None,
) -> None:
    """One figure with the precision/recall curve of every class, written to ``path`` (PNG).

    Args:
        pr_curves: {class name: (recall, precision)} as returned by ``evaluate_voc`` /
            ``evaluate_coco``.
        path: the PNG file to write (its folder must exist).
        title: the figure title (default "Precision / recall").
        aps: optional {class name: AP}; shown in the legend as ``name (AP 0.712)``.
    """
    figure = Figure(figsize=(9, 6))
    axes = figure.add_subplot()
    for name, (recall, precision) in pr_curves.items():
        label = name if aps is None or name not in aps else f"{name} (AP {aps[name]:.3f})"
        axes.plot(list(recall), list(precision), label=label, linewidth=1.2)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title or "Precision / recall")
    axes.grid(True, alpha=0.3)
    if pr_curves:
        columns = 1 + (len(pr_curves) - 1) // 25
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", ncols=columns)
    else:
        axes.text(0.5, 0.5, "no classes with ground truth", ha="center", va="center", transform=axes.transAxes)
    _save_png(figure, path)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of the records that have ``key`` with a numeric value."""
    points = [
        (float(r["iteration"]), float(r[key]))
        for r in records
        if "iteration" in r and isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def plot_losses(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Loss curves against iteration from metrics records, written to ``path`` (PNG).

    Every key starting with ``"loss"`` (training, solid lines) or ``"val_loss"`` (validation,
    dashed, one marker per record) is one curve; records without ``"iteration"`` or without the
    key are skipped for that curve. A ``"lr"`` key is drawn on a second y axis (dotted grey).
    Keys are drawn in order of first appearance.
    """
    keys: list[str] = []
    for record in records:
        keys.extend(k for k in record if k not in keys and (k.startswith("loss") or k.startswith("val_loss")))

    figure = Figure(figsize=(9, 5))
    axes = figure.add_subplot()
    for key in keys:
        iterations, values = _series(records, key)
        if key.startswith("val_loss"):
            axes.plot(iterations, values, label=key, linestyle="--", marker="o", markersize=3)
        else:
            axes.plot(iterations, values, label=key, linewidth=1.0)
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.set_title("Training losses")
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()

    top_axes = axes
    lr_iterations, lr_values = _series(records, "lr")
    if lr_values:
        top_axes = axes.twinx()
        top_axes.plot(lr_iterations, lr_values, label="lr", color="grey", linestyle=":", linewidth=1.0)
        top_axes.set_ylabel("learning rate")
        top_axes.set_ylim(bottom=0.0)
        lr_handles, lr_labels = top_axes.get_legend_handles_labels()
        handles, labels = handles + lr_handles, labels + lr_labels
    if handles:
        # On the topmost axes so that no curve is drawn over it.
        top_axes.legend(handles, labels, loc="upper right", fontsize="small", framealpha=0.9)
    else:
        axes.text(0.5, 0.5, "no loss records", ha="center", va="center", transform=axes.transAxes)
    _save_png(figure, path)
