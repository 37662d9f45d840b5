"""One training step in any mode, for any model that runs like a ``VideoModel``: ``comem.step``.

A model "runs like a VideoModel" when it offers ``forward(video)`` -> (B, N, ...) per-clip logits,
``memory_bank(video, chunk=...)`` and ``forward_clip(clip, i, banks)``: comem's own models and any
network passed through :func:`comem.wrap`. The same dispatch serves ``comem train`` and a user's
own loop; under ``DistributedDataParallel`` the gradient-carrying forwards go through the DDP
wrapper and the comem mode all-reduces once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from comem.config import MODES
from comem.engine.distributed import TrainingForward, step_hooks
from comem.engine.modes import (
    LossFn,
    LossScale,
    MemoryPassBN,
    StepOutput,
    clip_loss,
    comem_step,
    joint_step,
    single_step,
    tsn_step,
    unscaled,
)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (and comem's ``TrainingForward``)."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, TrainingForward) else model


def one_clip_per_video(video: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``single`` mode's input: a clip batch (B, C, T, H, W) becomes (B, 1, ...); of N > 1 clips one
    per video is drawn at random (the usual one-clip sampling), with its per-clip target if any."""
    if video.ndim == 5:
        return video[:, None], targets
    if video.shape[1] == 1:
        return video, targets
    choice = torch.randint(video.shape[1], (video.shape[0],), device=video.device)
    rows = torch.arange(video.shape[0], device=video.device)
    if targets.ndim == 3:
        targets = targets[rows, choice][:, None]
    return video[rows, choice][:, None], targets


def train_step(
    model: nn.Module,
    video: torch.Tensor,
    targets: torch.Tensor,
    *,
    mode: str = "comem",
    loss_fn: LossFn | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    memory_pass_bn: MemoryPassBN = "batch",
    memory_chunk: int = 1,
    grad_chunk: int = 1,
    cross_clip: bool = False,
    scale_loss: LossScale | None = None,
    video_loss: bool = False,
) -> StepOutput:
    """Forward and backward of one batch in ``mode``; the caller zeroes gradients and steps.

    ``model`` is the model or its ``DistributedDataParallel`` wrapper; ``video`` (B, N, C, T, H, W);
    ``targets`` class indices (B,), multi-hot (B, K) or per-clip (B, N, K). Every backward runs on
    ``scale_loss(loss)`` (e.g. ``GradScaler.scale``). Returns the detached, unscaled loss and
    per-clip logits (B, N, K).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    autocast = autocast or contextlib.nullcontext
    loss_fn = loss_fn or clip_loss
    scale_loss = scale_loss or unscaled
    if mode == "comem":
        return comem_step(
            unwrap(model),
            video,
            targets,
            autocast,
            memory_pass_bn=memory_pass_bn,
            memory_chunk=memory_chunk,
            grad_chunk=grad_chunk,
            cross_clip=cross_clip,
            loss_fn=loss_fn,
            scale_loss=scale_loss,
            video_loss=video_loss,
            **step_hooks(model),
        )
    if mode == "joint":
        return joint_step(
            model, video, targets, autocast, loss_fn=loss_fn, scale_loss=scale_loss, video_loss=video_loss
        )
    if mode == "tsn":
        return tsn_step(model, video, targets, autocast, loss_fn=loss_fn, scale_loss=scale_loss)
    video, targets = one_clip_per_video(video, targets)
    return single_step(model, video, targets, autocast, loss_fn=loss_fn, scale_loss=scale_loss)


def step(
    model: nn.Module,
    video: torch.Tensor,
    target: torch.Tensor,
    *,
    mode: str = "comem",
    loss_fn: LossFn | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    memory_pass_bn: MemoryPassBN = "batch",
    memory_chunk: int = 1,
    grad_chunk: int = 1,
    cross_clip: bool = False,
    scale_loss: LossScale | None = None,
    video_loss: bool = False,
) -> torch.Tensor:
    """One training step's forward and backward at video level; returns the detached loss.

    Args:
        model: a :func:`comem.wrap`-ped network or a comem ``VideoModel``, or its
            ``DistributedDataParallel`` wrapper (comem mode then all-reduces once, after the last clip).
        video: (B, N, C, T, H, W), N clips of each of B videos.
        target: class indices (B,), multi-hot floats (B, K), or per-clip multi-hot (B, N, K).
        mode: ``comem`` (two passes: a no-grad pass builds every clip's memory entry, then each clip
            runs forward and backward on its own; peak memory of one clip, BatchNorm statistics
            counted once), ``joint`` (all N clips in one graph, exact gradients, N clips of
            activations), ``tsn`` (N clips each on its own, no shared memory, clip scores averaged
            before the loss), ``single`` (one clip per video, drawn at random when N > 1).
        loss_fn: ``(clip logits (M, K), targets) -> scalar``, applied per clip against the video's
            target and averaged over clips; default cross-entropy for class indices, binary
            cross-entropy for multi-hot targets.
        autocast: a callable returning the autocast context, e.g.
            ``lambda: torch.autocast("cuda", dtype=torch.bfloat16)``; default none.
        memory_pass_bn: comem mode's no-grad pass runs BatchNorm on ``batch`` statistics and
            restores the running ones afterwards, or on its running statistics (``eval``).
        memory_chunk: clips of each video per no-grad forward in comem mode.
        grad_chunk: clips of each video per gradient-pass forward and backward in comem mode; each
            reads the memory with only its own entry live, so the gradients are those of 1 (BatchNorm
            on batch statistics aside). ``grad_chunk >= N`` skips the memory pass: the plain two-pass
            gradients at joint's FLOPs and joint's activation memory. A comem ``VideoModel`` only.
        cross_clip: comem mode also gives each clip's summaries the gradient the other clips'
            losses send them (as joint training does), at one more pass of the stages from the
            first memory on; default ``False``, the plain two-pass gradient, which treats them as
            constants and learned the built-in long-range tasks better (docs/learning.md).
        scale_loss: every backward of the step runs on ``scale_loss(loss)``: ``scaler.scale`` of a
            ``torch.amp.GradScaler`` for fp16 (then ``scaler.step(optimizer)`` after), or
            ``lambda loss: loss / K`` to accumulate K steps' gradients; default the loss itself.
        video_loss: ``joint`` and ``comem`` train on the loss of each video's score, the mean of
            its clips' logits, instead of the mean of the clip losses (``tsn`` always does; one
            clip in ``single`` makes them equal). Each clip still predicts from its own memory.

    The caller owns the optimizer: zero the gradients before, step after.
    """
    return train_step(
        model,
        video,
        target,
        mode=mode,
        loss_fn=loss_fn,
        autocast=autocast,
        memory_pass_bn=memory_pass_bn,
        memory_chunk=memory_chunk,
        grad_chunk=grad_chunk,
        cross_clip=cross_clip,
        scale_loss=scale_loss,
        video_loss=video_loss,
    ).loss
