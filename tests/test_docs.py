"""The documentation: ``mkdocs build --strict`` succeeds, its generated parts are there and current, and
what the pages and the README tell a reader to type exists (commands, options, Python examples).

The site is built once per test session into a temporary folder (about ten seconds); mkdocs,
mkdocs-material and mkdocstrings come with the ``docs`` extra, which ``make test`` installs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import importlib
import inspect
import io
import os
import re
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_detector import CLASS_NAMES, write_predictable_checkpoint, write_test_image

from fasterrcnn.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HELP_COLUMNS = "100"  # docs/hooks.py renders --help at this width


# -- helpers ---------------------------------------------------------------------------------------------
def subcommands() -> dict:
    parser = build_parser()
    return dict(next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices)


def all_options() -> set[str]:
    parser = build_parser()
    options = {s for a in parser._actions for s in a.option_strings}
    for sub in subcommands().values():
        options |= {s for a in sub._actions for s in a.option_strings}
    return options


def squash(text: str) -> str:
    return " ".join(text.split())


class _Text(HTMLParser):
    """The visible text of a page, and its tables as lists of rows of cell texts."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(squash("".join(self._cell)))
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.parts.append(data)
        if self._cell is not None:
            self._cell.append(data)


def read_page(site: Path, page: str) -> _Text:
    parser = _Text()
    parser.feed((site / page / "index.html").read_text(encoding="utf-8") if page else (site / "index.html").read_text(encoding="utf-8"))
    return parser


def code_blocks(markdown: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, re.S | re.M)


