"""Backbone + collaborative memory after chosen stages + per-clip head, and the ways to run it.

``VideoModel`` offers three forward paths, one per need:

- ``forward(video)``: all N clips of each video in one graph (joint training, inference).
- ``memory_bank(video)``: the two-pass scheme's first pass; summaries of every clip at every
  memory stage, built clip by clip under ``no_grad`` so peak memory is that of one clip, at the
  cost of one forward pass.
- ``forward_clip(clip, i, banks)``: the second pass for clip i, reading the banks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from comem.choices import DEFAULT_MEMORY_STAGES
from comem.errors import UserError
from comem.models.backbones import build_backbone
from comem.models.contract import (
    Bank,
    Features,
    MemoryPass,
    cat_clips,
    clip_entry,
    group_times,
    per_video,
    split_clips,
)
from comem.models.heads import ClipHead
from comem.models.layouts import DEFAULT_OPTIONS, MemoryOptions
from comem.models.normalization import Normalization, normalization
from comem.models.pretrained import PretrainedLoadError, load_pretrained
from comem.models.stages import VideoBackbone

__all__ = [
    "ModelSpec",
    "VideoModel",
    "build_model",
    "load_pretrained",
    "PretrainedLoadError",
    "DEFAULT_MEMORY_STAGES",
    "Bank",
    "MemoryPass",
]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model (stored in checkpoints)."""

    backbone: str = "tiny"
    num_classes: int = 400
    memory_stages: tuple[str, ...] = DEFAULT_MEMORY_STAGES
    memory: str = "attention"
    fusion: str = "gate"
    key_dim: int | None = None
    gate_hidden: int | None = 64
    summary: str = "meanmax"
    entry_hidden: int | None = None
    dropout: float = 0.5
    # input normalisation (RGB, pixels in [0, 1]); None: the backbone's (``BackboneEntry.normalization``)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def memory_options(self) -> MemoryOptions:
        """The memories' options as one record (the spec keeps them flat, as checkpoints store them)."""
        return MemoryOptions(
            memory=self.memory,
            fusion=self.fusion,
            key_dim=self.key_dim,
            gate_hidden=self.gate_hidden,
            summary=self.summary,
            entry_hidden=self.entry_hidden,
        )

    def with_normalization(self, norm: Normalization) -> ModelSpec:
        """This spec recording ``norm`` (what a checkpoint stores once the weights decided it)."""
        return dataclasses.replace(self, mean=tuple(norm.mean), std=tuple(norm.std))


class MemoryStageError(UserError, ValueError):
    """A memory stage the backbone does not have."""


