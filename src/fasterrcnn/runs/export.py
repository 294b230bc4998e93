"""``export_checkpoint``: what ``fasterrcnn export`` does, from Python (the graph and its files: ``deploy.export``).

    from fasterrcnn.runs.export import export_checkpoint
    export_checkpoint("runs/x/checkpoints/best.pt", "model.onnx")                     # ONNX, opset 17
    export_checkpoint("runs/x/checkpoints/best.pt", "model.xml", format="openvino")   # + model.bin
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fasterrcnn.deploy.export import OPSET, export_files, export_model
from fasterrcnn.engine.checkpoint import Checkpoint
from fasterrcnn.errors import ConfigError

__all__ = ["export_checkpoint", "require_exporter"]

# The packages an export to each format imports (the ``deploy`` extra installs them).
EXPORTER_PACKAGES = {"onnx": ("onnx",), "openvino": ("onnx", "openvino")}


def require_exporter(format: str) -> None:
    """Raise ConfigError (one line, with the install command) when a package the export needs is missing."""
    for name in EXPORTER_PACKAGES.get(format, ()):
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(f"exporting to {format} needs the {name} package, which is not installed; pip install 'fasterrcnn[deploy]'") from None


def export_checkpoint(
    checkpoint: str | Path, path: str | Path, *, format: str | None = None, opset: int = OPSET, overwrite: bool = False
) -> list[Path]:
    """Export the model of a training checkpoint (``fasterrcnn train`` / ``compress``) to ``path``; ``format``
    defaults from ``path``'s suffix (``.xml``: openvino, else onnx). Returns the files written (atomically).

    Raises ConfigError when an output file exists (unless ``overwrite``) or the exporter is not installed,
    DataError naming a bad checkpoint.
    """
    format, files = export_files(path, format)
    existing = [str(file) for file in files if file.exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise ConfigError(f"{' and '.join(existing)} {verb}; pass --overwrite to replace or choose another --output")
    require_exporter(format)
    read = Checkpoint.read(checkpoint)
    return export_model(read.build_model(), path, read.class_names, format=format, opset=opset)
