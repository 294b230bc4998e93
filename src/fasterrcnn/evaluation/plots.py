"""PNG plots: precision/recall curves per class, a training run's results and confusion matrices; the JPEG of a
training set's labels.

Figures are drawn with matplotlib's ``Figure`` and the Agg canvas directly (no ``pyplot``, no
global backend or figure state) and written atomically with ``fasterrcnn.io.atomic_save``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle as matplotlib_rectangle

from fasterrcnn.io import atomic_save

__all__ = ["plot_confusion_matrix", "plot_error_breakdown", "plot_labels", "plot_pr_curves", "plot_reliability", "plot_results"]


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


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(iterations, values) of the records that have ``key`` with a numeric value."""
    points = [
        (float(r["iteration"]), float(r[key]))
        for r in records
        if "iteration" in r and _number(r.get(key))
    ]
    return [p[0] for p in points], [p[1] for p in points]


METRIC_KEYS = ("mAP", "AP", "AP50", "AP75")  # drawn in the metric panel of results.png, when present


def plot_results(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """A training run at a glance, from its metrics records, written to ``path`` (PNG).

    One small panel per loss (``"loss"``, the total, first): the training values (keys starting with
    ``"loss"``) as a solid line and the validation values (the same key with a ``"val_"`` prefix, one
    marker per evaluation) dashed, in the same colour; then a panel with the metrics of
    ``METRIC_KEYS`` found in the records, and one with ``"lr"``. All against iteration, on the same x
    range; records without ``"iteration"`` are skipped. A single legend above the panels says which
    line is which.
    """
    from matplotlib.lines import Line2D

    losses: list[str] = []
    for record in records:
        for key in record:
            name = key[len("val_") :] if key.startswith("val_loss") else key
            if name.startswith("loss") and name not in losses:
                losses.append(name)
    losses.sort(key=lambda name: name != "loss")  # the total first, the others in order of appearance
    metrics = [key for key in METRIC_KEYS if _series(records, key)[1]]
    has_lr = bool(_series(records, "lr")[1])
    panels = len(losses) + bool(metrics) + has_lr
    columns = min(4, max(panels, 1))
    rows = max(1, -(-panels // columns))
    figure = Figure(figsize=(3.4 * columns, 2.7 * rows + 0.5), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False).ravel()
    colors = [f"C{i % 10}" for i in range(len(losses) + len(metrics))]
    for axes, name, color in zip(grid, losses, colors):
        axes.plot(*_series(records, name), color=color, linewidth=1.0)
        axes.plot(*_series(records, f"val_{name}"), color=color, linestyle="--", marker="o", markersize=3)
        axes.set_title(name, fontsize="medium")
        axes.set_ylim(bottom=0.0)
    handles = [
        Line2D([], [], color="black", linewidth=1.0, label="train"),
        Line2D([], [], color="black", linestyle="--", marker="o", markersize=3, label="validation"),
    ]
    index = len(losses)
    if metrics:
        axes = grid[index]
        for key, color in zip(metrics, colors[len(losses) :]):
            axes.plot(*_series(records, key), color=color, marker="o", markersize=3)
            handles.append(Line2D([], [], color=color, marker="o", markersize=3, label=key))
        axes.set_title("validation " + " / ".join(metrics), fontsize="medium")
        axes.set_ylim(0.0, 1.0)
        index += 1
    if has_lr:
        grid[index].plot(*_series(records, "lr"), color="grey", linewidth=1.0)
        grid[index].set_title("learning rate", fontsize="medium")
        grid[index].set_ylim(bottom=0.0)
        index += 1
    last = max((float(r["iteration"]) for r in records if _number(r.get("iteration"))), default=1.0)
    for axes in grid[:index]:
        axes.set_xlim(0.0, last * 1.02)
        axes.set_xlabel("iteration", fontsize="small")
        axes.tick_params(labelsize="small")
        axes.grid(True, alpha=0.3)
    for axes in grid[index:]:
        axes.set_axis_off()
    if panels:
        figure.legend(handles=handles, loc="outside upper center", ncols=len(handles), fontsize="small", frameon=False)
    else:
        grid[0].text(0.5, 0.5, "no records", ha="center", va="center", transform=grid[0].transAxes)
    _save_png(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[float]], labels: Sequence[str], path: str | os.PathLike, *, title: str | None = None
) -> None:
    """A confusion matrix [N, N] as a heat map with its counts, written to ``path`` (PNG).

    Rows are the true classes, columns the predicted ones, ``labels`` naming both (background last in
    ``evaluation/confusion.py``'s matrices). Colours are the counts divided by their row's sum (the
    share of each true class's boxes that went where), so that rare and common classes read alike.
    """
    import numpy as np

    counts = np.asarray(matrix, dtype=np.int64)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    n = len(labels)
    side = min(4.0 + 0.45 * n, 24.0)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class's boxes (row)")
    if n <= 30:  # the counts stay legible up to about 30 classes
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    color = "white" if shares[i, j] > 0.5 else "black"
                    axes.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize="medium" if n <= 12 else "small")
    axes.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize="medium" if n <= 12 else "small")
    axes.set_yticks(range(n), labels, fontsize="medium" if n <= 12 else "small")
    axes.set_xlabel("predicted (background: a false positive)")
    axes.set_ylabel("true (background: missed)")
    axes.set_title(title or "Confusion matrix")
    _save_png(figure, path)


