"""One optimisation step's forward/backward for each training mode (docs/method.md, "Training"),
and :data:`MODE_STEPS`, the one table from a mode's name to its step.

Each function computes the loss of one batch and calls ``backward``; the caller zeroes gradients
before and steps the optimizer after, so the four modes differ only in how gradients are made:

- ``single``: one clip per video; the usual baseline.
- ``tsn``: N clips per video, each on its own (no shared memory), clip scores averaged before the
  loss (the segment consensus of Temporal Segment Networks); the multi-clip baseline.
- ``joint``: all N clips of a video in one graph; exact gradients, activation memory x N.
- ``comem``: a no-grad pass builds the memory of all N clips, then each clip runs forward and
  backward on its own reading that memory; gradients accumulate over the clips. Peak activation
  memory is that of one clip.

Every entry of :data:`MODE_STEPS` takes the same arguments, ``(model, video, targets, options)``
with the model or its DDP wrapper and the rest of the step's settings in one :class:`StepOptions`;
``comem.step``, ``comem train`` (through each task), ``comem bench`` and ``comem doctor`` all
dispatch through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from comem.engine.distributed import step_hooks, unwrap
from comem.models.contract import Bank, MemoryPass, TwoPassModel

MemoryPassBN = Literal["batch", "eval"]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (clip logits, their targets) -> scalar
# The loss a backward runs on, from the loss itself: fp16's ``GradScaler.scale`` and gradient
# accumulation's 1/K. Every backward of a step (and the cross-clip gradient) goes through the same one.
LossScale = Callable[[torch.Tensor], torch.Tensor]


# How a backward runs: ``loss.backward()``, or a loop's own (Lightning's ``manual_backward``).
Backward = Callable[[torch.Tensor], None]


def unscaled(loss: torch.Tensor) -> torch.Tensor:
    return loss


def autograd_backward(loss: torch.Tensor) -> None:
    loss.backward()


class StepOutput(NamedTuple):
    loss: torch.Tensor  # scalar, detached: the mean over clips of the clip losses
    logits: torch.Tensor  # (B, N, K), detached


def clip_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of clip logits (B, K) against video targets: class indices (B,) for cross-entropy,
    or multi-hot floats (B, K) for binary cross-entropy (multi-label datasets)."""
    if targets.is_floating_point():
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets)


def clip_targets(targets: torch.Tensor, num_clips: int) -> torch.Tensor:
    """Targets of the B·N clips: per-clip targets (B, N, K) flattened, else each video's repeated."""
    if targets.ndim == 3:
        return targets.flatten(0, 1)
    return targets.repeat_interleave(num_clips, dim=0)


def video_targets(targets: torch.Tensor) -> torch.Tensor:
    """One target per video: per-clip targets (B, N, K) averaged over clips, else as given."""
    return targets.float().mean(dim=1) if targets.ndim == 3 else targets


def clip_level_loss(logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """The method's loss: the mean over the N clips of each clip's loss. ``logits`` (B, N, K)."""
    return loss_fn(logits.flatten(0, 1), clip_targets(targets, logits.shape[1]))


def video_level_loss(logits: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """The loss of the video's score, the mean of its clips' logits (B, N, K) -> (B, K).

    Every clip still makes its own prediction from its own features and memory; only the
    training signal is the video's: a clip that cannot be sure alone (in a video whose label
    depends on all clips, some clips see more of it than others) is not pushed to a guess, the
    video's score is. Evaluation averages clip scores the same way. With no memory across clips
    this is ``tsn``'s segment consensus.
    """
    return loss_fn(logits.mean(dim=1), video_targets(targets))


@contextlib.contextmanager
def preserved_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Run train-mode BatchNorm (batch statistics) without keeping its running-stat updates.

    The memory pass sees every clip once, the per-clip pass sees it again; keeping both updates
    would count each clip twice in the running statistics.
    """
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        for module, (mean, var, count) in zip(norms, saved, strict=True):
            module.running_mean.copy_(mean)
            module.running_var.copy_(var)
            module.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def eval_batchnorm(model: nn.Module) -> Iterator[None]:
    """Run BatchNorm on its running statistics (the other way to keep the memory pass out of them)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for module in norms:
        module.eval()
    try:
        yield
    finally:
        for module in norms:
            module.train()


def joint_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    video: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable,
    *,
    loss_fn: LossFn = clip_loss,
    scale_loss: LossScale = unscaled,
    video_loss: bool = False,
    times: torch.Tensor | None = None,
    backward: Backward = autograd_backward,
) -> StepOutput:
    """All N clips in one graph. ``video`` is (B, N, C, T, H, W), ``times`` (B, N) its clips' times.

    ``model`` is a :class:`~comem.models.contract.TwoPassModel` or anything that forwards like one
    (its DDP wrapper). ``video_loss``: the loss of the clips' mean scores (``video_level_loss``)
    instead of the mean of the clip losses.
    """
    with autocast():
        logits = model(video, times=times)
    level_loss = video_level_loss if video_loss else clip_level_loss
    loss = level_loss(logits, targets, loss_fn)
    backward(scale_loss(loss))
    return StepOutput(loss.detach(), logits.detach())


def single_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    video: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable,
    *,
    loss_fn: LossFn = clip_loss,
    scale_loss: LossScale = unscaled,
    times: torch.Tensor | None = None,
    backward: Backward = autograd_backward,
) -> StepOutput:
    """The one-clip baseline: ``video`` is (B, 1, C, T, H, W); the memory sees that clip only."""
    if video.shape[1] != 1:
        raise ValueError(f"single mode trains on one clip per video, got {video.shape[1]}")
    return joint_step(
        model,
        video,
        targets,
        autocast,
        loss_fn=loss_fn,
        scale_loss=scale_loss,
        times=times,
        backward=backward,
    )


