"""Where the model runs: the device (``"auto"``, ``"cpu"``, ``"cuda:1"`` ...) and mixed precision.

The training engine, the evaluator and ``Detector`` share these helpers, so training and inference
accept and refuse the same devices and autocast dtypes.
"""

from __future__ import annotations

import torch

from fasterrcnn.errors import ConfigError

__all__ = ["AMP_DTYPES", "autocast_context", "autocast_dtype", "resolve_device"]


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
