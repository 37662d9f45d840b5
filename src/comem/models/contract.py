"""The two-pass contract: what a model offers so the training modes and prediction can run it.

``VideoModel`` (comem's own backbones) and ``WrappedModel`` (any network through ``comem.wrap``)
both implement :class:`TwoPassModel`; the modes in ``engine/modes.py`` and prediction are typed
against it and know nothing else of the model. The helpers below move banks (B, N, C) and stage
outputs between the clip-by-clip and the all-clips views, whatever the stage's layout.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

Features = Any  # a stage's output: a map, tokens (or a tuple holding them), or a list of pathway maps
Bank = torch.Tensor | list[torch.Tensor]  # (B, N, C) summaries, or one such tensor per pathway


class MemoryPass(NamedTuple):
    """What the no-grad memory pass gives: the banks, and (if asked) what ``logits_from_maps``
    starts from for every clip (``maps[i]``: clip i of each of the B videos)."""

    banks: dict[str, Bank]
    maps: list[Any]


@runtime_checkable
class TwoPassModel(Protocol):
    """A video model whose clips share collaborative memories, runnable in every training mode.

    Videos are (B, N, C, T, H, W); ``times`` (B, N) gives each clip's centre as a fraction of its
    video's duration (None: the N clips spread evenly, ``comem.memory.even_times``); banks map each
    memory stage to the summaries (B, N, C) of all clips there.
    """

    memories: nn.ModuleDict

    @property
    def memory_stage_names(self) -> list[str]: ...

    def forward(
        self,
        video: torch.Tensor,
        clip_index: int | None = None,
        banks: dict[str, Bank] | None = None,
        cross_grads: dict[str, Bank] | None = None,
        *,
        share_memory: bool = True,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-clip outputs (B, N, ...) of all clips in one graph (``forward_clip`` when given
        ``clip_index``, so a DDP wrapper can run the clip pass)."""
        ...

    def memory_bank(
        self, video: torch.Tensor, *, chunk: int = 1, times: torch.Tensor | None = None
    ) -> dict[str, Bank]:
        """The banks of ``memory_pass``."""
        ...

    def memory_pass(
        self,
        video: torch.Tensor,
        *,
        chunk: int = 1,
        keep_maps: bool = False,
        times: torch.Tensor | None = None,
    ) -> MemoryPass:
        """The no-grad first pass: every clip's summary at every memory stage."""
        ...

    def forward_clip(
        self,
        clip: torch.Tensor,
        clip_index: int,
        banks: dict[str, Bank],
        cross_grads: dict[str, Bank] | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Output (B, ...) of clip ``clip_index`` (B, C, T, H, W) of each video, reading ``banks``."""
        ...

    def logits_from_maps(
        self, maps: Any, clip_index: int, banks: dict[str, Bank], times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Output of clip ``clip_index`` from ``memory_pass(keep_maps=True).maps[clip_index]``, as a
        function of ``banks`` (the cross-clip gradient)."""
        ...


def per_video(summary: Bank, batch: int) -> Bank:
    """Summaries (B·k, C) of k clips of each video -> (B, k, C) float32, pathway by pathway."""
    if isinstance(summary, list):
        return [part.float().view(batch, -1, part.shape[-1]) for part in summary]
    return summary.float().view(batch, -1, summary.shape[-1])


def cat_clips(parts: list[Bank]) -> Bank:
    """Join (B, k, C) summaries of consecutive clip spans along the clip axis, pathway by pathway."""
    if isinstance(parts[0], list):
        return [torch.cat(per_path, dim=1) for per_path in zip(*parts, strict=True)]
    return torch.cat(parts, dim=1)


def clip_entry(bank: Bank, clip_index: int) -> Bank:
    """Entry ``clip_index`` (B, C) of a bank (B, N, C), pathway by pathway."""
    if isinstance(bank, list):
        return [part[:, clip_index] for part in bank]
    return bank[:, clip_index]


def split_clips(features: Any, batch: int, count: int) -> list[Any]:
    """Stage outputs of ``count`` consecutive clips of each video (video-major, B·count rows) ->
    one output of B rows per clip. Tensors in a list are split; a tuple's first element is (tokens)
    and the rest is kept."""
    if isinstance(features, list):
        return [list(parts) for parts in zip(*(split_clips(f, batch, count) for f in features), strict=True)]
    if isinstance(features, tuple):
        rest = features[1:]
        make = (
            (lambda t: type(features)(t, *rest)) if hasattr(features, "_replace") else (lambda t: (t, *rest))
        )
        return [make(t) for t in split_clips(features[0], batch, count)]
    grouped = features.view(batch, count, *features.shape[1:])
    return [grouped[:, offset] for offset in range(count)]


def group_times(times: torch.Tensor | None, share_memory: bool) -> torch.Tensor | None:
    """The times a one-graph forward gives its memories: ``times`` (B, N) when the clips share a
    memory, else (B·N, 1) (each clip is then a video of one clip, at its own time)."""
    if times is None or share_memory:
        return times
    return times.reshape(-1, 1)
