"""MkDocs hooks: the parts of the documentation that are generated from the code at build time.

A page asks for generated content with an HTML comment (block markers on a line of their own):

    <!-- fasterrcnn:cli-help -->        the ``--help`` of ``fasterrcnn`` and of every subcommand
                                        (read from ``fasterrcnn.cli.build_parser()``)
    <!-- fasterrcnn:presets model -->   a table of every ``ModelConfig`` field in every preset
    <!-- fasterrcnn:presets train -->   the same for ``TrainConfig``
                                        (read from ``fasterrcnn.config.PRESETS``; the last column is
                                        the field's comment in ``config/schema.py``; the comment lines above a group of fields
                                        there become the table's section rows)
    <!-- fasterrcnn:preset-names -->    the preset names as a comma-separated list of code spans
    <!-- fasterrcnn:pretrained -->      a table of the registered pretrained files
                                        (read from ``fasterrcnn.pretrained.PRETRAINED``)
    <!-- fasterrcnn:shapes -->          a table of the tensor shapes at every stage of every preset's
                                        model, measured on a 375 x 500 image (see ``shapes_markdown``)

An unknown ``fasterrcnn:`` marker stops the build, so a typo cannot silently drop a section.
Only the shapes table imports torch (it builds every preset's model on the "meta" device).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import inspect
import io
import os
import re
import tokenize

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"<!--\s*fasterrcnn:([a-z-]+)(?:\s+([a-z]+))?\s*-->")
HELP_COLUMNS = "100"  # argparse wraps --help at $COLUMNS - 2: fixed, so the page is the same everywhere


# -- CLI help --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _columns(value: str):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_help_markdown() -> str:
    """``fasterrcnn --help`` and one section per subcommand with its ``--help``, as Markdown."""
    from fasterrcnn.cli import build_parser

    with _columns(HELP_COLUMNS):
        parser = build_parser()
        parts = ["```text", "$ fasterrcnn --help", parser.format_help().rstrip(), "```", ""]
        for name, sub in _subcommands(parser).items():
            parts += [f"## `fasterrcnn {name}`", "", "```text", f"$ fasterrcnn {name} --help", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


# -- preset tables ---------------------------------------------------------------------------------------
def _field_comments(cls) -> dict[str, tuple[str, str]]:
    """{field name: (section, comment)} for a dataclass of config/schema.py: ``comment`` is the ``# ...`` on
    the field's line, ``section`` the last ``# ...`` line of its own above it in the class body."""
    source = inspect.getsource(inspect.getmodule(cls))
    lines = source.splitlines()
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            result, section, previous_end = {}, "", node.lineno
            for stmt in node.body:
                for lineno in range(previous_end + 1, stmt.lineno):
                    if lineno in comments and lines[lineno - 1].lstrip().startswith("#"):
                        section = comments[lineno]
                previous_end = stmt.end_lineno
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    result[stmt.target.id] = (section, comments.get(stmt.lineno, ""))
            return result
    raise PluginError(f"docs/hooks.py: class {cls.__name__} not found in {inspect.getsourcefile(cls)}")


