"""A trained model restored from a ``comem train`` checkpoint with everything inference needs.

A checkpoint carries the model spec, the training config (clip length, stride, crop size, eval
scale, views, crops, mode), the class names and whether the labels were multi-hot, so
``comem eval`` and ``comem predict`` need nothing but its path (what it holds:
:mod:`comem.checkpoint_state`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from comem.checkpoint_state import TrainedModel, trained_from_state
from comem.engine.checkpoint import load_checkpoint

__all__ = ["TrainedModel", "load_trained"]


def load_trained(
    checkpoint: str | Path, device: torch.device, *, state: dict | None = None, weights: str | None = None
) -> TrainedModel:
    """Rebuild the model of a training checkpoint and load its weights onto ``device`` (eval mode).

    ``state``: the checkpoint already read by the caller, so it is not read twice. ``weights``:
    ``ema`` or ``raw``; default the weight average when the run kept one (``--ema-decay``), else
    the model's (see :func:`comem.checkpoint_state.checkpoint_weights`).
    """
    path = Path(checkpoint)
    trained = trained_from_state(load_checkpoint(path) if state is None else state, path, weights)
    trained.model.to(device)
    return trained
