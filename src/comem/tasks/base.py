"""The contract between the one training loop (:mod:`comem.engine.trainer`) and a task.

The loop owns what every run has: mode dispatch, optimizer and schedule, precision, DDP, checkpoints
and exact resume, signals, progress, logs, best-checkpoint choice, sharded evaluation. A task
supplies what differs: its datasets and collate, its model, the loss of one batch in each mode, the
prediction of one evaluation batch, its metrics and reports. Tasks implement :class:`Task`
structurally (no base class to inherit); the engine hands them a :class:`StepContext` holding the
engine's side of a step, so a task never imports the engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset


class StepResult(NamedTuple):
    """What one training step of a task reports to the loop."""

    loss: float  # the batch's mean loss
    items: int  # videos (or keyframes) it trained on
    correct: int = 0  # of them predicted right, for tasks with ``train_accuracy``


@dataclass(frozen=True)
class StepContext:
    """The engine's side of a training or evaluation step, as a task sees it.

    - ``to_input``: a uint8 batch (any leading dims, then C, T, H, W) to the model's input: the same
      uint8 pixels on the device, in the model's memory layout. The ``VideoModel`` normalises each
      clip as it runs it (``VideoModel.prepare``), so a step holds one float clip at a time.
    - ``autocast``: the run's autocast context (``--precision``; bf16 on CUDA by default, a no-op
      on a CPU).
    - ``forward(*args, method="forward", **kwargs)``: ``model.<method>(...)`` through the DDP wrapper when
      there is one; every forward that carries gradients must go through it.
    - ``memory_bank(video_model, video, times=None)``: the two-pass scheme's no-grad first pass of a
      :class:`~comem.models.build.VideoModel`, with BatchNorm kept out of it as configured.
    - ``run_mode(video, targets, loss_fn=None, times=None)``: the engine's step of the run's mode for
      tasks whose loss is per clip against video targets (:mod:`comem.engine.modes`);
      ``loss_fn(clip logits (M, K), their targets)`` is the task's clip loss (default: cross-entropy
      for class indices, binary cross-entropy for float targets); ``times`` (B, N) the clips' times
      in their videos (None: even); returns its ``StepOutput``.
    - ``backward(loss)``: the backward of a task's own loss, with the run's loss scaling (fp16's
      scaler, 1/K when K batches accumulate); a task never calls ``loss.backward()`` itself.
    """

    mode: str
    two_pass: bool  # the mode builds the memory in a no-grad pass, then each clip trains alone (comem)
    model: nn.Module
    to_input: Callable[[torch.Tensor], torch.Tensor]
    autocast: Callable[[], AbstractContextManager]
    forward: Callable[..., Any] = field(repr=False)
    memory_bank: Callable[[nn.Module, torch.Tensor], dict] = field(repr=False)
    run_mode: Callable[..., Any] = field(repr=False)
    backward: Callable[[torch.Tensor], None] = field(repr=False)


@dataclass
class Predictions:
    """Evaluation predictions of every dataset item, in dataset order, whatever ranks made them."""

    indices: list[int]  # dataset indices, ascending, each once
    items: list[Any]  # the task's prediction of each (see Task.predict)
    skipped: list[str] = field(default_factory=list)  # items that could not be read, one message each


@dataclass(frozen=True)
class EvalRequest:
    """What ``comem eval`` asks of a checkpoint; None: as the checkpoint was trained (or the task's
    default report directory)."""

    data: Path | None = None  # the data dir (default: the one trained on)
    split: str = "val"
    views: int | None = None  # clips per video (AVA: per keyframe)
    crops: int | None = None
    aggregate: str = "mean"  # how view scores become a video score (classification)
    eval_memory: str | None = None  # which views share a memory ("groups" or "all"; classification)
    batch_size: int | None = None
    workers: int | None = None
    out: Path | None = None
    weights: str | None = None  # "ema" or "raw" (default: the weight average when the run kept one)
    allow_other_classes: bool = False  # classification: score data of other class names, labels by index

    def settings_suffix(self) -> str:
        """What sets this evaluation apart from the checkpoint's own settings, for the default report
        name ("" when nothing does): evaluating one checkpoint on other data, views, crops,
        aggregation, memory groups or weights writes a report of its own instead of replacing the
        last one. Other data is named by its folder and a hash of its resolved path (two ``val/``
        folders differ)."""
        parts = []
        if self.data is not None:
            resolved = str(Path(self.data).resolve())
            parts.append(f"{Path(resolved).name}-{hashlib.sha1(resolved.encode()).hexdigest()[:6]}")
        if self.views is not None:
            parts.append(f"views{self.views}")
        if self.crops is not None:
            parts.append(f"crops{self.crops}")
        if self.aggregate != "mean":
            parts.append(self.aggregate)
        if self.eval_memory is not None:
            parts.append(f"memory-{self.eval_memory}")
        if self.weights is not None:
            parts.append(self.weights)
        return "".join("_" + part for part in parts)


class CheckpointEvaluation(NamedTuple):
    """What a task makes of a checkpoint for ``comem eval``: itself on the data to score, the model
    with the checkpoint's weights (on the CPU), where the report goes and which weights were loaded."""

    task: Task
    model: nn.Module
    out_dir: Path
    weights: str