def _format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        if len(value) > 1 and isinstance(value[0], tuple) and all(v == value[0] for v in value):
            return f"{_format_value(value[0])} × {len(value)}"
        return "(" + ", ".join(_format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def presets_markdown(section: str) -> str:
    """A Markdown table: one row per field of ``section`` ("model" or "train"), one column per preset.

    A value that differs from the dataclass default (the paper's setting) is shown in bold.
    """
    from fasterrcnn.config import PRESETS, ModelConfig, TrainConfig

    cls = {"model": ModelConfig, "train": TrainConfig}.get(section)
    if cls is None:
        raise PluginError(f"docs/hooks.py: presets section must be 'model' or 'train', got {section!r}")
    default = cls()
    comments = _field_comments(cls)
    names = list(PRESETS)
    lines = [
        "| field | " + " | ".join(f"`{n}`" for n in names) + " | meaning |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    current_section = ""
    for field in dataclasses.fields(cls):
        group, comment = comments.get(field.name, ("", ""))
        if group != current_section:
            lines.append(f"| **{_cell(group)}** |" + " |" * (len(names) + 1))
            current_section = group
        cells = []
        for name in names:
            value = getattr(getattr(PRESETS[name], section), field.name)
            text = f"`{_cell(_format_value(value))}`"
            cells.append(f"**{text}**" if value != getattr(default, field.name) else text)
        lines.append(f"| `{field.name}` | " + " | ".join(cells) + f" | {_cell(comment)} |")
    return "\n".join(lines)


def preset_names_markdown() -> str:
    from fasterrcnn.config import PRESETS

    return ", ".join(f"`{name}`" for name in PRESETS)


def pretrained_markdown() -> str:
    """A Markdown table: one row per registered file (name, kind, file and URL, accuracy, where it loads)."""
    from fasterrcnn.config import PRESETS
    from fasterrcnn.pretrained import IMAGENET_BACKBONE, PRETRAINED

    lines = ["| name | what | file (URL) | accuracy (torchvision) | use with |", "| --- | --- | --- | --- | --- |"]
    for entry in PRETRAINED.values():
        if entry.kind == IMAGENET_BACKBONE:
            presets = [name for name, preset in PRESETS.items() if preset.model.backbone in entry.fits]
            use = f"`--backbone-weights {entry.name}` (preset{'s' if len(presets) > 1 else ''} " + ", ".join(f"`{p}`" for p in presets) + ")"
        else:
            use = f"`--preset {entry.fits[0]} --weights {entry.name}`"
        lines.append(f"| `{entry.name}` | {entry.kind} | [`{entry.filename}`]({entry.url}) | {entry.accuracy} | {use} |")
    return "\n".join(lines)


# -- tensor shapes -------------------------------------------------------------------------------------
SHAPES_IMAGE = (375, 500)  # (height, width): a typical PASCAL VOC image


def _shape(t) -> str:
    return "[" + ", ".join(str(int(d)) for d in t.shape) + "]"


def _trace(name: str) -> dict[str, str]:
    """The shapes of one preset's inference pass on one image of ``SHAPES_IMAGE`` (batch N = 1).

    The model is built on the "meta" device (no memory, no arithmetic), so this costs well under a
    second per preset. The transform runs for real on a zero image; backbone, RPN head, box head
    and predictor run on meta tensors of the transform's output shape. The stages whose output
    size depends on the data (proposals after NMS, detections) are given as their upper bound
    from the configuration, and the pooled RoIs as ``[R, C, S, S]`` with ``R`` that bound.
    """
    import torch

    from fasterrcnn.modeling.faster_rcnn import FasterRCNN

    with torch.device("meta"):
        model = FasterRCNN.from_preset(name)
    model.eval()
    cfg = model.config
    with torch.no_grad():
        images, _ = model.transform([torch.zeros(3, *SHAPES_IMAGE)])
        features = model.backbone(images.tensors.to("meta"))
        if isinstance(features, torch.Tensor):
            features = {"0": features}
        logits, deltas = model.rpn.head(list(features.values()))
        grids = [tuple(f.shape[-2:]) for f in features.values()]
        anchors = model.rpn.anchor_generator(tuple(images.tensors.shape[-2:]), grids)
        pooled_names = [n for n in features if n != "pool"]
        channels = features[pooled_names[0]].shape[1]
        rois = cfg.rpn_post_nms_top_n_test
        pooled = torch.empty(rois, channels, cfg.box_pool_size, cfg.box_pool_size, device="meta")
        box_features = model.roi_heads.box_head(pooled)
        class_logits, box_regression = model.roi_heads.box_predictor(box_features)
    br = "<br>"
    h, w = images.image_sizes[0]
    return {
        "resized image (transform)": f"{h} × {w}",
        "padded batch `ImageList.tensors`": _shape(images.tensors),
        "feature maps (backbone)": br.join(f'`"{k}"` {_shape(v)}' for k, v in features.items()),
        "objectness logits (RPN head, per level)": br.join(_shape(t) for t in logits),
        "box deltas (RPN head, per level)": br.join(_shape(t) for t in deltas),
        "anchors per level (Hi·Wi·A)": br.join(str(len(a)) for a in anchors) + (f"{br}total {sum(len(a) for a in anchors)}" if len(anchors) > 1 else ""),
        "proposals per image (after NMS)": f"[≤ {cfg.rpn_post_nms_top_n_test}, 4]",
        "pooled RoIs (box_roi_pool)": _shape(pooled).replace(f"[{rois},", f"[≤ {rois},"),
        "box features (box_head)": _shape(box_features).replace(f"[{rois},", f"[≤ {rois},"),
        "class logits (cls_score)": _shape(class_logits).replace(f"[{rois},", f"[≤ {rois},"),
        "class-specific deltas (bbox_pred)": _shape(box_regression).replace(f"[{rois},", f"[≤ {rois},"),
        "detections per image": f"[≤ {cfg.box_detections_per_img}, 4]",
    }


def shapes_markdown() -> str:
    """One row per stage, one column per preset: the inference shapes of ``_trace``."""
    from fasterrcnn.config import PRESETS

    traces = {name: _trace(name) for name in PRESETS}
    stages = list(next(iter(traces.values())))
    lines = [
        "| stage | " + " | ".join(f"`{n}`" for n in traces) + " |",
        "| --- | " + " | ".join("---" for _ in traces) + " |",
    ]
    for stage in stages:
        lines.append(f"| {stage} | " + " | ".join(traces[n][stage] for n in traces) + " |")
    return "\n".join(lines)


# -- the hook --------------------------------------------------------------------------------------------
def _render(kind: str, argument: str | None, page_path: str) -> str:
    if kind == "cli-help" and argument is None:
        return cli_help_markdown()
    if kind == "presets" and argument is not None:
        return presets_markdown(argument)
    if kind == "shapes" and argument is None:
        return shapes_markdown()
    if kind == "preset-names" and argument is None:
        return preset_names_markdown()
    if kind == "pretrained" and argument is None:
        return pretrained_markdown()
    raise PluginError(f"{page_path}: unknown marker 'fasterrcnn:{kind}{' ' + argument if argument else ''}'")


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every ``<!-- fasterrcnn:... -->`` marker of the page with its generated Markdown."""
    markdown = MARKER.sub(lambda m: _render(m.group(1), m.group(2), page.file.src_path), markdown)
    left = re.search(r"<!--\s*fasterrcnn:.*?-->", markdown)
    if left:
        raise PluginError(f"{page.file.src_path}: malformed marker {left.group(0)!r}")
    return markdown
