"""Dockerfile, Dockerfile.cuda and compose.yaml install and run the project as the Makefile does.

No Docker engine runs here, so the files are read as text: every expectation is derived from the
Makefile (its variables and its ``venv`` recipe, dry-run with ``make -n``) and from pyproject.toml,
so that the images cannot drift from the README's set-up.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"Dockerfile": "cpu", "Dockerfile.cuda": "cuda"}


# -- readers -------------------------------------------------------------------------------------------
def makefile_variables() -> dict[str, str]:
    """``NAME := value`` / ``NAME ?= value`` / ``NAME = value`` lines of the Makefile (comments dropped)."""
    variables = {}
    for line in (ROOT / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z_]+)\s*[:?]?=\s*(.*?)\s*(?:#.*)?$", line)
        if match:
            variables[match.group(1)] = match.group(2)
    return variables


def makefile_targets() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([A-Za-z_][\w.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), re.M)}


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments), ...]`` with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in (ROOT / name).read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, arguments = current.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        current = ""
    assert not current, f"{name}: a continued line at the end"
    return instructions


def args_of(instructions) -> dict[str, str]:
    return dict(arguments.split("=", 1) for keyword, arguments in instructions if keyword == "ARG" and "=" in arguments)


def substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def make_dry_run(*arguments: str) -> list[str]:
    """The commands ``make -n -B`` would run, from the repository's Makefile (nothing is executed)."""
    result = subprocess.run(["make", "-n", "-B", *arguments], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def volume_map(service: dict) -> dict[str, tuple[str, str]]:
    """{container path: (host path, mode)} of a service's short-syntax volumes."""
    result = {}
    for volume in service.get("volumes", []):
        host, container, *mode = volume.split(":")
        result[container] = (host, mode[0] if mode else "rw")
    return result


# -- the Makefile's install step -------------------------------------------------------------------------
def test_the_makefile_venv_step_is_the_single_source_of_the_torch_pin():
    variables = makefile_variables()
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", variables["TORCH_PIN"])
    assert variables["TORCH_INDEX"] == ""  # pip's configured index by default
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(variables["EXTRAS"].split(",")) == {"test", "docs", "deploy", "video", "int8"} <= set(extras)
    py = f"{variables['VENV']}/bin/python"
    plain = make_dry_run("venv")
    assert f"{py} -m pip install --quiet {variables['TORCH_PIN']}" in plain
    assert f"{py} -m pip install --quiet -e '.[{variables['EXTRAS']}]'" in plain
    index = "https://download.pytorch.org/whl/cpu"
    assert f"{py} -m pip install --quiet --index-url {index} {variables['TORCH_PIN']}" in make_dry_run("venv", f"TORCH_INDEX={index}")
    # test and docs need the extras (venv); demo runs with the runtime install only (venv-runtime)
    for target, venv in (("demo", "venv-runtime"), ("test", "venv"), ("docs", "venv")):
        assert re.search(rf"^{target}:.*(?<![\w-]){venv}(?![\w-])", (ROOT / "Makefile").read_text(), re.M), target


def test_the_runtime_install_is_the_pinned_torch_and_the_package_without_extras():
    variables = makefile_variables()
    py = f"{variables['VENV']}/bin/python"
    runtime = [c for c in make_dry_run("venv-runtime") if "pip install" in c]
    assert runtime == [f"{py} -m pip install --quiet {variables['TORCH_PIN']}", f"{py} -m pip install --quiet -e ."]
    # the full environment is the runtime one plus the extras, in that order (the torch pin comes first)
    full = [c for c in make_dry_run("venv") if "pip install" in c]
    assert full == [*runtime, f"{py} -m pip install --quiet -e '.[{variables['EXTRAS']}]'"]
    pins = [c for c in make_dry_run("demo") if "pip install" in c]
    assert pins == runtime  # make demo installs no test or docs extras


# -- the Dockerfiles -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_dockerfile_installs_with_make_venv_runtime_only(name):
    instructions = dockerfile_instructions(name)
    text = (ROOT / name).read_text()
    variables = makefile_variables()
    runs = [arguments for keyword, arguments in instructions if keyword == "RUN"]
    # The project is installed by the Makefile and by nothing else: no pip, no torch version of its own.
    assert not any(re.search(r"\bpip\b|\bpython3? -m venv\b", run) for run in runs), runs
    assert "torch==" not in text and "TORCH_PIN" not in text
    make_calls = [shlex.split(part.strip()) for run in runs for part in re.split(r"&&|;", run) if part.strip().startswith("make ")]
    assert [call[1] for call in make_calls] == ["venv-runtime"], make_calls  # no test or docs extras in the images
    for call in make_calls:
        assert call[1] in makefile_targets()
        for assignment in call[2:]:
            assert assignment.split("=", 1)[0] in variables, f"{name}: make {call[1]} sets an unknown variable {assignment}"
    # The Makefile's own recipe is what runs: it installs the Makefile's pin from the image's index.
    args = args_of(instructions)
    (venv_call,) = make_calls
    overrides = dict(substitute(a, args).split("=", 1) for a in venv_call[2:])
    commands = make_dry_run("venv-runtime", *(f"{k}={v}" for k, v in overrides.items()))
    py = f"{variables['VENV']}/bin/python"
    assert [c for c in commands if "pip install" in c] == [
        f"{py} -m pip install --quiet --index-url {overrides['TORCH_INDEX']} {variables['TORCH_PIN']}",
        f"{py} -m pip install --quiet -e .",
    ]
    kind = DOCKERFILES[name]
    pattern = r"https://download\.pytorch\.org/whl/cpu" if kind == "cpu" else r"https://download\.pytorch\.org/whl/cu\d+"
    assert re.fullmatch(pattern, overrides["TORCH_INDEX"])

    # The whole project is copied into the working directory; the venv's bin is on PATH; the entry
    # point is the package's console script.
    workdir = next(arguments for keyword, arguments in instructions if keyword == "WORKDIR")
    assert ("COPY", ". .") in instructions
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("WORKDIR") < keywords.index("COPY") < keywords.index("RUN", keywords.index("COPY"))
    env = [arguments for keyword, arguments in instructions if keyword == "ENV"]
    assert f"PATH={workdir}/{variables['VENV']}/bin:$PATH" in env
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entrypoint = next(arguments for keyword, arguments in instructions if keyword == "ENTRYPOINT")
    assert entrypoint == f'["{next(iter(scripts))}"]'
    # make and a Python the package supports are in the image
    assert any(re.search(r"apt-get install\b.*\bmake\b", run) for run in runs)


def test_the_base_images_fit_the_package_and_the_wheels():
    cpu_from = next(a for k, a in dockerfile_instructions("Dockerfile") if k == "FROM")
    version = re.fullmatch(r"python:(\d+)\.(\d+)-slim", cpu_from)
    assert version, cpu_from
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(v) for v in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())
    assert (int(version.group(1)), int(version.group(2))) >= minimum

    instructions = dockerfile_instructions("Dockerfile.cuda")
    args = args_of(instructions)
    cuda_from = substitute(next(a for k, a in instructions if k == "FROM"), args)
    image = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-\w+-ubuntu(\d+)\.04", cuda_from)
    assert image, cuda_from
    assert int(image.group(3)) >= 22  # Ubuntu 22.04+: python3 >= 3.10
    wheel = re.search(r"/whl/cu(\d+)$", args["TORCH_INDEX"])
    assert wheel.group(1) == image.group(1) + image.group(2), "the CUDA base image and the torch wheel index differ"
    assert any("python3-venv" in a for k, a in instructions if k == "RUN")