def command_lines(markdown: str) -> list[str]:
    """The shell lines of the page's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in code_blocks(markdown, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


PAGES = sorted(p for p in DOCS.rglob("*.md"))
READER_FILES = [ROOT / "README.md", *PAGES]


# -- the build -------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert not re.search(r"^(WARNING|ERROR)\b", log, re.M), log
    return out


def test_every_page_of_the_nav_is_built(site):
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            if isinstance(item, str):
                yield item
            else:
                for value in item.values():
                    yield from pages(value) if isinstance(value, list) else [value]

    listed = sorted(pages(config["nav"]))
    assert listed == sorted(str(p.relative_to(DOCS)) for p in PAGES)  # no page left out of the nav
    for page in listed:
        folder = page.removesuffix(".md").removesuffix("index").rstrip("/")
        built = site / folder / "index.html"
        assert built.is_file(), page
        assert not re.search(r"<!--\s*fasterrcnn:", built.read_text(encoding="utf-8")), f"{page}: a marker was left unexpanded"


# -- generated content -----------------------------------------------------------------------------------
def test_cli_reference_holds_the_current_help_of_every_subcommand(site, monkeypatch):
    monkeypatch.setenv("COLUMNS", HELP_COLUMNS)
    text = "".join(read_page(site, "cli").parts)
    parser = build_parser()
    assert parser.format_help().strip() in text
    assert set(subcommands()) >= {"train", "eval", "predict", "demo", "serve"}
    for name, sub in subcommands().items():
        assert f"$ fasterrcnn {name} --help\n{sub.format_help().strip()}" in text, name


def test_presets_page_tabulates_every_field_of_every_preset(site):
    from fasterrcnn.config import PRESETS

    page = read_page(site, "presets")
    (model_table, train_table) = [t for t in page.tables if t and t[0][0] == "field"]
    for table, section in ((model_table, "model"), (train_table, "train")):
        assert table[0][1:-1] == list(PRESETS)
        rows = {row[0]: row[1:-1] for row in table[1:] if row and row[1:-1] and any(row[1:-1])}
        fields = [f.name for f in dataclasses.fields(getattr(next(iter(PRESETS.values())), section))]
        assert list(rows) == fields
        for field in fields:
            for preset, cell in zip(PRESETS.values(), rows[field]):
                value = getattr(getattr(preset, section), field)
                if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
                    assert cell == repr(value), (section, field, preset.name, cell)
                elif isinstance(value, float):
                    assert float(cell) == pytest.approx(value, rel=1e-5), (section, field, preset.name, cell)
                else:  # tuples: every number in it, in order (repeated levels are shown as "x N")
                    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", cell.split(" × ")[0])]
                    flat = [float(v) for v in _flatten(value)]
                    assert flat[: len(numbers)] == pytest.approx(numbers, rel=1e-5), (section, field, preset.name, cell)


def test_pretrained_weights_page_tabulates_every_registered_file(site):
    from fasterrcnn.config import PRESETS
    from fasterrcnn.pretrained import PRETRAINED

    page = read_page(site, "pretrained-weights")
    (table,) = [t for t in page.tables if t and t[0][0] == "name"]
    assert table[0] == ["name", "what", "file (URL)", "accuracy (torchvision)", "use with"]
    rows = {row[0]: row[1:] for row in table[1:]}
    assert list(rows) == list(PRETRAINED)
    raw = (site / "pretrained-weights" / "index.html").read_text(encoding="utf-8")
    for name, entry in PRETRAINED.items():
        kind, filename, accuracy, use = rows[name]
        assert (kind, filename, accuracy) == (entry.kind, entry.filename, entry.accuracy), name
        assert f'href="{entry.url}"' in raw, name
        words = set(re.findall(r"[\w-]+", use))
        assert ("--backbone-weights" in words) == (entry.kind == "ImageNet backbone") and name in words, name
        for preset, config in PRESETS.items():  # every preset the file fits is named, and only those
            fits = config.model.backbone in entry.fits if "--backbone-weights" in words else preset in entry.fits
            assert (preset in words) == fits, (name, preset)


def _flatten(value):
    for v in value:
        if isinstance(v, tuple):
            yield from _flatten(v)
        else:
            yield v


def test_architecture_page_has_the_shapes_of_every_preset(site):
    from fasterrcnn.config import PRESETS

    page = read_page(site, "architecture")
    shapes = next(t for t in page.tables if t and t[0][0] == "stage")
    assert shapes[0][1:] == list(PRESETS)
    stages = {row[0]: row[1:] for row in shapes[1:]}
    assert {"resized image (transform)", "feature maps (backbone)", "pooled RoIs (box_roi_pool)", "class logits (cls_score)"} <= set(stages)
    # The paper's setting: a 375 x 500 VOC image is resized to a short side of 600 (600 x 800);
    # VGG16's conv5_3 has stride 16 and 512 channels; pooled RoIs are 7 x 7; 21 classes with background.
    vgg = {stage: cells[list(PRESETS).index("vgg16")] for stage, cells in stages.items()}
    assert vgg["resized image (transform)"] == "600 × 800"
    assert vgg["feature maps (backbone)"] == '"0" [1, 512, 38, 50]'
    assert vgg["pooled RoIs (box_roi_pool)"] == "[≤ 300, 512, 7, 7]"
    assert vgg["class logits (cls_score)"] == "[≤ 300, 21]"


def _documented_modules() -> dict[str, list[str]]:
    """{API page: [module names of its ``::: module`` directives]}."""
    return {
        str(page.relative_to(DOCS).with_suffix("")): re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), re.M)
        for page in sorted((DOCS / "api").glob("*.md"))
    }


def _first_paragraph(doc: str) -> str:
    paragraph = doc.strip().split("\n\n")[0]
    return squash(re.sub(r"[`*]", "", paragraph))


def test_api_reference_pages_hold_the_docstrings(site):
    documented = _documented_modules()
    modules = [m for ms in documented.values() for m in ms]
    assert {"fasterrcnn.detector", "fasterrcnn.serve", "fasterrcnn.engine.trainer", "fasterrcnn.engine.validation", "fasterrcnn.modeling.faster_rcnn"} <= set(modules)
    checked = 0
    for page, names in documented.items():
        if not names:
            continue
        raw = (site / page / "index.html").read_text(encoding="utf-8")
        text = squash(re.sub(r"[`*]", "", "".join(read_page(site, page).parts)))
        for name in names:
            module = importlib.import_module(name)
            assert f'id="{name}"' in raw, (page, name)
            if module.__doc__:
                assert _first_paragraph(module.__doc__) in text, (page, name)
            public = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
            for attr in public:
                obj = getattr(module, attr)
                if not (inspect.isclass(obj) or inspect.isfunction(obj)) or obj.__module__ != name:
                    continue
                assert f'id="{name}.{attr}"' in raw, (page, f"{name}.{attr}")
                doc = inspect.getdoc(obj)
                if doc and obj.__doc__:  # its own docstring, not one inherited
                    assert _first_paragraph(doc) in text, (page, f"{name}.{attr}")
                    checked += 1
    assert checked > 50


# -- what the pages tell the reader to type ----------------------------------------------------------------
@pytest.mark.parametrize("path", READER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_in_the_pages_exists(path):
    markdown = path.read_text()
    parser = build_parser()
    targets = set(re.findall(r"^([A-Za-z_][\w.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[:?]?=", (ROOT / "Makefile").read_text(), re.M))
    dry_run = subprocess.run(["make", "-n", "-B", "venv"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    venv_commands = {squash(c.replace(" --quiet", "")) for c in dry_run.splitlines()}
    for line in command_lines(markdown):
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value command ...
            words = words[1:]
        if not words:
            continue
        if words[0] == "make":
            for word in words[1:]:
                if "=" in word:
                    assert word.split("=")[0] in variables, (path.name, line)
                else:
                    assert word in targets, (path.name, line)
        elif words[0] in ("fasterrcnn", ".venv/bin/fasterrcnn"):
            with contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    parser.parse_args(words[1:])
                except SystemExit as e:
                    pytest.fail(f"{path.name}: `{line}` does not parse ({e.code}): {err.getvalue().strip()}")
        elif words[:4] == [".venv/bin/python", "-m", "pip", "install"]:  # a step of `make venv`, spelled out
            assert squash(line) in venv_commands, (path.name, line)


@pytest.mark.parametrize("path", READER_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_option_named_in_the_pages_exists(path):
    """Inline code such as `--val-split` or `--metric voc|voc07|coco` in the prose names a real option."""
    markdown = path.read_text()
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    options = all_options()
    others = {"--gpus", "--build-arg", "--profile", "--rm", "--strict", "--index-url", "--help"}
    others |= {"--nproc_per_node", "--nnodes", "--node_rank", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id"}  # torchrun's
    for span in re.findall(r"`(--[a-z][\w-]*)[^`]*`", prose):
        assert span in options or span in others, f"{path.name}: `{span}` is not an option of fasterrcnn"


PYTHON_EXAMPLES = [  # the detector examples (the whole-run examples need a data set: test_run_examples_fit_the_api)
    (path, index)
    for path in (ROOT / "README.md", DOCS / "index.md", DOCS / "getting-started.md")
    for index, block in enumerate(code_blocks(path.read_text(), "python"))
    if "from_checkpoint(" in block
]


def test_run_examples_fit_the_api():
    """Every call of fasterrcnn.train / evaluate / predict / compress in the pages binds to the function's signature."""
    import ast

    import fasterrcnn

    calls = 0
    for path in READER_FILES:
        for block in code_blocks(path.read_text(), "python"):
            for node in ast.walk(ast.parse(block)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
                    if node.func.value.id == "fasterrcnn" and node.func.attr in ("train", "evaluate", "predict", "compress"):
                        signature = inspect.signature(getattr(fasterrcnn, node.func.attr))
                        signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords})
                        calls += 1
    assert calls >= 3


