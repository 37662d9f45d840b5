"""Non-finite values (nan, inf) in a model or a checkpoint: found, named, and never trained on silently.

A weight or BatchNorm running statistic that turns non-finite never recovers (every later output is
nan, which scores as class 0), so the trainer stops at once; a non-finite loss may be a single bad
step (fp16's scaler skips those), so it stops after ``nonfinite_steps`` of them in a row.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

import torch
from torch import nn

from comem.errors import UserError


class NonFiniteError(UserError, RuntimeError):
    """A run or a checkpoint holding nan or inf values (the message names the step or file)."""


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor of ``named`` holding a nan or an inf, or ``None``.

    One reduction per tensor and a single device sync for all of them.
    """
    tensors = [(name, tensor) for name, tensor in named if tensor.is_floating_point() and tensor.numel()]
    if not tensors:
        return None
    finite = torch.stack([torch.isfinite(tensor.detach()).all() for _, tensor in tensors])
    if bool(finite.all()):
        return None
    return tensors[int((~finite).nonzero()[0])][0]


def nonfinite_in_model(model: nn.Module) -> str | None:
    """The first parameter or buffer (BatchNorm statistics) of ``model`` that is not finite."""
    return first_nonfinite(chain(model.named_parameters(), model.named_buffers()))


def check_finite_checkpoint(state: dict, path: object) -> None:
    """Refuse a checkpoint whose model (or weight average) holds nan or inf values, in one line."""
    for key in ("model", "ema"):
        weights = state.get(key)
        if isinstance(weights, dict):
            name = first_nonfinite((k, v) for k, v in weights.items() if isinstance(v, torch.Tensor))
            if name is not None:
                raise NonFiniteError(
                    f"{path}: the {'weight average' if key == 'ema' else 'model'} holds non-finite values "
                    f"({name}); this checkpoint was saved from a diverged run and cannot be used"
                )