def test_dockerignore_keeps_the_local_venv_out_and_the_sources_in():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip().lstrip("/") for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)  # the matcher below knows no exceptions

    def ignored(path: str) -> bool:
        """Docker's rules for the two forms used: ``name`` (a path from the root) and ``**/glob`` (a
        file or folder at any depth); a folder's pattern excludes everything under it."""
        parts = path.split("/")
        for pattern in patterns:
            if pattern.startswith("**/"):
                if any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts):
                    return True
            elif any(fnmatch.fnmatchcase("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
                return True
        return False

    venv = makefile_variables()["VENV"]
    for stamp in (".installed", ".runtime"):
        assert ignored(f"{venv}/{stamp}"), f"a local .venv/{stamp} would make the image's `make venv-runtime` do nothing"
    assert ignored("src/fasterrcnn/cli/__pycache__/train.cpython-311.pyc")
    for needed in ("Makefile", "pyproject.toml", "README.md", "src/fasterrcnn/cli/__init__.py", "src/fasterrcnn/data/voc.py", "src/fasterrcnn/static/index.html"):
        assert (ROOT / needed).exists() and not ignored(needed), needed


# -- compose ---------------------------------------------------------------------------------------------
def test_compose_trains_and_tensorboard_reads_the_runs():
    services = compose()["services"]
    assert {"train", "tensorboard"} <= set(services)
    workdir = {name: next(a for k, a in dockerfile_instructions(name) if k == "WORKDIR") for name in DOCKERFILES}
    for name, service in services.items():
        dockerfile = service["build"]["dockerfile"]
        assert service["build"]["context"] == "." and dockerfile in DOCKERFILES, name
        assert service["image"] == f"fasterrcnn:{DOCKERFILES[dockerfile]}", name

    train = services["train"]
    runs_target = f"{workdir[train['build']['dockerfile']]}/runs"
    runs_host, mode = volume_map(train)[runs_target]
    assert mode == "rw"
    assert train["command"][0] in _subcommands() and "--output" in train["command"]
    assert train["command"][train["command"].index("--output") + 1].startswith("runs/")  # lands in the runs volume

    board = services["tensorboard"]
    assert board["entrypoint"] == ["tensorboard"]
    assert "tensorboard" in " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    logdir = board["command"][board["command"].index("--logdir") + 1]
    assert volume_map(board)[logdir] == (runs_host, "ro")
    port = board["command"][board["command"].index("--port") + 1]
    assert f"{port}:{port}" in board["ports"]
    assert board["command"][board["command"].index("--host") + 1] == "0.0.0.0"

    cuda = services["train-cuda"]
    assert cuda["build"]["dockerfile"] == "Dockerfile.cuda" and cuda["profiles"] == ["cuda"]
    assert volume_map(cuda) == volume_map(train)
    assert cuda["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def _subcommands() -> set[str]:
    from fasterrcnn.cli import build_parser

    parser = build_parser()
    return set(next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices)


def test_the_containers_page_tells_what_the_files_do():
    page = (ROOT / "docs" / "containers.md").read_text()
    for name in DOCKERFILES:
        instructions = dockerfile_instructions(name)
        args = args_of(instructions)
        assert f"`{substitute(next(a for k, a in instructions if k == 'FROM'), args)}`" in page, name
        assert f"`{args['TORCH_INDEX']}`" in page, name
        run = next(a for k, a in instructions if k == "RUN" and a.startswith("make "))
        assert f"RUN {run}" in page, name
    assert "pip install -e ." in page and "pip install -e '.[{}]'".format(makefile_variables()["EXTRAS"]) in page
    for service in compose()["services"]:
        assert f"`{service}`" in page, service
    for command in re.findall(r"^docker compose (?:--profile \w+ )?run --rm (?:-p \S+ )?(\S+) (\S+)", page, re.M):
        service, subcommand = command
        assert service in compose()["services"] and subcommand in _subcommands(), command
