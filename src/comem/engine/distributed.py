"""Data-parallel training over the processes torchrun starts (one per GPU, on one node or many).

``torchrun --nproc_per_node G -m comem train …`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
every process builds the same model and trainer, takes its own slice of every epoch's video (or
keyframe) order, and DDP averages the gradients, so a step over G processes of B videos each is a
step over the union batch of G·B videos. Rank 0 alone writes logs, checkpoints and metrics;
evaluation predictions of all ranks are gathered before metrics are computed.

Without these variables (or with ``WORLD_SIZE=1``) everything here is a no-op and the trainer is
the single-process one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from comem.errors import UserError
from comem.tasks.base import Predictions


class DistributedSetupError(UserError, RuntimeError):
    """A multi-process setting that cannot work (one-line message)."""


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_size(self, size: int) -> int:
        """How many of ``size`` items each rank gets (see :meth:`shard`)."""
        return math.ceil(size / self.world_size)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's strided slice of ``order``, wrapped around at the end so that every rank
        gets :meth:`shard_size` items: ranks then run the same number of batches and no collective
        waits on a rank that ran out (DistributedSampler pads the same way)."""
        if not self.enabled or len(order) == 0:
            return order
        total = self.shard_size(len(order)) * self.world_size
        padded = order.repeat(math.ceil(total / len(order)))[:total]
        return padded[self.rank :: self.world_size]


def context_from_env() -> DistContext:
    """The torchrun variables, or a single process when they are absent."""
    return DistContext(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def is_main_process() -> bool:
    return context_from_env().is_main


def init_distributed(
    device: torch.device, *, timeout_minutes: float = 10.0
) -> tuple[DistContext, torch.device]:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPUs); on CUDA each process
    takes the GPU of its local rank. Returns the context and this process's device.

    ``timeout_minutes``: how long a collective waits for a rank that stalled, died or was stopped
    before it fails (:func:`stalled_message` says so in one line) instead of hanging for the
    backend's default of half an hour or more."""
    context = context_from_env()
    if not context.enabled:
        return context, device
    if device.type == "cuda":
        if context.local_rank >= torch.cuda.device_count():
            raise DistributedSetupError(
                f"LOCAL_RANK {context.local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                "use --nproc_per_node <= the number of GPUs"
            )
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=timeout_minutes)
        )
    return context, device


class RankStalledError(UserError, RuntimeError):
    """Another process of the run did not answer within ``--dist-timeout``."""


def stalled_message(error: BaseException, context: DistContext, timeout_minutes: float) -> str:
    """One line for a collective that failed: another rank stalled, died or was stopped."""
    cause = " ".join(str(error).split())
    cause = cause if len(cause) <= 160 else cause[:157] + "..."
    return (
        f"rank {context.rank} of {context.world_size}: another process did not answer within "
        f"--dist-timeout {timeout_minutes:g} min (stalled, stopped or dead); the run stops "
        f"({type(error).__name__}: {cause})"
    )


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class TrainingForward(nn.Module):
    """The module DDP wraps: one ``forward`` for every gradient-carrying path of a training step.

    DDP only all-reduces gradients of forwards that go through its own ``forward``. A
    ``VideoModel`` routes its two-pass clip pass through ``forward(clip, i, banks, cross_grads)``
    itself; other methods (the AVA detector's ``forward_keyframe``) are reached with
    ``forward(*args, method="forward_keyframe")``, which calls ``model.forward_keyframe(*args)``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, method: str = "forward", **kwargs: Any) -> Any:
        if method == "forward":
            return self.model(*args, **kwargs)
        return getattr(self.model, method)(*args, **kwargs)


def wrap_for_training(
    model: nn.Module,
    context: DistContext,
    device: torch.device,
    *,
    sync_bn: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """What a training step calls: the model itself in one process, else its DDP wrapper.

    ``sync_bn`` turns the model's BatchNorms into SyncBatchNorms in place (batch statistics over
    all ranks; PyTorch runs them on GPUs only). Call before building the optimizer.
    """
    if not context.enabled:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise DistributedSetupError(
                "--sync-bn needs CUDA devices: torch's SyncBatchNorm runs on GPUs only"
            )
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: the root is not a BatchNorm
    return DistributedDataParallel(
        TrainingForward(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (and comem's ``TrainingForward``)."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, TrainingForward) else model


def step_hooks(train_model: nn.Module) -> dict[str, Any]:
    """Keyword arguments that make ``comem_step`` run its per-clip forwards through DDP and
    all-reduce once, after the last clip (the model's ``forward(clip, i, banks, cross_grads)`` is
    its ``forward_clip``, so the wrapper itself is the clip forward)."""
    if isinstance(train_model, DistributedDataParallel):
        return {"forward_clip": train_model, "no_sync": train_model.no_sync}
    return {}


class ShardSampler(Sampler[int]):
    """Evaluation order for one rank: whole batches of ``range(size)``, batch ``b`` on rank
    ``b mod world_size``.

    Every item then sits in the batch it has in one process with the same ``batch_size``, beside the
    same items: the kernels a batch's shape picks (oneDNN's differ by batch size) round each item's
    scores the same way, so a sharded evaluation scores every item as ``comem eval`` in one process
    does. Ranks may get a different number of items (evaluation takes no collective per batch).
    """

    def __init__(self, size: int, context: DistContext, batch_size: int) -> None:
        batches = torch.arange(size).split(batch_size)
        mine = batches[context.rank :: context.world_size]
        self.indices = torch.cat(mine) if mine else torch.arange(0)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())

    def __len__(self) -> int:
        return len(self.indices)


def gather_objects(value: Any, context: DistContext) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in one process)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def gather_predictions(own: list[tuple[int, Any]], skipped: list[str], context: DistContext) -> Predictions:
    """Every rank's ``(dataset index, prediction)`` pairs together, one per item in dataset order.

    An item a rank's share repeats (a padded share) counts once: the first is kept.
    """
    parts = gather_objects((own, skipped), context)
    by_index: dict[int, Any] = {}
    for pairs, _ in parts:
        for index, item in pairs:
            by_index.setdefault(index, item)
    indices = sorted(by_index)
    messages = sorted({message for _, part in parts for message in part})
    return Predictions(indices, [by_index[index] for index in indices], messages)


def broadcast_object(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself in one process)."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def sum_over_ranks(values: list[float], context: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (e.g. per-epoch loss sums and counts)."""
    return [sum(column) for column in zip(*gather_objects(list(values), context), strict=True)]


def broadcast_buffers(model: nn.Module, context: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    DDP broadcasts them at the start of each training forward, but that forward then updates each
    rank's copy with its own batch, so after training the ranks hold different statistics. Rank 0's
    are the ones the checkpoint stores: evaluating with them makes the gathered val metrics those
    of the saved model (what ``comem eval`` of the checkpoint reports).
    """
    if not context.enabled:
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def all_ranks(flag: bool, context: DistContext, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank: a collective step must be taken by all ranks or none.

    Asked every training step, so it is one one-element all-reduce (on ``device``, as NCCL needs),
    not an object gather.
    """
    if not context.enabled:
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())
