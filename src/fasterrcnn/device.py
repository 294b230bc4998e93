"""Where the model runs: the device (``"auto"``, ``"cpu"``, ``"cuda:1"`` ...) and its precision.

The training engine, the evaluator and ``Detector`` share these helpers, so training and inference
accept and refuse the same devices and autocast dtypes.

Inference precision (``resolve_precision``): ``"f32"``; ``"bf16"`` / ``"fp16"``, the forward pass under
``torch.autocast`` in that dtype; ``"int8"``, an OpenVINO file written by ``fasterrcnn export --int8``; or
``"auto"``: bf16 where the device multiplies in bf16 (a CUDA GPU that supports it; a CPU with the
avx512_bf16 instructions or AMX units, asked of torch at run time: ``bf16_support``), else f32. ``auto`` is
decided by the capability, not by a timed trial: bf16 autocast measured faster than f32 on the presets
measured on a CPU with avx512_bf16 (docs/deployment.md), and several times slower on a CPU without it.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys

import torch

from fasterrcnn.errors import ConfigError

__all__ = ["AMP_DTYPES", "PRECISIONS", "autocast_context", "autocast_dtype", "bf16_support", "keep_freed_memory", "resolve_device", "resolve_precision"]

logger = logging.getLogger("fasterrcnn")

PRECISIONS = ("auto", "f32", "bf16", "fp16", "int8")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise the named device.

    Raises ConfigError for a name that is not a device, or CUDA on a machine without it.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {device!r} is not a device (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: CUDA is not available on this machine")
    return device


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(amp: str | None, device: torch.device) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of mixed precision ``amp`` (``"bf16"``, ``"fp16"``, or None: float32) on ``device``.

    Raises ConfigError where it cannot run: fp16 on the CPU, bf16 on a GPU without it, other devices.
    """
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise ConfigError(f"mixed precision is one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if device.type == "cpu" and dtype != torch.bfloat16:
        raise ConfigError(f"mixed precision on the CPU runs in bf16 only (got {amp!r}); use bf16 (--amp-dtype bf16)")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{device} does not support bf16; use --amp-dtype fp16")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"mixed precision is supported on cpu and cuda devices, not {device.type}")
    return dtype


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` on ``device`` in ``dtype`` (from ``autocast_dtype``); a no-op for None (float32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """``(whether device computes in bf16 natively, why)``: on CUDA ``torch.cuda.is_bf16_supported()``; on the
    CPU the avx512_bf16 instructions or AMX tiles (``torch.cpu._is_avx512_bf16_supported`` /
    ``_is_amx_tile_supported``; oneDNN emulates bf16 elsewhere, slower than float32)."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        return supported, f"{device} {'supports' if supported else 'does not support'} bf16"
    if device.type != "cpu":
        return False, f"no bf16 autocast on {device.type}"
    found = [name for name, check in (("AMX", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")) if getattr(torch.cpu, check, lambda: False)()]
    return bool(found), f"this CPU has {' and '.join(found)}" if found else "this CPU has no bf16 instructions (avx512_bf16 or AMX)"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a model runs in on ``device``: ``precision`` itself, or for ``"auto"`` bf16 where
    ``bf16_support`` says so, else f32 (logged in one line). Raises ConfigError for an unknown name, and
    (``autocast_dtype``) for fp16 on the CPU or bf16 on a GPU without it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision is one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        supported, why = bf16_support(device)
        precision = "bf16" if supported else "f32"
        logger.info("precision auto: %s (%s)", precision, why)
    elif precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision fp16 runs on CUDA only; on the CPU use bf16, f32 or auto")
    elif precision in AMP_DTYPES:
        autocast_dtype(precision, device)  # refuses what cannot run
    return precision


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Makes the C library keep freed memory for the next allocation instead of giving it back to the system.

    A forward pass on the CPU allocates its large tensors afresh (resnet50_fpn at 800x1088: feature maps of
    up to 56 MB). glibc serves an allocation above its mmap threshold (32 MiB at most) with a new mapping
    and unmaps it when it is freed, so every pass faults those pages in again: about 11,000 page faults and
    a tenth of resnet50_fpn's time (docs/deployment.md, "Faster eager inference"). With mappings for
    allocations off (``M_MMAP_MAX`` 0) and trimming off (``M_TRIM_THRESHOLD`` at its maximum) the heap keeps
    them and the next pass reuses the same pages. The process's resident memory then stays at its peak
    instead of shrinking between passes.

    ``Detector`` and the ``Trainer`` call it on the CPU (a training step of mobilenet_v3_large_320_fpn took
    about 10 % less time); it changes how the whole process allocates, once. Linux with glibc
    only (elsewhere nothing happens); ``FASTERRCNN_KEEP_FREED_MEMORY=0`` opts out. Returns whether it is in force.
    """
    if os.environ.get("FASTERRCNN_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the C library this process runs on
        libc.gnu_get_libc_version  # glibc (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(_M_MMAP_MAX, 0))