def _bank_leaves(banks: dict[str, Bank]) -> dict[str, Bank]:
    """Detached copies of the banks that collect gradients."""

    def leaf(bank: torch.Tensor) -> torch.Tensor:
        return bank.detach().requires_grad_(True)

    return {
        name: [leaf(b) for b in bank] if isinstance(bank, list) else leaf(bank)
        for name, bank in banks.items()
    }


def _flat(banks: dict[str, Bank]) -> list[torch.Tensor]:
    return [t for bank in banks.values() for t in (bank if isinstance(bank, list) else [bank])]


ClipObjective = Callable[[torch.Tensor, int], torch.Tensor]  # (clip logits (B, K), clip index) -> scalar


def cross_clip_gradients(
    model: TwoPassModel,
    memory: MemoryPass,
    objective: ClipObjective,
    autocast: Callable,
    scale_loss: LossScale = unscaled,
    times: torch.Tensor | None = None,
) -> dict[str, Bank]:
    """Gradient of the video's loss with respect to every bank entry through the OTHER clips'
    memory reads: entry i of the result, (B, C) per stage, is sum over j != i of
    d objective_j / d summary_i, where ``objective(logits_j, j)`` is clip j's share of the loss.

    This is the gradient the plain two-pass scheme drops (it treats the other clips' entries as
    constants), so a clip's features never learn to be useful to the other clips. Each clip's
    loss is recomputed from its kept first-memory-stage output (``MemoryPass.maps``), so the cost
    is a forward and an input-only backward of the stages from the first memory on (for a memory
    after the last stage: the head alone), one clip at a time. The head's dropout draws the same
    masks as the gradient pass that follows (the RNG is rewound), and BatchNorm sees the same
    per-clip batches, so the gradient is that of the step's own forward. It is that of the
    scaled loss (``scale_loss``), as the gradient pass's backwards it is added to.
    """
    leaves = _bank_leaves(memory.banks)
    flat = _flat(leaves)
    totals = [torch.zeros_like(t) for t in flat]
    with replayed_clip_forwards(model, flat[0].device):
        for index in range(len(memory.maps)):
            with autocast():
                logits = model.logits_from_maps(memory.maps[index], index, leaves, times)
            grads = torch.autograd.grad(scale_loss(objective(logits, index)), flat, allow_unused=True)
            for total, grad in zip(totals, grads, strict=True):
                if grad is not None:
                    total += grad
    result: dict[str, Bank] = {}
    position = 0
    for name, bank in leaves.items():
        count = len(bank) if isinstance(bank, list) else 1
        parts = totals[position : position + count]
        result[name] = parts if isinstance(bank, list) else parts[0]
        position += count
    return result


