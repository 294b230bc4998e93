"""oneDNN-prepacked weights for float32 inference on the CPU: linear layers (what ``Detector`` runs by default)
and, on request, the backbone frozen per input size.

``prepack_linear(model)`` makes every ``nn.Linear`` of a model a ``PackedLinear``: the same parameters
(the same ``Parameter`` objects, so the ``state_dict`` and an optimizer's references are unchanged), whose
float32 CPU inference multiplies by a copy of the weight reordered once into oneDNN's blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``) instead of reordering it on every call. The box head's
fc6 (``[R, C*S*S] @ [C*S*S, D]``, R = 1000 RoIs at test time) is the largest matrix product of the FPN
presets, so this is where it pays (docs/deployment.md, "Faster eager inference"). The results equal
``nn.Linear``'s up to float rounding (another summation order).

Everything else runs ``nn.Linear``'s own forward: training mode, gradients enabled, autocast (bf16 / fp16),
other devices and dtypes, tracing (ONNX export), and builds of torch without oneDNN.

``FrozenBackbone(backbone)`` (``FasterRCNN.frozen_backbone``, set by ``Detector(freeze_backbone=True)``) runs
the backbone with its FPN as TorchScript traced on the padded input's size, ``torch.jit.freeze``d and
``torch.jit.optimize_for_inference``d (convolutions on oneDNN-packed weights, fused with their ReLU), one
per input size, the last ``sizes`` sizes kept. A traced FPN is specialised to its input size (its upsampling
sizes), hence one per size; tracing one takes seconds (mobilenet_v3_large_fpn) to a minute or more
(resnet50_fpn) on a loaded CPU, which many images of that size repay.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import torch
from torch import Tensor, nn

__all__ = ["FrozenBackbone", "PackedLinear", "prepack_linear"]


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled()


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _float32_cpu_inference(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module(x)`` is float32 CPU inference: eval mode, no gradients, no autocast, not traced."""
    return (
        not module.training
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not _autocast_on_cpu()
        and x.device.type == "cpu" and x.dtype == torch.float32
    )  # fmt: skip


class PackedLinear(nn.Linear):
    """``nn.Linear`` that keeps a oneDNN-packed copy of its weight for float32 CPU inference.

    forward(x: Tensor[..., in_features]) -> Tensor[..., out_features], as ``nn.Linear``. The packed copy
    is made on the first call that uses it and made again when the weight changes (another tensor, or the
    same one modified in place: its version counter); it is not part of the state_dict, and copies and
    pickles of the module leave it out.
    """

    _packed: Tensor | None = None
    _packed_key: tuple[int, int, int] | None = None

    @classmethod
    def of(cls, linear: nn.Linear) -> "PackedLinear":
        """A PackedLinear sharing ``linear``'s weight and bias (and its training mode)."""
        packed = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        packed.weight = linear.weight
        packed.bias = linear.bias
        return packed.train(linear.training)

    def uses_packed(self, x: Tensor) -> bool:
        """Whether this call runs on the packed weight (float32 CPU inference without gradients)."""
        weight = self.weight
        return _float32_cpu_inference(self, x) and weight.device.type == "cpu" and weight.dtype == torch.float32 and x.dim() >= 2 and _onednn_linear_available()

    def forward(self, x: Tensor) -> Tensor:
        if not self.uses_packed(x):
            return super().forward(x)
        key = (id(self.weight), self.weight.data_ptr(), self.weight._version)
        if self._packed_key != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), None)
            self._packed_key = key
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self._packed, bias, "none", [], "")

    def __getstate__(self) -> dict:
        # The packed copy is an opaque oneDNN tensor (no storage to copy or pickle): made again on use.
        state = self.__dict__.copy()
        state.pop("_packed", None)
        state.pop("_packed_key", None)
        return state


def prepack_linear(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (exactly that class) by a ``PackedLinear`` with the same
    parameters, in place. Returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.of(child))
    return model


class FrozenBackbone:
    """The backbone (with its FPN) frozen for float32 CPU inference, one TorchScript module per input size.

    ``frozen(x: Tensor[N, 3, Hp, Wp])``: what ``backbone(x)`` returns (feature maps ``[N, C, Hi, Wi]``), equal up
    to float rounding; ``usable(x)``: whether the call is float32 CPU inference (eval mode, no gradients, no
    autocast, not traced), the only calls ``FasterRCNN`` gives it. A size met for the first time is traced
    then; the ``sizes`` most recently used are kept. The frozen modules hold copies of the weights: when a
    parameter of the backbone changes (another tensor, or modified in place) every one is traced again.
    Copies and pickles leave the frozen modules out (they are traced again on use).
    """

    def __init__(self, backbone: nn.Module, sizes: int = 4):
        if sizes < 1:
            raise ValueError(f"sizes must be at least 1, got {sizes}")
        self.backbone = backbone
        self.sizes = sizes
        self.frozen: OrderedDict[tuple[int, ...], torch.jit.ScriptModule] = OrderedDict()
        self.weights: tuple[tuple[int, int], ...] = ()

    def usable(self, x: Tensor) -> bool:
        return _float32_cpu_inference(self.backbone, x)

    def __call__(self, x: Tensor):
        weights = tuple((p.data_ptr(), p._version) for p in self.backbone.parameters())
        if weights != self.weights:
            self.frozen.clear()
            self.weights = weights
        size = tuple(x.shape)
        module = self.frozen.pop(size, None)
        if module is None:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning)  # this torch deprecates torch.jit
                traced = torch.jit.trace(self.backbone, x, strict=False, check_trace=False)
                module = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            while len(self.frozen) >= self.sizes:
                self.frozen.popitem(last=False)  # the least recently used size
        self.frozen[size] = module  # most recently used last
        return module(x)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "frozen": OrderedDict(), "weights": ()}