class Task(Protocol):
    """What the trainer and ``comem eval`` ask of a task. Metric names are without the ``val_`` prefix
    the loop adds."""

    config: Any  # the run's TrainConfig
    data_dir: Path
    model_spec: Any  # dataclass stored in checkpoints to rebuild the model
    selection_metric: str  # the val metric that picks best.pt (higher is better)
    headline_metrics: tuple[str, ...]  # val metrics printed after each epoch
    train_accuracy: bool  # whether steps count correct predictions (train_top1)
    train_set: Dataset  # with ``set_epoch(epoch)``: items are a function of (seed, epoch, index)
    val_set: Dataset

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        """A batch: a dict with ``video`` uint8 (B, N, C, T, H, W) and whatever else the task needs."""
        ...

    def build_model(self) -> nn.Module:
        """A new model (pretrained weights loaded); the engine seeds the RNG before calling it."""
        ...

    def usable(self, batch: dict[str, Any]) -> bool:
        """Whether a training batch can be stepped on (e.g. unreadable videos left too few)."""
        ...

    def train_step(self, batch: dict[str, Any], step: StepContext) -> StepResult:
        """Forward and backward of one batch (on the device) in ``step.mode``; no optimizer step."""
        ...

    def predict(self, model: nn.Module, batch: dict[str, Any], step: StepContext) -> list[tuple[int, Any]]:
        """Predictions of an evaluation batch: ``(dataset index, prediction)`` per item."""
        ...

    def val_metrics(self, predictions: Predictions, out: Path) -> dict[str, float]:
        """Metrics of the validation predictions (run once, on rank 0); may write files into ``out``."""
        ...

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint stores besides the engine's state (class names, data dir, …)."""
        ...

    def summary(self) -> dict[str, Any]:
        """The task's entries of ``metrics.json`` (data, sizes, settings)."""
        ...

    def prepare_output(self, out: Path) -> None:
        """Files written once into the run directory before training (rank 0)."""
        ...

    @classmethod
    def for_checkpoint(cls, path: Path, state: dict[str, Any], request: EvalRequest) -> CheckpointEvaluation:
        """``comem eval`` of the checkpoint ``state`` read from ``path``, as ``request`` asks."""
        ...

    def report(self, predictions: Predictions, out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
        """``comem eval``'s report of all predictions in ``out_dir`` (rank 0); returns its metrics.
        ``extra``: the split, the checkpoint's path and which weights were scored."""
        ...

    @classmethod
    def report_lines(cls, metrics: dict[str, Any], out_dir: Path) -> list[str]:
        """What ``comem eval`` prints of the report's ``metrics``."""
        ...
