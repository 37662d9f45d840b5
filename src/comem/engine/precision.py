"""Training precision (``--precision``): the autocast a run's forwards take, and fp16's loss scaler.

- ``auto`` (the default): bf16 on CUDA, fp32 elsewhere (on a CPU, bf16 3-D convolutions are slower
  than fp32 ones).
- ``bf16``: bf16 autocast on any device, a CPU included; no loss scaling (bf16 has fp32's range).
- ``fp16``: fp16 autocast with a :class:`torch.amp.GradScaler` (GPUs without fast bf16). Every
  backward of a step runs on the loss times the scaler's scale; the optimizer step unscales once
  (before gradient clipping) and is skipped when a gradient is inf or nan.
- ``fp32``: no autocast.

The input stays uint8 until each forward converts its own clips (``VideoModel.prepare``), to the
autocast dtype inside an autocast region.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """What ``precision`` runs on ``device``: ``bf16``, ``fp16`` or ``fp32`` (``auto`` decided)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be auto, bf16, fp16 or fp32; got {precision!r}")
    return precision


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A callable giving the autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = AUTOCAST_DTYPES.get(resolve_precision(precision, device))
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """fp16's loss scaler on ``device`` (its state goes into checkpoints); None for other precisions."""
    if resolve_precision(precision, device) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
