"""evaluation/plots.py: PNG files are written whole, atomically, without pyplot state."""

import os

import pytest

from fasterrcnn.evaluation import plot_confusion_matrix, plot_pr_curves, plot_results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000
    assert data[-8:-4] == b"IEND"  # complete file: ends with the IEND chunk (+ CRC)


def test_plot_pr_curves_writes_png(tmp_path):
    path = tmp_path / "pr.png"
    curves = {"cat": ([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]), "dog": ([0.0, 1.0], [0.0, 0.5])}
    plot_pr_curves(curves, path, title="VOC07 test", aps={"cat": 0.75, "dog": 0.5})
    assert_png(path)
    assert os.listdir(tmp_path) == ["pr.png"]


def test_plot_pr_curves_replaces_file_and_handles_no_classes(tmp_path):
    path = tmp_path / "pr.png"
    path.write_bytes(b"old")
    plot_pr_curves({}, path)
    assert_png(path)
    many = {f"class{i}": ([0.0, 0.5, 1.0], [1.0, 0.8, 0.1 * (i % 10)]) for i in range(80)}
    plot_pr_curves(many, path, aps={"class0": 0.5})
    assert_png(path)
    assert os.listdir(tmp_path) == ["pr.png"]


def results_figure(records, path):
    """plot_results, returning the figure it drew (its panels' titles and lines are what a reader sees)."""
    from matplotlib.figure import Figure

    drawn = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        drawn.append(self)
        return original(self, *args, **kwargs)

    Figure.savefig = savefig
    try:
        plot_results(records, path)
    finally:
        Figure.savefig = original
    return drawn[0]


def test_plot_results_pairs_train_and_validation_per_loss(tmp_path):
    records = [
        {"type": "train", "iteration": i, "loss": 2.0 / i, "loss_classifier": 1.0 / i, "loss_box_reg": 0.5 / i,
         "lr": 0.01 * min(1, i / 5), "time": 0.3}
        for i in range(1, 21)
    ]  # fmt: skip
    records += [
        {"type": "eval", "iteration": 10, "val_loss": 0.3, "val_loss_classifier": 0.2, "mAP": 0.4},
        {"type": "eval", "iteration": 20, "val_loss": 0.2, "mAP": 0.6},
    ]
    records.append({"epoch": 1, "mAP": 0.5})  # no iteration: ignored
    path = tmp_path / "results.png"
    figure = results_figure(records, path)
    assert_png(path)
    assert os.listdir(tmp_path) == ["results.png"]
    panels = [axes for axes in figure.axes if axes.axison]
    assert [axes.get_title() for axes in panels] == ["loss", "loss_classifier", "loss_box_reg", "validation mAP", "learning rate"]
    total, classifier, box_reg, metric, _ = panels
    train, val = total.get_lines()
    assert train.get_color() == val.get_color() and (train.get_linestyle(), val.get_linestyle()) == ("-", "--")
    assert list(val.get_xdata()) == [10.0, 20.0] and list(val.get_ydata()) == [0.3, 0.2]
    assert list(classifier.get_lines()[1].get_ydata()) == [0.2] and len(box_reg.get_lines()[1].get_xdata()) == 0
    assert list(metric.get_lines()[0].get_ydata()) == [0.4, 0.6]
    assert all(axes.get_legend() is None for axes in figure.axes)  # no legend over the data: one for the figure
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["train", "validation", "mAP"]


def test_plot_results_coco_metrics_and_no_records(tmp_path):
    records = [{"type": "eval", "iteration": 5, "AP": 0.3, "AP50": 0.5, "AP75": 0.2}]
    figure = results_figure(records, tmp_path / "coco.png")
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["train", "validation", "AP", "AP50", "AP75"]
    assert results_figure([], tmp_path / "empty.png").axes[0].texts[0].get_text() == "no records"
    assert_png(tmp_path / "empty.png")


def test_plot_confusion_matrix_writes_counts(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    written = []
    original = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: (written.append((x, y, s)), original(self, x, y, s, *a, **k))[1])
    plot_confusion_matrix([[3, 1, 2], [0, 0, 0], [1, 4, 0]], ["cat", "dog", "background"], tmp_path / "cm.png")
    assert_png(tmp_path / "cm.png")
    assert sorted(written) == [(0, 0, "3"), (0, 2, "1"), (1, 0, "1"), (1, 2, "4"), (2, 0, "2")]  # (column, row, count), zeros blank


def test_failed_save_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, f, **kwargs):
        f.write(PNG_SIGNATURE + b"half a pic")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    path = tmp_path / "pr.png"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        plot_pr_curves({"cat": ([0.0, 1.0], [1.0, 0.5])}, path)
    with pytest.raises(OSError, match="disk full"):
        plot_results([{"iteration": 1, "loss": 1.0}], path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["pr.png"]

