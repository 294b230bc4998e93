"""Rebuild the seeded weights and image of the torchvision parity cases (tests/fixtures/torchvision).

The recipe is the one in ../shared/reference/torchvision/README.md: torchvision 0.29.1 was run in eval
mode on ``rand_image(seed)`` with the weights of ``seeded_state_dict(name)``; its outputs are stored in
``parity_<name>.pt``. torch's CPU generator gives the same numbers across versions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures" / "torchvision"


def index() -> dict:
    return json.loads((FIXTURES / "index.json").read_text())


def key_layout(name: str) -> list[tuple[str, list[int], str]]:
    """torchvision's ``state_dict`` layout of model ``name``: (key, shape, dtype) in order."""
    return [tuple(entry) for entry in json.loads((FIXTURES / f"keys_{name}.json").read_text())]


def parity_case(name: str) -> dict:
    return torch.load(FIXTURES / f"parity_{name}.pt", weights_only=True)


def rand_image(seed: int) -> torch.Tensor:
    return torch.rand(3, 480, 640, generator=torch.Generator().manual_seed(seed))


def _seeded_tensor(key: str, shape: list[int], dtype: str, g: torch.Generator) -> torch.Tensor:
    if dtype == "int64":
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if key.endswith("running_mean"):
        return (torch.rand(shape, generator=g) - 0.5) * 0.2
    if len(shape) == 1 and key.endswith(".weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 0.01 * torch.randn(shape, generator=g)
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=g) * math.sqrt(1 / fan_in)


def seeded_state_dict(name: str, *, with_num_batches_tracked: bool = True) -> dict[str, torch.Tensor]:
    """The parity case's weights for detection model ``name`` (torchvision key names)."""
    info = index()[name]
    seed = info["parity_seed"]
    layout = key_layout(name)
    state = {}
    for i, (key, shape, dtype) in enumerate(layout):
        g = torch.Generator().manual_seed(seed * 100003 + i)
        state[key] = _seeded_tensor(key, shape, dtype, g)
    state["rpn.head.bbox_pred.weight"] *= 0.1
    state["roi_heads.box_predictor.bbox_pred.weight"] *= 0.1
    state["roi_heads.box_predictor.cls_score.weight"] *= info["cls_gain"]
    state["roi_heads.box_predictor.cls_score.bias"] = torch.randn(
        91, generator=torch.Generator().manual_seed(seed * 100003 + len(layout))
    )
    if not with_num_batches_tracked:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return state