class VideoModel(nn.Module):
    """A video classifier whose clips share a collaborative memory.

    Input videos are (B, N, C, T, H, W): uint8 pixels, which every forward normalises clip by clip
    as it runs them (:meth:`prepare`), or float clips already normalised with ``normalization``
    (``comem.data.transforms.normalize(video, *model.normalization)``); logits are per clip,
    (B, N, num_classes). ``normalization`` defaults to the backbone's; loading pretrained weights
    sets that of their source.
    """

    def __init__(
        self,
        backbone: VideoBackbone,
        num_classes: int,
        *,
        memory_stages: Sequence[str] = DEFAULT_MEMORY_STAGES,
        memory_options: MemoryOptions = DEFAULT_OPTIONS,
        dropout: float = 0.5,
        normalization: Normalization | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.normalization: Normalization = normalization or backbone.normalization
        names = backbone.stage_names
        aliases = {"last": names[-1], **{f"last-{k}": names[-1 - k] for k in range(1, len(names))}}
        if "all" in memory_stages and len(memory_stages) > 1:
            raise MemoryStageError(
                f"memory stages {', '.join(memory_stages)}: 'all' already names every stage; give it alone"
            )
        resolved = list(names) if "all" in memory_stages else [aliases.get(s, s) for s in memory_stages]
        unknown = [stage for stage in resolved if stage not in names]
        if unknown:
            raise MemoryStageError(
                f"unknown memory stage(s) {', '.join(unknown)}; {backbone.name}'s stages are "
                f"{', '.join(names)} (or last, last-1, …, or all)"
            )
        self.memories = nn.ModuleDict(
            {stage: backbone.memory_for(stage, memory_options) for stage in names if stage in resolved}
        )
        self.head = ClipHead(backbone.out_channels, num_classes, dropout=dropout, hidden=backbone.head_hidden)

    @property
    def memory_stage_names(self) -> list[str]:
        return list(self.memories.keys())

    def prepare(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 clips (..., C, T, H, W) -> the network's input ``(x / 255 - mean) / std``: float32,
        or the autocast dtype inside an autocast region (the first convolution casts to it anyway;
        half the bytes). Float clips are taken as prepared already and returned as they are.

        Every forward path calls it on the clips it is about to run, so a uint8 batch of N clips
        is converted one clip (or chunk) at a time and the step never holds all N as floats.
        """
        if clips.dtype != torch.uint8:
            return clips
        channels = len(self.normalization.mean)
        shape = (channels, 1, 1, 1)
        mean = torch.tensor(self.normalization.mean, device=clips.device).view(shape)
        std = torch.tensor(self.normalization.std, device=clips.device).view(shape)
        prepared = (clips.to(torch.float32) / 255 - mean) / std
        if torch.is_autocast_enabled(clips.device.type):
            return prepared.to(torch.get_autocast_dtype(clips.device.type))
        return prepared

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
        """Logits (B, N, K) for video (B, N, C, T, H, W), clip times ``times`` (B, N).

        ``share_memory=False`` gives every clip a memory of itself alone (the single-clip baseline
        evaluated over several views). With ``clip_index`` and ``banks`` (and ``cross_grads``) this
        is :meth:`forward_clip`, so a ``DistributedDataParallel`` wrapper can run both passes.
        """
        if clip_index is not None:
            return self.forward_clip(video, clip_index, banks or {}, cross_grads, times)
        batch, num_clips = video.shape[:2]
        features = self.features(video, share_memory=share_memory, times=times)
        return self.head(features).view(batch, num_clips, -1)

    def features(
        self, video: torch.Tensor, *, share_memory: bool = True, times: torch.Tensor | None = None
    ) -> Features:
        """Last-stage feature maps (B·N, C, T, H, W), video-major, of all clips in one graph.

        The input to the head; task heads other than clip classification (e.g. RoI pooling for
        detection) start here. For a two-pathway backbone (SlowFast) this is a list of per-pathway
        maps ``[slow, fast]``; ``backbone.channels[last stage]`` then gives each one's width and
        ``backbone.out_channels`` their sum.
        """
        num_clips = video.shape[1]
        group = num_clips if share_memory else 1
        times = group_times(times, share_memory)
        features: Any = self.prepare(video.flatten(0, 1))
        for name, stage in self.backbone.stages.items():
            features = stage(features)
            if name in self.memories:
                features = self.memories[name](features, group, times)
        return features

    @torch.no_grad()
    def memory_bank(
        self, video: torch.Tensor, *, chunk: int = 1, times: torch.Tensor | None = None
    ) -> dict[str, Bank]:
        """The banks of ``memory_pass``: summaries (B, N, C) of every clip at every memory stage."""
        return self.memory_pass(video, chunk=chunk, times=times).banks

    @torch.no_grad()
    def memory_pass(
        self,
        video: torch.Tensor,
        *,
        chunk: int = 1,
        keep_maps: bool = False,
        times: torch.Tensor | None = None,
    ) -> MemoryPass:
        """Summaries (B, N, C) of every clip at every memory stage, without gradients (a list of
        them, one per pathway, at a two-pathway stage).

        A later stage's bank needs the earlier stages' gating, which needs the earlier banks of all
        clips, so the banks are built stage by stage. Each clip's raw output at the latest memory
        stage is kept (a few MB per clip, far smaller than the activations of a training pass) and
        the next bank continues from it, so every backbone stage runs once per clip: the whole
        pass costs one forward, whatever the number of memory stages. The kept maps are freed on
        return, before the gradient pass allocates its activations.

        ``chunk`` clips of each video run per forward (all B videos together). ``chunk=1`` gives
        BatchNorm the same batches as the per-clip second pass; larger chunks fill a GPU better
        (in train-mode BatchNorm they normalise over B·chunk clips instead of B).

        ``keep_maps`` also returns every clip's raw output of the first memory stage (``maps[i]``:
        clip i of each video), from which ``logits_from_maps`` finishes a clip's forward; the
        cross-clip gradient of the two-pass scheme needs them. They cost one stage output per clip.
        ``times`` (B, N): the clips' times, which every memory read is given.
        """
        batch, num_clips = video.shape[:2]
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        names = self.backbone.stage_names
        spans = [slice(start, min(start + chunk, num_clips)) for start in range(0, num_clips, chunk)]
        carried: list[Any] = [None] * len(spans)  # raw maps at the last bank's stage
        banks: dict[str, Bank] = {}
        kept: list[Any] = []
        begin, previous = 0, None
        for target in self.memory_stage_names:
            end = names.index(target) + 1
            summaries: list[Bank] = []
            for position, span in enumerate(spans):
                if previous is None:
                    features: Any = self.prepare(video[:, span].flatten(0, 1))
                else:
                    features = self.memories[previous].forward_bank(
                        carried[position], banks[previous], span, times
                    )
                for name in names[begin:end]:
                    features = self.backbone.stages[name](features)
                carried[position] = features
                if keep_maps and previous is None:
                    kept.extend(split_clips(features, batch, span.stop - span.start))
                summaries.append(per_video(self.memories[target].summarize(features), batch))
            banks[target] = cat_clips(summaries)
            begin, previous = end, target
        return MemoryPass(banks, kept)

    def forward_clip(
        self,
        clip: torch.Tensor,
        clip_index: int,
        banks: dict[str, Bank],
        cross_grads: dict[str, Bank] | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, K) of clip ``clip_index`` (B, C, T, H, W) of each video, reading ``banks``.

        ``cross_grads`` (as ``banks``): the gradient the other clips' losses send to every clip's
        summaries; clip ``clip_index``'s entries are added to its summaries' gradients in backward.
        ``times`` (B, N): the times of the banks' clips.
        """
        return self.head(self.clip_features(clip, clip_index, banks, cross_grads, times))

    def clip_features(
        self,
        clip: torch.Tensor,
        clip_index: int,
        banks: dict[str, Bank],
        cross_grads: dict[str, Bank] | None = None,
        times: torch.Tensor | None = None,
    ) -> Features:
        """Last-stage feature map of clip ``clip_index`` gated by its clip-specific memories
        (per-pathway list for SlowFast, as in ``features``)."""
        names = self.backbone.stage_names
        return self._run_stages(self.prepare(clip), names, clip_index, banks, cross_grads, times)

    def logits_from_maps(
        self, maps: Features, clip_index: int, banks: dict[str, Bank], times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, K) of clip ``clip_index`` from its raw output of the first memory stage
        (``memory_pass(keep_maps=True).maps[clip_index]``): the part of the forward that reads
        the memory, so the gradient of a clip's loss with respect to every bank entry is cheap."""
        names = self.backbone.stage_names
        first = names.index(self.memory_stage_names[0])
        memory = self.memories[names[first]]
        features = memory.forward_one(maps, banks[names[first]], clip_index, None, times)
        return self.head(self._run_stages(features, names[first + 1 :], clip_index, banks, None, times))

    def _run_stages(
        self,
        features: Any,
        names: Sequence[str],
        clip_index: int,
        banks: dict[str, Bank],
        cross_grads: dict[str, Bank] | None,
        times: torch.Tensor | None,
    ) -> Features:
        for name in names:
            features = self.backbone.stages[name](features)
            if name in self.memories:
                cross = None if cross_grads is None else clip_entry(cross_grads[name], clip_index)
                features = self.memories[name].forward_one(features, banks[name], clip_index, cross, times)
        return features


def build_model(spec: ModelSpec) -> VideoModel:
    """The ``VideoModel`` a spec describes: one of comem's backbones (``comem models`` lists them)
    with memories after ``spec.memory_stages`` and a per-clip head, freshly initialised."""
    return VideoModel(
        build_backbone(spec.backbone),
        spec.num_classes,
        memory_stages=spec.memory_stages,
        memory_options=spec.memory_options,
        dropout=spec.dropout,
        normalization=None if spec.mean is None else normalization(spec.mean, spec.std or ()),
    )
