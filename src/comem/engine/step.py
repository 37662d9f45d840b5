"""One training step in any mode, for any model that runs like a ``VideoModel``: ``comem.step``.

A model "runs like a VideoModel" when it offers ``forward(video)`` -> (B, N, ...) per-clip logits,
``memory_bank(video, chunk=...)`` and ``forward_clip(clip, i, banks)``: comem's own models and any
network passed through :func:`comem.wrap`. The same dispatch (:data:`comem.engine.modes.MODE_STEPS`)
serves ``comem train`` and a user's own loop; under ``DistributedDataParallel`` the gradient-carrying
forwards go through the DDP wrapper and the comem mode all-reduces once per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from comem.config import MODES
from comem.engine.modes import MODE_STEPS, Backward, LossFn, LossScale, MemoryPassBN, StepOptions, StepOutput


def train_step(
    model: nn.Module,
    video: torch.Tensor,
    targets: torch.Tensor,
    *,
    mode: str = "comem",
    times: torch.Tensor | None = None,
    options: StepOptions | None = None,
    **settings: Any,
) -> StepOutput:
    """Forward and backward of one batch in ``mode``; the caller zeroes gradients and steps.

    ``model`` is the model or its ``DistributedDataParallel`` wrapper; ``video`` (B, N, C, T, H, W);
    ``targets`` class indices (B,), multi-hot (B, K) or per-clip (B, N, K); ``times`` (B, N) the
    clips' times in their videos (None: spread evenly). ``options`` (default
    :class:`StepOptions`), with any of its fields replaced by ``settings`` given by name (None: the
    default). Every backward runs on ``options.scale_loss(loss)`` (e.g. ``GradScaler.scale``).
    Returns the detached, unscaled loss and per-clip logits (B, N, K).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    given = {name: value for name, value in settings.items() if value is not None}
    options = dataclasses.replace(options or StepOptions(), **given)
    return MODE_STEPS[mode](model, video, targets, times, options)


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
    cross_clip: bool = False,
    scale_loss: LossScale | None = None,
    video_loss: bool = False,
    times: torch.Tensor | None = None,
    backward: Backward | None = None,
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
        times: (B, N) each clip's centre as a fraction of its video's duration (``VideoClips``
            gives them), passed to every memory read; default the N clips spread evenly.
        backward: runs each backward of the step, ``backward(loss)``; default ``loss.backward()``.
            A loop that owns its backward passes its own, e.g. Lightning's ``self.manual_backward``
            (with ``automatic_optimization = False``). The comem mode needs one backward per clip
            (that is what keeps its memory that of one clip), so the step cannot hand back one
            loss to backpropagate later.

    The caller owns the optimizer: zero the gradients before, step after.
    """
    options = StepOptions(
        memory_pass_bn=memory_pass_bn, memory_chunk=memory_chunk, cross_clip=cross_clip, video_loss=video_loss
    )
    settings = {"loss_fn": loss_fn, "autocast": autocast, "scale_loss": scale_loss, "backward": backward}
    return train_step(model, video, target, mode=mode, times=times, options=options, **settings).loss