@contextlib.contextmanager
def replayed_clip_forwards(model: nn.Module, device: torch.device) -> Iterator[None]:
    """A region whose per-clip forwards repeat those of the gradient pass that follows: the RNG
    (dropout) is rewound afterwards and BatchNorm's running statistics are left as they were."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with preserved_batchnorm_stats(model):
            yield


def video_loss_gradients(
    model: TwoPassModel,
    memory: MemoryPass,
    targets: torch.Tensor,
    autocast: Callable,
    loss_fn: LossFn,
    times: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """For the video-level loss in the two-pass scheme: the gradient d L / d z_j (B, K) of
    L = ``video_level_loss`` with respect to each clip's logits z_j, and L itself (detached).

    L depends on all N clips' logits at once, but its gradient with respect to z_j is all a
    clip's own backward needs (its surrogate loss <z_j, d L / d z_j> has the same gradient), so
    the logits are computed here without gradients, one clip at a time from the kept maps, and
    each clip then runs forward and backward alone: peak memory stays that of one clip.
    """
    with torch.no_grad(), replayed_clip_forwards(model, targets.device):
        clip_logits = []
        for index in range(len(memory.maps)):
            with autocast():
                maps = memory.maps[index]
                clip_logits.append(model.logits_from_maps(maps, index, memory.banks, times).float())
    logits = torch.stack(clip_logits, dim=1).requires_grad_(True)
    with torch.enable_grad():
        loss = video_level_loss(logits, targets, loss_fn)
        (grad,) = torch.autograd.grad(loss, logits)
    return list(grad.unbind(dim=1)), loss.detach()


def tsn_step(
    model: Callable[..., torch.Tensor],
    video: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable,
    *,
    loss_fn: LossFn = clip_loss,
    scale_loss: LossScale = unscaled,
    times: torch.Tensor | None = None,
    backward: Backward = autograd_backward,
) -> StepOutput:
    """Segment consensus: every clip of ``video`` (B, N, C, T, H, W) runs on its own (its memory
    sees that clip only, as in ``single``) and the loss is that of the clips' mean logits, so
    clips are combined by averaging scores, never by comparing what they saw."""
    with autocast():
        logits = model(video, share_memory=False, times=times)
    loss = video_level_loss(logits, targets, loss_fn)
    backward(scale_loss(loss))
    return StepOutput(loss.detach(), logits.detach())


def comem_step(
    model: TwoPassModel,
    video: torch.Tensor,
    targets: torch.Tensor,
    autocast: Callable,
    *,
    memory_pass_bn: MemoryPassBN = "batch",
    memory_chunk: int = 1,
    cross_clip: bool = False,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
    forward_clip: Callable[..., torch.Tensor] | None = None,
    loss_fn: LossFn = clip_loss,
    scale_loss: LossScale = unscaled,
    video_loss: bool = False,
    times: torch.Tensor | None = None,
    backward: Backward = autograd_backward,
) -> StepOutput:
    """The two-pass, memory-flat scheme. ``video`` is (B, N, C, T, H, W), ``times`` (B, N) its
    clips' times (given to every memory read).

    ``memory_chunk`` clips of each video run per no-grad forward (see ``TwoPassModel.memory_pass``).
    ``cross_clip`` also trains each clip's path by the gradient the other clips' losses send to
    its summaries (``cross_clip_gradients``), which joint training has and the plain two-pass
    scheme (the default) drops. Under DDP, ``forward_clip`` is the DDP-wrapped
    ``model.forward_clip`` (gradients are only all-reduced for forwards that go through DDP) and
    ``no_sync`` its ``no_sync``, which suppresses the all-reduce for every clip but the last.
    ``video_loss``: the loss of the clips' mean scores (``video_level_loss``), through
    ``video_loss_gradients``. The uint8 ``video`` is converted one clip (memory pass: one chunk)
    at a time, by the model (``TwoPassModel.prepare``).
    """
    num_clips = video.shape[1]
    forward_clip = forward_clip or model.forward_clip
    cross_clip = cross_clip and num_clips > 1
    guard = preserved_batchnorm_stats(model) if memory_pass_bn == "batch" else eval_batchnorm(model)
    with guard, autocast():
        memory = model.memory_pass(video, chunk=memory_chunk, keep_maps=cross_clip or video_loss, times=times)
    if video_loss:
        score_grads, video_loss_value = video_loss_gradients(model, memory, targets, autocast, loss_fn, times)

        def objective(logits: torch.Tensor, index: int) -> torch.Tensor:
            return (logits.float() * score_grads[index]).sum()  # its gradient: d L / d z_index

    else:

        def objective(logits: torch.Tensor, index: int) -> torch.Tensor:
            return loss_fn(logits, targets[:, index] if targets.ndim == 3 else targets) / num_clips

    cross = (
        cross_clip_gradients(model, memory, objective, autocast, scale_loss, times) if cross_clip else None
    )
    banks = memory.banks
    del memory
    total = torch.zeros((), device=video.device)
    clip_logits = []
    for index in range(num_clips):
        last = index == num_clips - 1
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast():
                logits = forward_clip(video[:, index], index, banks, cross, times=times)
            loss = objective(logits, index)
            backward(scale_loss(loss))
        total += loss.detach()
        clip_logits.append(logits.detach())
    if video_loss:
        total = video_loss_value
    return StepOutput(total, torch.stack(clip_logits, dim=1))


@dataclass(frozen=True)
class StepOptions:
    """How a step runs, whatever its mode: the settings of ``comem.step`` besides the mode (its
    docstring says what each does). Each mode's step reads the ones it uses."""

    loss_fn: LossFn = clip_loss
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    memory_pass_bn: MemoryPassBN = "batch"
    memory_chunk: int = 1
    cross_clip: bool = False
    scale_loss: LossScale = unscaled
    video_loss: bool = False
    backward: Backward = autograd_backward


