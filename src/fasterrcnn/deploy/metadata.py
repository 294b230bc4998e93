"""The metadata an exported file carries (ONNX ``metadata_props``; OpenVINO ``rt_info`` under ``METADATA_SECTION``).

Keys, all strings: ``format_version`` (``FORMAT_VERSION``), ``class_names`` (a JSON list,
``class_names[label - 1]``), ``config`` (the ModelConfig as JSON), and ``precision`` ``"int8"`` in a file
of ``export --int8``. Written by ``deploy.export``, read by ``deploy.runtime``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fasterrcnn.errors import DataError

__all__ = ["FORMAT_VERSION", "METADATA_KEYS", "METADATA_SECTION", "metadata", "read_metadata"]

FORMAT_VERSION = "1"
METADATA_SECTION = "fasterrcnn"
METADATA_KEYS = ("format_version", "class_names", "config", "precision")


def metadata(model, class_names: Sequence[str]) -> dict[str, str]:
    """The key -> string metadata stored in an exported file of ``model`` (a FasterRCNN)."""
    from fasterrcnn.config import to_dict

    config = to_dict(model.config) if getattr(model, "config", None) is not None else {}
    return {"format_version": FORMAT_VERSION, "class_names": json.dumps(list(class_names)), "config": json.dumps(config)}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an exported ``.onnx`` or OpenVINO ``.xml`` file; DataError for an ``.onnx`` whose weights
    lie in external data files (which the runtime would read whole, whatever their size)."""
    path = Path(path)
    if path.suffix == ".xml":
        import openvino as ov

        model = ov.Core().read_model(str(path))
        return {key: model.get_rt_info([METADATA_SECTION, key]).astype(str) for key in METADATA_KEYS if model.has_rt_info([METADATA_SECTION, key])}
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    # External data (weights in files beside the graph, read by the runtime whatever their size): never written here.
    tensors = [*proto.graph.initializer, *(a.t for node in proto.graph.node for a in node.attribute if a.HasField("t"))]
    if any(tensor.data_location == onnx.TensorProto.EXTERNAL for tensor in tensors):
        raise DataError(path, "its weights are in external data files, which fasterrcnn export never writes (export the checkpoint again)")
    return {entry.key: entry.value for entry in proto.metadata_props}
