"""Loading torchvision ImageNet classification files (e.g. ``resnet50-0676ba61.pth``) into backbones.

A file is read with ``fasterrcnn.io.load_tensors`` (``torch.load(weights_only=True)``: tensors and plain
containers only, nothing executed) and must be a flat state dict ``{key: Tensor}``. Its keys are sent
to the backbone's modules by ``Route``s: a key starting with ``Route.prefix`` goes to ``Route.module``
under the name ``Route.target + rest``. Keys starting with an ``ignored`` prefix (the ImageNet classifier,
e.g. ``fc.`` or ``classifier.6.``) are dropped. The check is strict: every tensor of every routed module
must come from the file with the same shape, and every other key of the file is an error; only
``num_batches_tracked`` counters of BatchNorm layers are accepted without a place (the backbones use
frozen BatchNorm, which has none). Any problem raises ``DataError(path, ...)`` naming a few keys.
Nothing is ever downloaded.

``load_state_dict_strictly`` is the same strict check for a whole model's state dict (a detection
weights file, a checkpoint's ``model``): its errors name the keys and shapes that do not fit.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from fasterrcnn.errors import DataError
from fasterrcnn.io import load_tensors
from fasterrcnn.reading import check_regular_file

_SHOWN = 3  # how many offending keys an error message names


@dataclass(frozen=True)
class Route:
    """File keys ``prefix + rest`` are loaded into ``module`` as ``target + rest``."""

    prefix: str
    module: nn.Module
    target: str = ""


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict file safely; DataError (one line) when it is missing, unsafe or not a state dict."""
    path = Path(path)
    try:
        check_regular_file(path)  # a named pipe would block the read
        obj = load_tensors(path, map_location="cpu", what="PyTorch weights file")
    except DataError:  # plainly another kind of file (an image, text ...)
        raise
    except FileNotFoundError:
        raise DataError(path, "weights file not found") from None
    except pickle.UnpicklingError as e:
        raise DataError(path, f"not a plain PyTorch weights file, refused by safe loading ({_reason(e)})") from None
    except Exception as e:  # truncated zip, random bytes, permission denied...
        raise DataError(path, f"cannot read weights file ({type(e).__name__}: {_reason(e)})") from None
    if not isinstance(obj, Mapping):
        raise DataError(path, f"not a state dict (a mapping of names to tensors); found {type(obj).__name__}")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise DataError(path, f"not a state dict: entries that are not tensors: {_few(bad)}")
    return dict(obj)


def load_routed_weights(
    path: str | Path, routes: Sequence[Route], *, ignored: Sequence[str] = (), layout: str = "torchvision"
) -> None:
    """Load the file at ``path`` into the routed modules (strict; see the module docstring).

    ``layout`` names the expected file layout in error messages (e.g. "torchvision resnet50").
    Raises DataError when keys are missing or unexpected or shapes differ; then no module is changed.
    """
    state = read_state_dict(path)
    modules: dict[int, nn.Module] = {}
    given: dict[int, dict[str, Tensor]] = {}
    for route in routes:
        modules.setdefault(id(route.module), route.module)
        given.setdefault(id(route.module), {})

    unexpected: list[str] = []
    for key, value in state.items():
        if any(key.startswith(p) for p in ignored):
            continue
        route = next((r for r in routes if key.startswith(r.prefix)), None)
        if route is None:
            if not key.endswith("num_batches_tracked"):
                unexpected.append(key)
            continue
        given[id(route.module)][route.target + key[len(route.prefix) :]] = value

    missing: list[str] = []
    mismatched: list[str] = []
    for mid, module in modules.items():
        expected = module.state_dict()
        sub = given[mid]
        for name in list(sub):
            if name not in expected:
                if not name.endswith("num_batches_tracked"):
                    unexpected.append(_file_key(routes, module, name))
                del sub[name]
        for name, tensor in expected.items():
            if name not in sub:
                missing.append(_file_key(routes, module, name))
            elif sub[name].shape != tensor.shape:
                mismatched.append(
                    f"{_file_key(routes, module, name)} is {list(sub[name].shape)}, expected {list(tensor.shape)}"
                )

    if missing or unexpected or mismatched:
        raise DataError(path, f"does not match the {layout} layout: {_misfit(missing, unexpected, mismatched)}")

    with torch.no_grad():
        for mid, module in modules.items():
            module.load_state_dict(given[mid], strict=True)


def load_state_dict_strictly(module: nn.Module, state: object, path: str | Path, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, or DataError(path, ...) naming what does not fit.

    ``what`` names the model in the message: "weights do not fit {what}: missing keys a, b, c (and
    N more); unexpected keys ...; wrong shapes: k is [21, 1024], expected [6, 1024]".  Only
    ``num_batches_tracked`` counters are accepted without a place (frozen BatchNorm drops them).
    On an error the module is unchanged.
    """
    if not isinstance(state, Mapping):
        raise DataError(path, f"weights do not fit {what}: not a state dict (found {type(state).__name__})")
    not_tensors = [str(k) for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise DataError(path, f"weights do not fit {what}: entries that are not tensors: {_few(not_tensors)}")
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected and not str(k).endswith("num_batches_tracked")]
    mismatched = [
        f"{k} is {list(v.shape)}, expected {list(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise DataError(path, f"weights do not fit {what}: {_misfit(missing, unexpected, mismatched)}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:  # a counter outside frozen BatchNorm: what torch says, on one line
        raise DataError(path, f"weights do not fit {what} ({' '.join(str(e).split())[:300]})") from None


def _misfit(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """One line naming a few keys of each kind of misfit."""
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes: {_few(mismatched)}")
    return "; ".join(problems)


def _file_key(routes: Sequence[Route], module: nn.Module, name: str) -> str:
    """The file key that would load into ``module``'s entry ``name`` (for error messages)."""
    candidates = [r for r in routes if r.module is module and name.startswith(r.target)]
    if not candidates:
        return name
    route = max(candidates, key=lambda r: len(r.target))
    return route.prefix + name[len(route.target) :]


def _reason(error: Exception) -> str:
    """The informative part of torch.load's (long, multi-line) error message, on one line."""
    text = str(error)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    refused = [line for line in text.splitlines() if "GLOBAL" in line]  # the object refused (newer torch)
    if refused:
        text = refused[0]
    text = " ".join(text.split()).split(" Check the documentation of torch.load", 1)[0]
    text = text.split(". ", 1)[0].rstrip(".")
    return (text[:200] + "...") if len(text) > 200 else (text or type(error).__name__)


def _few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return shown if len(keys) <= _SHOWN else f"{shown} (and {len(keys) - _SHOWN} more)"