Times = torch.Tensor | None  # (B, N) each clip's time in its video (``comem.memory``), None: even

# A mode's step: (model or its DDP wrapper, video (B, N, C, T, H, W), targets, times, options) -> StepOutput.
ModeStep = Callable[[nn.Module, torch.Tensor, torch.Tensor, Times, StepOptions], StepOutput]


def one_clip_per_video(
    video: torch.Tensor, targets: torch.Tensor, times: Times = None
) -> tuple[torch.Tensor, torch.Tensor, Times]:
    """``single`` mode's input: a clip batch (B, C, T, H, W) becomes (B, 1, ...); of N > 1 clips one
    per video is drawn at random (the usual one-clip sampling), with its per-clip target and its
    time (B, 1) if any."""
    if video.ndim == 5:
        return video[:, None], targets, None if times is None else times.reshape(-1, 1)
    if video.shape[1] == 1:
        return video, targets, times
    choice = torch.randint(video.shape[1], (video.shape[0],), device=video.device)
    rows = torch.arange(video.shape[0], device=video.device)
    if targets.ndim == 3:
        targets = targets[rows, choice][:, None]
    if times is not None:
        times = times[rows, choice][:, None]
    return video[rows, choice][:, None], targets, times


def _single(
    model: nn.Module, video: torch.Tensor, targets: torch.Tensor, times: Times, options: StepOptions
) -> StepOutput:
    video, targets, times = one_clip_per_video(video, targets, times)
    return single_step(
        model,
        video,
        targets,
        options.autocast,
        loss_fn=options.loss_fn,
        scale_loss=options.scale_loss,
        times=times,
        backward=options.backward,
    )


def _tsn(
    model: nn.Module, video: torch.Tensor, targets: torch.Tensor, times: Times, options: StepOptions
) -> StepOutput:
    return tsn_step(
        model,
        video,
        targets,
        options.autocast,
        loss_fn=options.loss_fn,
        scale_loss=options.scale_loss,
        times=times,
        backward=options.backward,
    )


def _joint(
    model: nn.Module, video: torch.Tensor, targets: torch.Tensor, times: Times, options: StepOptions
) -> StepOutput:
    return joint_step(
        model,
        video,
        targets,
        options.autocast,
        loss_fn=options.loss_fn,
        scale_loss=options.scale_loss,
        video_loss=options.video_loss,
        times=times,
        backward=options.backward,
    )


def _comem(
    model: nn.Module, video: torch.Tensor, targets: torch.Tensor, times: Times, options: StepOptions
) -> StepOutput:
    """The two passes run on the model itself; under DDP its wrapper carries the per-clip forwards."""
    return comem_step(
        unwrap(model),
        video,
        targets,
        options.autocast,
        memory_pass_bn=options.memory_pass_bn,
        memory_chunk=options.memory_chunk,
        cross_clip=options.cross_clip,
        loss_fn=options.loss_fn,
        scale_loss=options.scale_loss,
        video_loss=options.video_loss,
        times=times,
        backward=options.backward,
        **step_hooks(model),
    )


# The one dispatch of a training mode, in the order of ``comem.config.MODES`` (the names ``--mode`` takes).
MODE_STEPS: dict[str, ModeStep] = {"single": _single, "tsn": _tsn, "joint": _joint, "comem": _comem}

# The modes whose step builds every clip's memory entry in a no-grad pass first, then runs each clip's
# forward and backward alone (a task with its own loss, like AVA, asks ``StepContext.two_pass``).
TWO_PASS_MODES: tuple[str, ...] = ("comem",)
