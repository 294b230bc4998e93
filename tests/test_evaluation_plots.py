"""evaluation/plots.py: PNG files are written whole, atomically, without pyplot state."""

import os

import pytest

from fasterrcnn.evaluation import plot_losses, plot_pr_curves

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


def test_plot_losses_writes_png(tmp_path):
    records = [
        {"iteration": i, "loss": 2.0 / i, "loss_classifier": 1.0 / i, "loss_box_reg": 0.5 / i, "lr": 0.01 * min(1, i / 5),
         "time": 0.3}
        for i in range(1, 21)
    ]
    records += [{"iteration": 10, "val_loss": 0.3, "val_loss_classifier": 0.2}, {"iteration": 20, "val_loss": 0.2}]
    records.append({"epoch": 1, "mAP": 0.5})  # no iteration: ignored
    path = tmp_path / "losses.png"
    plot_losses(records, path)
    assert_png(path)
    assert os.listdir(tmp_path) == ["losses.png"]


def test_plot_losses_without_records(tmp_path):
    path = tmp_path / "losses.png"
    plot_losses([], path)
    assert_png(path)


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
        plot_losses([{"iteration": 1, "loss": 1.0}], path)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["pr.png"]