def test_the_readme_has_a_five_line_detector_example():
    (example,) = [block for block in code_blocks((ROOT / "README.md").read_text(), "python") if "Detector" in block]
    lines = example.strip().splitlines()
    assert len(lines) == 5
    assert lines[0] == "from fasterrcnn import Detector"
    assert "Detector.from_checkpoint(" in lines[1] and ".detect(" in lines[2] and ".draw(" in lines[4]


@pytest.mark.parametrize("path,index", PYTHON_EXAMPLES, ids=[f"{p.name}[{i}]" for p, i in PYTHON_EXAMPLES])
def test_python_examples_run(path, index, tmp_path, monkeypatch, capsys):
    """Each Python example runs as printed, with a checkpoint and an image at the paths it names."""
    source = code_blocks(path.read_text(), "python")[index]
    checkpoints = re.findall(r'from_checkpoint\("([^"]+)"', source)
    images = re.findall(r'\.detect\("([^"]+)"', source)
    outputs = re.findall(r'\.save\("([^"]+)"\)', source)
    assert checkpoints and images and outputs, source
    monkeypatch.chdir(tmp_path)
    for checkpoint in checkpoints:
        (tmp_path / checkpoint).parent.mkdir(parents=True, exist_ok=True)
        write_predictable_checkpoint(tmp_path / checkpoint)
    for image in images:
        write_test_image(tmp_path / image)
    exec(compile(source, f"{path.name} example {index}", "exec"), {"__name__": "__example__"})
    printed = capsys.readouterr().out
    assert CLASS_NAMES[0] in printed  # the predictable model detects class 1
    for output in outputs:
        from PIL import Image

        with Image.open(tmp_path / output) as picture:
            assert picture.size == Image.open(tmp_path / images[0]).size
