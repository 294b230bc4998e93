"""Data-parallel training across processes: torchrun's environment, the process group and small helpers.

Processes are started by ``torchrun`` (never by this package). torchrun sets, for every process,
``RANK`` (0 .. WORLD_SIZE-1 over all machines), ``WORLD_SIZE``, ``LOCAL_RANK`` (0 .. processes on
this machine - 1) and the rendezvous address; ``init_distributed`` reads them and joins the process
group ("env://"):

- CUDA: one GPU per process, ``cuda:LOCAL_RANK``, backend NCCL;
- CPU: backend gloo (tests, or machines without GPUs).

Without torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised and every helper answers as a
single process would (rank 0 of 1, ``barrier`` does nothing ...), so library code calls them
unconditionally.

SyncBatchNorm: ``convert_sync_batchnorm`` turns the trainable BatchNorm layers of a model into
``torch.nn.SyncBatchNorm`` on CUDA, and into ``CPUSyncBatchNorm`` (below) on the CPU, where torch's
SyncBatchNorm refuses to run. Both normalise with the statistics of the global batch; their state
dict keys are BatchNorm's, so checkpoints load into the unconverted model. Frozen BatchNorm
(``FrozenBatchNorm2d``, the ResNet / MobileNet backbones) has no batch statistics and is untouched.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fasterrcnn.errors import ConfigError

__all__ = [
    "CPUSyncBatchNorm",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "cleanup",
    "convert_sync_batchnorm",
    "gather_object",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "unwrap_model",
    "wrap_model",
]


# -- the process group ----------------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """True in a process started by torchrun with more than one process in the job."""
    return "WORLD_SIZE" in os.environ and _env_int("WORLD_SIZE") > 1


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"environment variable {name}={value!r} is not an integer (start the job with torchrun)") from None


def init_distributed(device: str | torch.device | None = "auto", *, timeout_minutes: float = 30.0) -> torch.device:
    """Join torchrun's process group (when launched by it) and return this process's device.

    ``device``: ``"auto"`` / ``None`` (CUDA when available, else CPU), ``"cuda"`` or ``"cpu"``; under
    torchrun a CUDA process always uses ``cuda:LOCAL_RANK`` (naming one GPU, e.g. ``cuda:1``, is a
    ConfigError there). Without torchrun this is ``device.resolve_device(device)``. Calling it again
    in an initialised process returns the same device.
    """
    from fasterrcnn.device import resolve_device

    if not launched_by_torchrun():
        return resolve_device(device)
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world_size or local_rank < 0:
        raise ConfigError(f"environment variables RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} do not fit together (start the job with torchrun)")
    if device is not None and str(device) not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--device {device}: under torchrun every process uses its own GPU (cuda:LOCAL_RANK); "
            "pass --device cuda, cpu or auto, and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    name = "auto" if device is None else str(device)
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but this machine shows {torch.cuda.device_count()} CUDA device(s); "
                "start at most that many processes per machine (--nproc_per_node)"
            )
        result = torch.device("cuda", local_rank)
        torch.cuda.set_device(result)  # NCCL's object collectives use the current device
        backend = "nccl"
    else:
        result, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        if not os.environ.get("MASTER_ADDR"):  # env:// rendezvous needs both; torch's error would be a traceback
            raise ConfigError("environment variable MASTER_ADDR is not set (start the job with torchrun, which sets it)")
        _env_int("MASTER_PORT")
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return result


def cleanup() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """True when a process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank in the process group (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes training together (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0: the process that writes checkpoints, logs, TensorBoard events and plots."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if is_distributed():
        dist.barrier()


# -- collectives ------------------------------------------------------------------------------------------
def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process). Picklable objects."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """The list of every rank's ``obj`` on rank ``dst``, None on the other ranks (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(obj, gathered, dst=dst)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself in a single process)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``tensor`` over the ranks (a new tensor; ``tensor`` itself in a single process).

    With NCCL the tensor must be on this process's GPU.
    """
    if not is_distributed():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics ...) into every rank's ``module``.

    DDP does it before every training forward; call it before using the unwrapped model for anything
    else (evaluation), so that every rank computes with the weights a checkpoint of rank 0 holds.
    """
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


# -- the model -------------------------------------------------------------------------------------------
def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(model)`` in a distributed run (``model`` itself otherwise).

    The model's parameters must already be on ``device`` (``cuda:LOCAL_RANK`` or the CPU). Rank 0's
    parameters and buffers are broadcast to the others when wrapping.
    """
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (state dicts without ``module.``)."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over the ranks: the gradient of every rank's input is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad_output)


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the batch of all ranks, computed with any backend.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs; this one sums per-channel statistics over the ranks
    with a differentiable all-reduce (its backward sums the gradients of every rank, which is what the
    global batch's BatchNorm backward needs: DDP then averages the parameters' gradients), so it also
    runs with gloo on the CPU. Two passes (sum, then sum of squared deviations from the global mean)
    keep the variance as accurate as BatchNorm's. Statistics are float32 (float64 for float64 inputs).
    Outside training, or without a process group, it is ``F.batch_norm``, as BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        x = input if input.dtype == torch.float64 else input.float()
        dims = [0] + list(range(2, x.dim()))  # every dimension but the channels
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        local_count = x.new_full((1,), x.numel() // x.shape[1])
        sums = _AllReduceSum.apply(torch.cat((x.sum(dims), local_count)))  # [C + 1]: per-channel sums, element count
        total = sums[-1].detach()  # values per channel in the global batch
        if float(total) < 2:
            raise ValueError(f"expected more than 1 value per channel when training, got input size {list(input.shape)}")
        mean = sums[:-1] / total  # [C]
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / total  # [C], biased (normalisation)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var.detach() * (total / (total - 1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach().to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm*d`` of ``model`` by a synchronised one (see the module docstring).

    CUDA: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``; other devices: ``CPUSyncBatchNorm``.
    The new layers share the old ones' parameters and buffers. Returns the (possibly new) root module.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm)):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
