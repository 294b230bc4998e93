"""examples/tutorial.ipynb runs from top to bottom (5 training iterations) and shows what it promises.

The notebook is executed with nbclient in a ``python3`` kernel, which jupyter_client starts with
this interpreter (the project's .venv); ipykernel, nbclient and nbformat come with the test extras.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "tutorial.ipynb"


def _text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


def _images(cell) -> int:
    return sum(1 for output in cell.get("outputs", []) if "image/png" in output.get("data", {}))


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "the tutorial has no code cells"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_tutorial_runs_with_few_iterations(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("FASTERRCNN_TUTORIAL_ITERS", "5")
    monkeypatch.setenv("FASTERRCNN_TUTORIAL_DIR", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Last cell: which interpreter ran the kernel (it must be this one, with this package installed).
    notebook.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL', sys.executable)"))
    NotebookClient(
        notebook, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises CellExecutionError on the first failing cell

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = "\n".join(_text(cell) for cell in code)
    assert os.path.realpath(re.search(r"KERNEL (\S+)", text).group(1)) == os.path.realpath(sys.executable)
    assert "5 iterations of 2 images, 8 training / 4 test images" in text
    assert re.search(r"'loss_objectness': \d", text)  # the losses of one training-mode forward pass
    mAP = re.search(r"mAP@0\.5 = (\d\.\d{4}) \(\d+ detections on 4 images\)", text)
    assert mAP is not None, text
    assert 0.0 <= float(mAP.group(1)) <= 1.0
    # the showcase draws boxes even after a short training: the confident detections, else the 3 best
    showcase = re.search(r"(\d+) of (\d+) detections score >= 0\.5; drawn: (those|the (\d) best); picture saved to", text)
    assert showcase is not None, text
    confident, found = int(showcase.group(1)), int(showcase.group(2))
    drawn = confident if showcase.group(3) == "those" else int(showcase.group(4))
    assert drawn == (confident or min(found, 3)) >= 1
    # ground truth, loss curves, the detections and the PR curves of the CLI evaluation
    assert sum(_images(cell) for cell in code) == 4
    assert (out / "run" / "checkpoints" / "last.pt").is_file()
    assert (out / "run" / "metrics.jsonl").is_file()
    assert (out / "prediction.png").stat().st_size > 0
    assert (out / "eval" / "metrics.json").is_file()
    assert (out / "eval" / "pr_curves.png").is_file()