def plot_error_breakdown(delta_ap: Mapping[str, float], counts: Mapping[str, int], path: str | os.PathLike, *, title: str | None = None) -> None:
    """TIDE's error breakdown as horizontal bars: the AP fixing each error type would add (``evaluation/tide.py``),
    each bar labelled with its dAP and how many errors of the type there are."""
    names = list(delta_ap)
    values = [100 * float(delta_ap[n]) for n in names]
    figure = Figure(figsize=(7, 3.6))
    axes = figure.add_subplot()
    bars = axes.barh(range(len(names)), values, color=["#4c72b0", "#dd8452", "#8172b3", "#937860", "#c44e52", "#55a868"][: len(names)])
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()  # TIDE's order, top down
    top = max(values + [1.0])
    axes.set_xlim(0, top * 1.3)
    for bar, value, name in zip(bars, values, names):
        axes.text(bar.get_width() + top * 0.02, bar.get_y() + bar.get_height() / 2, f"{value:.2f} ({counts[name]})", va="center", fontsize="small")
    axes.set_xlabel("dAP: AP points gained by fixing all errors of the type (count in brackets)")
    axes.set_title(title or "Error breakdown (TIDE)")
    axes.grid(True, axis="x", alpha=0.3)
    _save_png(figure, path)


def plot_reliability(bins: Sequence[Mapping[str, float]], ece: float, path: str | os.PathLike, *, title: str | None = None) -> None:
    """A reliability diagram: per score bin (``calibration.reliability_bins``) the precision as a bar against
    the diagonal (a calibrated detector's bars reach it), the gap to each bin's mean score hatched, and the
    share of detections per bin below."""
    import math

    figure = Figure(figsize=(5.5, 6.2))
    top, bottom = figure.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    width = bins[0]["high"] - bins[0]["low"] if bins else 0.1
    filled = [b for b in bins if b["count"]]
    top.bar([b["low"] for b in filled], [b["precision"] for b in filled], width=width, align="edge", color="#4c72b0", edgecolor="white", label="precision (IoU 0.5)")
    gap_low = [min(b["precision"], b["score"]) for b in filled]
    gap_high = [max(b["precision"], b["score"]) for b in filled]
    top.bar(
        [b["low"] for b in filled], [h - lo for lo, h in zip(gap_low, gap_high)], bottom=gap_low, width=width, align="edge",
        fill=False, hatch="//", edgecolor="#c44e52", linewidth=0.0, zorder=2, label="gap to the mean score",
    )  # fmt: skip
    top.scatter([b["score"] for b in filled], [b["precision"] for b in filled], color="black", s=12, zorder=3, label="(mean score, precision)")
    top.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("precision")
    top.legend(loc="upper left", fontsize="small")
    top.set_title(title or f"Reliability diagram (detection ECE {'-' if math.isnan(ece) else f'{ece:.3f}'})")
    top.grid(True, alpha=0.3)
    total = sum(b["count"] for b in bins) or 1
    bottom.bar([b["low"] for b in bins], [b["count"] / total for b in bins], width=width, align="edge", color="gray", edgecolor="white")
    bottom.set_xlabel("score")
    bottom.set_ylabel("share of detections")
    bottom.grid(True, alpha=0.3)
    _save_png(figure, path)


def plot_labels(labels, boxes, class_names: Sequence[str], path: str | os.PathLike) -> None:
    """A training set's labels in one JPEG (as ultralytics' ``labels.jpg``), written atomically to ``path``.

    Four panels: the instances of every class; where the boxes' centres lie (x, y as fractions of the image);
    the boxes' widths and heights (fractions); a sample of up to 500 boxes drawn centred, to show their shapes.

    Args:
        labels: [K] int64 in 1..C; boxes: [K, 4] float xyxy as fractions of their image (``data.protocol.label_statistics``).
        class_names: the C names, ``class_names[label - 1]``.
    """
    import numpy as np

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    counts = np.bincount(labels, minlength=len(class_names) + 1)[1 : len(class_names) + 1]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    sizes = boxes[:, 2:] - boxes[:, :2]
    figure = Figure(figsize=(10, 9), layout="constrained")
    (bars, where), (size, shapes) = figure.subplots(2, 2)
    bars.bar(range(len(class_names)), counts, color="#3b75af")
    bars.set_xticks(range(len(class_names)), list(class_names), rotation=90 if len(class_names) > 8 else 0, fontsize="small")
    bars.set_ylabel("instances")
    bars.set_title(f"{len(labels)} boxes, {len(class_names)} classes")
    for axes, values, (x_name, y_name) in ((where, centres, ("x", "y")), (size, sizes, ("width", "height"))):
        if len(values):
            axes.hist2d(values[:, 0], values[:, 1], bins=40, range=[[0, 1], [0, 1]], cmap="viridis", cmin=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"{x_name} (fraction of the image)")
        axes.set_ylabel(f"{y_name} (fraction of the image)")
    where.invert_yaxis()  # image coordinates: y grows downwards
    where.set_title("box centres")
    size.set_title("box sizes")
    for label, (w, h) in list(zip(labels, sizes))[:500]:
        shapes.add_patch(matplotlib_rectangle((0.5 - w / 2, 0.5 - h / 2), w, h, fill=False, linewidth=0.5, alpha=0.4, color=f"C{(label - 1) % 10}"))
    shapes.set_xlim(0, 1)
    shapes.set_ylim(1, 0)
    shapes.set_aspect("equal")
    shapes.set_title("box shapes (up to 500, centred)")
    FigureCanvasAgg(figure)
    atomic_save(path, lambda f: figure.savefig(f, format="jpg", dpi=80, bbox_inches="tight"))
