"""The exponential moving average (EMA) of a model's weights, kept beside the model during training.

After every optimizer step the average moves towards the weights: ``e = d * e + (1 - d) * w``
(``torch.optim.swa_utils.AveragedModel`` with its EMA update); the first update copies the
weights. Buffers (BatchNorm's running statistics, which are averages already) are copied from the
model at every update, as MMEngine's EMA does by default, so the averaged weights are evaluated
with the model's current statistics.

A checkpoint stores the average as ``ema`` (a state dict with the model's keys, loadable into the
same model) and its update count as ``ema_updates``; :func:`comem.checkpoint_state.checkpoint_weights`
picks the weights ``comem eval`` and ``comem predict`` use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The EMA of ``model``'s weights with ``decay``; ``module`` is the averaged copy (eval only)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.average.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.average.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s parameters and copy its buffers."""
        self.average.update_parameters(model)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.module.state_dict(), "ema_updates": int(self.average.n_averaged)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a checkpoint's ``ema`` and ``ema_updates``)."""
        self.module.load_state_dict(state["ema"])
        self.average.n_averaged.fill_(state["ema_updates"])
