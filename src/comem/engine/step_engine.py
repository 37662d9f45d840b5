"""The engine's side of a training step.

A task's step (``Task.train_step``) gets a :class:`~comem.tasks.base.StepContext` built here: the
input on the device, autocast, the DDP-routed forward, the no-grad memory pass, the backward with
the run's loss scaling, and ``run_mode``, the step of the run's mode
(:func:`comem.engine.step.train_step`) for tasks whose loss is per clip.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from comem.config import TrainConfig
from comem.engine.modes import (
    TWO_PASS_MODES,
    LossFn,
    StepOptions,
    StepOutput,
    eval_batchnorm,
    preserved_batchnorm_stats,
)
from comem.engine.performance import prepare_video, uses_channels_last
from comem.engine.precision import autocast_for
from comem.engine.step import train_step
from comem.tasks.base import StepContext


@dataclass
class StepEngine:
    """The engine's side of a training step (what a task's step calls, see ``StepContext``):
    ``model`` is the task's model on ``device``, ``train_model`` the module DDP wraps (or ``model``),
    ``scaler`` fp16's loss scaler (None otherwise). ``accumulated``: the batches whose gradients the
    current optimizer step sums (``--accum-steps``); each backward runs on its loss divided by it."""

    config: TrainConfig
    model: torch.nn.Module
    train_model: torch.nn.Module
    device: torch.device
    scaler: torch.amp.GradScaler | None = None
    accumulated: int = 1

    @property
    def autocast(self) -> Callable[[], AbstractContextManager]:
        return autocast_for(self.device, self.config.precision)

    def to_input(self, video: torch.Tensor) -> torch.Tensor:
        layout = uses_channels_last(channels_last=self.config.channels_last, compile=self.config.compile)
        return prepare_video(video, self.device, channels_last=layout)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss a backward runs on: divided by the accumulated batches, times fp16's scale."""
        if self.accumulated > 1:
            loss = loss / self.accumulated
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scale_loss(loss).backward()

    def forward(self, *args: Any, method: str = "forward", **kwargs: Any) -> Any:
        """``model.<method>(*args, **kwargs)``, through DDP when distributed (see ``TrainingForward``)."""
        if self.train_model is not self.model:
            return self.train_model(*args, method=method, **kwargs)
        if method == "forward":
            return self.model(*args, **kwargs)
        return getattr(self.model, method)(*args, **kwargs)

    def memory_bank(self, video_model: torch.nn.Module, video: torch.Tensor) -> dict:
        """The no-grad memory pass, BatchNorm's running statistics kept out of it as configured."""
        batch_stats = self.config.memory_pass_bn == "batch"
        guard = preserved_batchnorm_stats(video_model) if batch_stats else eval_batchnorm(video_model)
        with guard, self.autocast():
            return video_model.memory_bank(video, chunk=self.config.memory_chunk)

    def run_mode(
        self, video: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn | None = None
    ) -> StepOutput:
        """The step of the run's mode (``MODE_STEPS``) with the run's settings (``loss_fn`` None:
        the default clip loss)."""
        config = self.config
        options = StepOptions(
            autocast=self.autocast,
            memory_pass_bn=config.memory_pass_bn,
            memory_chunk=config.memory_chunk,
            cross_clip=config.cross_clip,
            scale_loss=self.scale_loss,
            video_loss=config.video_loss,
        )
        return train_step(
            self.train_model, video, targets, mode=config.mode, options=options, loss_fn=loss_fn
        )

    def context(self) -> StepContext:
        return StepContext(
            mode=self.config.mode,
            two_pass=self.config.mode in TWO_PASS_MODES,
            model=self.model,
            to_input=self.to_input,
            autocast=self.autocast,
            forward=self.forward,
            memory_bank=self.memory_bank,
            run_mode=self.run_mode,
            backward=self.backward,
        )
